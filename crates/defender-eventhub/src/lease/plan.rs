//! Which partitions this instance should own: a pure function of what the store lists, so it can
//! be tested without a hub. Each instance renews what it holds and takes its fair share, first
//! from unowned or expired partitions, then from instances holding more than theirs.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use azure_core::time::OffsetDateTime;
use azure_messaging_eventhubs::models::Ownership;

/// What to ask the store for in one cycle.
#[derive(Debug, Default)]
pub struct Plan {
    /// Partitions this instance holds and keeps (renewed with their current etag).
    pub renew: Vec<Ownership>,
    /// Partitions to take: unowned, expired, or stolen from an instance above its share.
    pub take: Vec<Ownership>,
}

impl Plan {
    /// Everything to claim, in one store call.
    pub fn claims(&self) -> Vec<Ownership> {
        self.renew.iter().chain(&self.take).cloned().collect()
    }
}

/// The share each of `owners` instances gets of `partitions`: (min, max), max = min + 1 when
/// the division is not exact.
fn share(partitions: usize, owners: usize) -> (usize, usize) {
    let min = partitions / owners;
    (min, min + usize::from(!partitions.is_multiple_of(owners)))
}

/// Plans one cycle for `me`.
pub fn plan(
    me: &str,
    partitions: &[String],
    listed: &[Ownership],
    template: &Ownership,
    now: OffsetDateTime,
    expiry: Duration,
) -> Plan {
    let listed: BTreeMap<&str, &Ownership> = listed.iter().map(|o| (o.partition_id.as_str(), o)).collect();
    let is_active = |o: &Ownership| {
        let owner = o.owner_id.as_deref().unwrap_or_default();
        let fresh = o.last_modified_time.is_some_and(|t| {
            let age = now - t;
            age.is_negative() || age.unsigned_abs() < expiry
        });
        !owner.is_empty() && fresh
    };
    let mut by_owner: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    let mut free = Vec::new();
    for p in partitions {
        match listed.get(p.as_str()).filter(|o| is_active(o)) {
            Some(o) => by_owner
                .entry(o.owner_id.as_deref().unwrap_or_default())
                .or_default()
                .push(p),
            None => free.push(p.as_str()),
        }
    }
    let mine: BTreeSet<&str> = by_owner
        .get(me)
        .map(|v| v.iter().copied().collect())
        .unwrap_or_default();
    by_owner.remove(me);
    let owners = by_owner.len() + 1;
    let (min, max) = share(partitions.len(), owners);
    let extra_slots = partitions.len() % owners;
    let others_above_min = by_owner.values().filter(|v| v.len() > min).count();
    let target = if mine.len() > min || others_above_min < extra_slots {
        max
    } else {
        min
    };

    let claim = |p: &str| {
        let mut o = listed.get(p).map_or_else(|| template.clone(), |o| (*o).clone());
        p.clone_into(&mut o.partition_id);
        o.owner_id = Some(me.to_owned());
        o
    };
    let renew = mine.iter().map(|p| claim(p)).collect();
    let mut take = Vec::new();
    let mut wanted = target.saturating_sub(mine.len());
    // Spread instances over different free partitions so that they rarely race for the same one.
    let offset = free.len().checked_sub(1).map_or(0, |_| hash(me) % free.len().max(1));
    for p in free.iter().cycle().skip(offset).take(free.len()) {
        if wanted == 0 {
            break;
        }
        take.push(claim(p));
        wanted -= 1;
    }
    // Then steal, one partition at a time, from whoever holds the most, while they hold more
    // than their share (or reach max while this instance is below min).
    while wanted > 0 {
        let Some((victim, held)) = by_owner.iter_mut().max_by_key(|(_, v)| v.len()) else {
            break;
        };
        let below_min = mine.len() + take.len() < min;
        if held.len() > max || (below_min && held.len() >= max && held.len() > 1) {
            let p = held.pop().expect("a victim holds partitions");
            tracing::debug!(partition = p, from = victim, "stealing partition to balance");
            take.push(claim(p));
            wanted -= 1;
        } else {
            break;
        }
    }
    Plan { renew, take }
}

fn hash(s: &str) -> usize {
    s.bytes()
        .fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(usize::from(b)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXPIRY: Duration = Duration::from_secs(10);

    fn template() -> Ownership {
        Ownership {
            fully_qualified_namespace: "ns".into(),
            event_hub_name: "hub".into(),
            consumer_group: "$default".into(),
            partition_id: String::new(),
            owner_id: None,
            etag: None,
            last_modified_time: None,
        }
    }

    /// A store that grants a claim when its etag matches, like the real ones.
    #[derive(Default)]
    struct Store {
        rows: BTreeMap<String, (String, u64, OffsetDateTime)>,
        next_etag: u64,
    }

    impl Store {
        fn list(&self) -> Vec<Ownership> {
            self.rows
                .iter()
                .map(|(p, (owner, etag, t))| Ownership {
                    partition_id: p.clone(),
                    owner_id: Some(owner.clone()),
                    etag: Some(etag.to_string().into()),
                    last_modified_time: Some(*t),
                    ..template()
                })
                .collect()
        }

        fn claim(&mut self, claims: &[Ownership], now: OffsetDateTime) -> Vec<String> {
            let mut won = Vec::new();
            for c in claims {
                let current = self.rows.get(&c.partition_id).map(|r| r.1.to_string());
                if current == c.etag.as_ref().map(ToString::to_string) {
                    self.next_etag += 1;
                    self.rows.insert(
                        c.partition_id.clone(),
                        (c.owner_id.clone().unwrap(), self.next_etag, now),
                    );
                    won.push(c.partition_id.clone());
                }
            }
            won
        }

        fn counts(&self, now: OffsetDateTime) -> BTreeMap<String, usize> {
            let mut out = BTreeMap::new();
            for (owner, _, t) in self.rows.values() {
                if now - *t < EXPIRY {
                    *out.entry(owner.clone()).or_default() += 1;
                }
            }
            out
        }
    }

    fn partitions(n: usize) -> Vec<String> {
        (0..n).map(|i| i.to_string()).collect()
    }

    fn round(store: &mut Store, instances: &[&str], parts: &[String], now: OffsetDateTime) {
        for me in instances {
            let p = plan(me, parts, &store.list(), &template(), now, EXPIRY);
            store.claim(&p.claims(), now);
        }
    }

    #[test]
    fn three_instances_spread_eight_partitions() {
        let parts = partitions(8);
        let mut store = Store::default();
        let mut now = OffsetDateTime::UNIX_EPOCH;
        for _ in 0..5 {
            round(&mut store, &["a", "b", "c"], &parts, now);
            now += Duration::from_secs(1);
        }
        let counts = store.counts(now);
        assert_eq!(counts.values().sum::<usize>(), 8, "{counts:?}");
        assert!(counts.values().all(|&n| (2..=3).contains(&n)), "{counts:?}");
    }

    #[test]
    fn a_dead_instance_partitions_move_after_expiry() {
        let parts = partitions(8);
        let mut store = Store::default();
        let mut now = OffsetDateTime::UNIX_EPOCH;
        for _ in 0..5 {
            round(&mut store, &["a", "b", "c"], &parts, now);
            now += Duration::from_secs(1);
        }
        // "c" dies: nothing moves before expiry, everything after.
        for _ in 0..3 {
            round(&mut store, &["a", "b"], &parts, now);
            now += Duration::from_secs(1);
        }
        assert!(store.counts(now).contains_key("c"));
        now += EXPIRY;
        for _ in 0..3 {
            round(&mut store, &["a", "b"], &parts, now);
            now += Duration::from_secs(1);
        }
        let counts = store.counts(now);
        assert_eq!(counts.get("a"), Some(&4), "{counts:?}");
        assert_eq!(counts.get("b"), Some(&4), "{counts:?}");
    }

    #[test]
    fn a_new_instance_gets_its_share_by_stealing() {
        let parts = partitions(8);
        let mut store = Store::default();
        let mut now = OffsetDateTime::UNIX_EPOCH;
        round(&mut store, &["a"], &parts, now);
        assert_eq!(store.counts(now).get("a"), Some(&8));
        for _ in 0..6 {
            now += Duration::from_secs(1);
            round(&mut store, &["a", "b"], &parts, now);
        }
        let counts = store.counts(now);
        assert_eq!(counts.get("a"), Some(&4), "{counts:?}");
        assert_eq!(counts.get("b"), Some(&4), "{counts:?}");
    }

    #[test]
    fn released_partitions_are_free() {
        let parts = partitions(2);
        let listed = vec![Ownership {
            partition_id: "0".into(),
            owner_id: Some(String::new()),
            etag: Some("7".into()),
            last_modified_time: Some(OffsetDateTime::UNIX_EPOCH),
            ..template()
        }];
        let p = plan("me", &parts, &listed, &template(), OffsetDateTime::UNIX_EPOCH, EXPIRY);
        assert_eq!(p.take.len(), 2);
        let released = p.take.iter().find(|o| o.partition_id == "0").unwrap();
        assert_eq!(
            released.etag.as_ref().map(ToString::to_string).as_deref(),
            Some("7"),
            "claimed with its etag"
        );
    }
}

//! Hubs, partitions and their events: in memory, optionally backed by one append-only log file
//! per partition.
//!
//! A log entry is `len: u32 LE | crc32(payload): u32 LE | payload`, the payload being
//! `sequence number: i64 LE | offset: i64 LE | enqueued time (ms): i64 LE | AMQP message`. The
//! message is the event as stored (properties, application properties, annotations, body), without
//! the `x-opt-*` annotations the service adds on delivery. An event's offset is the byte position
//! of its entry in the log (computed the same way without a data directory). Reading a log stops
//! at the first entry that is short or fails its checksum (a torn write); the file is cut there.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use fe2o3_amqp_types::messaging::message::__private::Serializable;
use fe2o3_amqp_types::messaging::message::DecodeIntoMessage;
use fe2o3_amqp_types::messaging::{Body, Data, Message};
use fe2o3_amqp_types::primitives::Value;
use serde_amqp::extensions::TransparentVec;
use tokio::sync::{oneshot, watch};

use crate::EmulatorError;

/// Size of an entry's header (length and checksum) in the log.
const ENTRY_HEADER: usize = 8;
/// Size of the fixed fields at the start of an entry's payload.
const ENTRY_FIXED: usize = 24;

/// An event as stored in a partition.
#[derive(Debug)]
pub(crate) struct Event {
    pub(crate) sequence_number: i64,
    pub(crate) offset: i64,
    pub(crate) enqueued_ms: i64,
    /// The message as it was sent (no header, no delivery annotations).
    pub(crate) message: Message<Body<Value>>,
}

/// A message body made of one data section.
pub(crate) fn data_message(body: Vec<u8>) -> Message<Body<Value>> {
    Message {
        header: None,
        delivery_annotations: None,
        message_annotations: None,
        properties: None,
        application_properties: None,
        body: Body::Data(TransparentVec::new(vec![Data::from(body)])),
        footer: None,
    }
}

/// Where a reader starts, parsed from its selector filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StartAt {
    /// Events with an offset above (or at, when inclusive) the given one. `-1` means all.
    Offset(i64, bool),
    /// Events with a sequence number above (or at) the given one.
    SequenceNumber(i64, bool),
    /// Events enqueued after (or at) the given time in ms.
    EnqueuedTime(i64, bool),
    /// Only events appended after the reader attached.
    Latest,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// All hubs of a running emulator.
#[derive(Debug)]
pub(crate) struct Store {
    hubs: BTreeMap<String, Arc<Hub>>,
    closed: AtomicBool,
}

impl Store {
    /// Creates the hubs, re-reading their logs from `data_dir`.
    pub(crate) fn open(hubs: &[crate::HubConfig], data_dir: Option<&Path>) -> Result<Self, EmulatorError> {
        let created_ms = now_ms();
        let mut map = BTreeMap::new();
        for config in hubs {
            if config.name.is_empty() || config.name.contains('/') {
                return Err(EmulatorError::Config(format!("invalid hub name {:?}", config.name)));
            }
            if config.partitions == 0 || config.partitions > 1024 {
                return Err(EmulatorError::Config(format!(
                    "hub {:?}: partitions must be 1..=1024, not {}",
                    config.name, config.partitions
                )));
            }
            let key = config.name.to_ascii_lowercase();
            if map.contains_key(&key) {
                return Err(EmulatorError::Config(format!("hub {:?} declared twice", config.name)));
            }
            let dir = data_dir.map(|d| d.join(&config.name));
            if let Some(dir) = &dir {
                fs::create_dir_all(dir).map_err(|e| EmulatorError::io(dir, e))?;
            }
            let mut partitions = Vec::new();
            for id in 0..config.partitions {
                let path = dir.as_ref().map(|d| d.join(format!("{id}.log")));
                partitions.push(Arc::new(Partition::open(id.to_string(), path)?));
            }
            map.insert(
                key,
                Arc::new(Hub {
                    name: config.name.clone(),
                    created_ms,
                    partitions,
                    round_robin: AtomicUsize::new(0),
                    owners: Mutex::new(HashMap::new()),
                }),
            );
        }
        Ok(Self {
            hubs: map,
            closed: AtomicBool::new(false),
        })
    }

    /// The hub of that name (case-insensitive, as the service).
    pub(crate) fn hub(&self, name: &str) -> Option<&Arc<Hub>> {
        self.hubs.get(&name.to_ascii_lowercase())
    }

    pub(crate) fn hub_or_err(&self, name: &str) -> Result<&Arc<Hub>, EmulatorError> {
        self.hub(name).ok_or_else(|| EmulatorError::UnknownHub(name.to_owned()))
    }

    pub(crate) fn hubs(&self) -> impl Iterator<Item = &Arc<Hub>> {
        self.hubs.values()
    }

    /// Refuses appends from now on (after shutdown).
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }
}

/// One event hub.
#[derive(Debug)]
pub(crate) struct Hub {
    pub(crate) name: String,
    pub(crate) created_ms: i64,
    pub(crate) partitions: Vec<Arc<Partition>>,
    round_robin: AtomicUsize,
    /// Readers per (consumer group in lower case, partition index), for owner levels.
    owners: Mutex<HashMap<(String, usize), Vec<Owner>>>,
}

static NEXT_OWNER_ID: AtomicU64 = AtomicU64::new(1);

#[derive(Debug)]
struct Owner {
    id: u64,
    epoch: Option<i64>,
    stolen: Option<oneshot::Sender<String>>,
}

/// A reader's registration; dropping it unregisters the reader.
#[derive(Debug)]
pub(crate) struct OwnerGuard {
    hub: Arc<Hub>,
    key: (String, usize),
    id: u64,
}

impl Drop for OwnerGuard {
    fn drop(&mut self) {
        let mut owners = lock(&self.hub.owners);
        if let Some(list) = owners.get_mut(&self.key) {
            list.retain(|o| o.id != self.id);
            if list.is_empty() {
                owners.remove(&self.key);
            }
        }
    }
}

impl Hub {
    /// The partition with that id.
    pub(crate) fn partition(&self, id: &str) -> Option<(usize, &Arc<Partition>)> {
        let index: usize = id.parse().ok()?;
        if index.to_string() != id {
            return None;
        }
        self.partitions.get(index).map(|p| (index, p))
    }

    pub(crate) fn partition_or_err(&self, id: &str) -> Result<&Arc<Partition>, EmulatorError> {
        self.partition(id)
            .map(|(_, p)| p)
            .ok_or_else(|| EmulatorError::UnknownPartition {
                hub: self.name.clone(),
                partition: id.to_owned(),
            })
    }

    /// The partition a sender without a partition id lands on: by partition key when there is
    /// one, else round robin.
    pub(crate) fn pick_partition(&self, partition_key: Option<&str>) -> usize {
        let n = self.partitions.len();
        match partition_key {
            Some(key) => {
                // FNV-1a: stable across runs, which is all a partition key promises.
                let mut h: u64 = 0xcbf2_9ce4_8422_2325;
                for b in key.as_bytes() {
                    h ^= u64::from(*b);
                    h = h.wrapping_mul(0x0100_0000_01b3);
                }
                usize::try_from(h % n as u64).unwrap_or(0)
            }
            None => self.round_robin.fetch_add(1, Ordering::Relaxed) % n,
        }
    }

    /// Readers attached to this hub's partitions, all consumer groups.
    pub(crate) fn reader_count(&self) -> usize {
        lock(&self.owners).values().map(Vec::len).sum()
    }

    /// Registers a reader with its owner level (`com.microsoft:epoch`), following the service:
    /// a reader with owner level `e` disconnects every reader without one and every reader with
    /// a level `<= e`; it is refused when a reader with a higher level exists. A reader without
    /// a level is refused while any reader has one. The receiver yields the reason when a later
    /// reader takes over.
    pub(crate) fn register_reader(
        self: &Arc<Self>,
        group: &str,
        partition: usize,
        epoch: Option<i64>,
    ) -> Result<(OwnerGuard, oneshot::Receiver<String>), String> {
        let key = (group.to_ascii_lowercase(), partition);
        let mut owners = lock(&self.owners);
        let list = owners.entry(key.clone()).or_default();
        let highest = list.iter().filter_map(|o| o.epoch).max();
        match (epoch, highest) {
            (None, Some(h)) => {
                return Err(format!(
                    "At least one receiver for the endpoint is created with epoch of '{h}', and so non-epoch \
                     receiver is not allowed. Either reconnect with a higher epoch, or make sure all epoch \
                     receivers are closed or disconnected."
                ));
            }
            (Some(e), Some(h)) if h > e => {
                return Err(format!(
                    "Receiver with a higher epoch of '{h}' already exists, so the receiver with epoch '{e}' cannot \
                     be created."
                ));
            }
            (Some(e), _) => {
                for mut old in list.drain(..) {
                    if let Some(tx) = old.stolen.take() {
                        let _ = tx.send(format!(
                            "New receiver with higher epoch of '{e}' is created hence current receiver with epoch \
                             '{}' is getting disconnected.",
                            old.epoch.map_or_else(|| "none".to_owned(), |x| x.to_string())
                        ));
                    }
                }
            }
            (None, None) => {}
        }
        let id = NEXT_OWNER_ID.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        list.push(Owner {
            id,
            epoch,
            stolen: Some(tx),
        });
        Ok((
            OwnerGuard {
                hub: Arc::clone(self),
                key,
                id,
            },
            rx,
        ))
    }
}

/// A snapshot of a partition's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Counters {
    pub(crate) count: usize,
    pub(crate) last_sequence_number: i64,
    pub(crate) last_offset: i64,
    pub(crate) last_enqueued_ms: i64,
}

/// One partition: its events and, with a data directory, its log file.
#[derive(Debug)]
pub(crate) struct Partition {
    pub(crate) id: String,
    state: Mutex<PartitionState>,
    /// The number of events, bumped on every append (readers wait on it).
    count: watch::Sender<usize>,
}

#[derive(Debug)]
struct PartitionState {
    events: Vec<Arc<Event>>,
    next_offset: i64,
    last_ms: i64,
    log: Option<(PathBuf, File)>,
}

impl Partition {
    fn open(id: String, path: Option<PathBuf>) -> Result<Self, EmulatorError> {
        let mut state = PartitionState {
            events: Vec::new(),
            next_offset: 0,
            last_ms: 0,
            log: None,
        };
        if let Some(path) = path {
            let file = read_log(&path, &mut state)?;
            state.log = Some((path, file));
        }
        let (count, _) = watch::channel(state.events.len());
        Ok(Self {
            id,
            state: Mutex::new(state),
            count,
        })
    }

    /// Appends messages as one batch (one enqueued time, consecutive sequence numbers).
    pub(crate) fn append(&self, messages: Vec<Message<Body<Value>>>) -> Result<(), EmulatorError> {
        if messages.is_empty() {
            return Ok(());
        }
        let mut state = lock(&self.state);
        let enqueued_ms = now_ms().max(state.last_ms);
        let first_seq = i64::try_from(state.events.len()).unwrap_or(i64::MAX);
        let mut log_bytes = Vec::new();
        let mut new_events = Vec::with_capacity(messages.len());
        let mut offset = state.next_offset;
        for (i, message) in messages.into_iter().enumerate() {
            let encoded =
                serde_amqp::to_vec(&Serializable(&message)).map_err(|e| EmulatorError::Encode(e.to_string()))?;
            let event = Event {
                sequence_number: first_seq + i64::try_from(i).unwrap_or(0),
                offset,
                enqueued_ms,
                message,
            };
            let payload_len = ENTRY_FIXED + encoded.len();
            if state.log.is_some() {
                let mut payload = Vec::with_capacity(payload_len);
                payload.extend_from_slice(&event.sequence_number.to_le_bytes());
                payload.extend_from_slice(&event.offset.to_le_bytes());
                payload.extend_from_slice(&event.enqueued_ms.to_le_bytes());
                payload.extend_from_slice(&encoded);
                let len = u32::try_from(payload.len()).map_err(|_| EmulatorError::Encode("event too large".into()))?;
                log_bytes.extend_from_slice(&len.to_le_bytes());
                log_bytes.extend_from_slice(&crc32(&payload).to_le_bytes());
                log_bytes.extend_from_slice(&payload);
            }
            offset += i64::try_from(ENTRY_HEADER + payload_len).unwrap_or(i64::MAX);
            new_events.push(Arc::new(event));
        }
        if let Some((path, file)) = &mut state.log {
            file.write_all(&log_bytes).map_err(|e| EmulatorError::io(path, e))?;
        }
        state.next_offset = offset;
        state.last_ms = enqueued_ms;
        state.events.extend(new_events);
        let count = state.events.len();
        drop(state);
        self.count.send_replace(count);
        Ok(())
    }

    pub(crate) fn counters(&self) -> Counters {
        let state = lock(&self.state);
        match state.events.last() {
            Some(last) => Counters {
                count: state.events.len(),
                last_sequence_number: last.sequence_number,
                last_offset: last.offset,
                last_enqueued_ms: last.enqueued_ms,
            },
            None => Counters {
                count: 0,
                last_sequence_number: -1,
                last_offset: -1,
                last_enqueued_ms: 0,
            },
        }
    }

    /// A receiver of the event count, to wait for new events.
    pub(crate) fn watch(&self) -> watch::Receiver<usize> {
        self.count.subscribe()
    }

    /// The index of the first event a reader starting at `start` gets.
    pub(crate) fn start_index(&self, start: &StartAt) -> usize {
        let state = lock(&self.state);
        let events = &state.events;
        match *start {
            StartAt::Latest => events.len(),
            StartAt::Offset(offset, inclusive) => events.partition_point(|e| {
                if inclusive {
                    e.offset < offset
                } else {
                    e.offset <= offset
                }
            }),
            StartAt::SequenceNumber(seq, inclusive) => events.partition_point(|e| {
                if inclusive {
                    e.sequence_number < seq
                } else {
                    e.sequence_number <= seq
                }
            }),
            StartAt::EnqueuedTime(ms, inclusive) => events.partition_point(|e| {
                if inclusive {
                    e.enqueued_ms < ms
                } else {
                    e.enqueued_ms <= ms
                }
            }),
        }
    }

    /// Up to `max` events from `index` on.
    pub(crate) fn read(&self, index: usize, max: usize, out: &mut Vec<Arc<Event>>) {
        let state = lock(&self.state);
        if index < state.events.len() {
            let end = state.events.len().min(index + max);
            out.extend(state.events[index..end].iter().cloned());
        }
    }
}

/// Reads a partition log into `state`, cutting off a torn tail; returns the file open for append.
fn read_log(path: &Path, state: &mut PartitionState) -> Result<File, EmulatorError> {
    let mut bytes = Vec::new();
    match File::open(path) {
        Ok(mut f) => {
            f.read_to_end(&mut bytes).map_err(|e| EmulatorError::io(path, e))?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(EmulatorError::io(path, e)),
    }
    let mut at = 0;
    while let Some((event, next)) = read_entry(&bytes, at) {
        if event.sequence_number != i64::try_from(state.events.len()).unwrap_or(-1)
            || event.offset != i64::try_from(at).unwrap_or(-1)
        {
            tracing::warn!(path = %path.display(), at, "log entry out of order; ignoring the rest of the log");
            break;
        }
        state.last_ms = state.last_ms.max(event.enqueued_ms);
        state.events.push(Arc::new(event));
        at = next;
    }
    if at < bytes.len() {
        tracing::warn!(
            path = %path.display(),
            kept = at,
            dropped = bytes.len() - at,
            "partition log ends with an incomplete entry; cutting it off"
        );
    }
    state.next_offset = i64::try_from(at).unwrap_or(i64::MAX);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| EmulatorError::io(path, e))?;
    file.set_len(at as u64).map_err(|e| EmulatorError::io(path, e))?;
    let mut file = file;
    std::io::Seek::seek(&mut file, io::SeekFrom::End(0)).map_err(|e| EmulatorError::io(path, e))?;
    Ok(file)
}

fn read_entry(bytes: &[u8], at: usize) -> Option<(Event, usize)> {
    let header = bytes.get(at..at + ENTRY_HEADER)?;
    let len = u32::from_le_bytes(header[..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(header[4..].try_into().ok()?);
    let payload = bytes.get(at + ENTRY_HEADER..at + ENTRY_HEADER + len)?;
    if len < ENTRY_FIXED || crc32(payload) != crc {
        return None;
    }
    let field = |i: usize| i64::from_le_bytes(payload[i * 8..i * 8 + 8].try_into().unwrap_or_default());
    let message =
        Body::<Value>::decode_message_from_reader(serde_amqp::read::SliceReader::new(&payload[ENTRY_FIXED..])).ok()?;
    Some((
        Event {
            sequence_number: field(0),
            offset: field(1),
            enqueued_ms: field(2),
            message,
        },
        at + ENTRY_HEADER + len,
    ))
}

/// CRC-32 (IEEE), bitwise with a table built at compile time.
fn crc32(bytes: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            #[allow(clippy::cast_possible_truncation)]
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 == 1 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
                k += 1;
            }
            table[i] = c;
            i += 1;
        }
        table
    };
    let mut crc = !0u32;
    for b in bytes {
        crc = TABLE[((crc ^ u32::from(*b)) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_reference() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn log_round_trip_and_torn_tail() {
        let dir = std::env::temp_dir().join(format!("defender-emulator-store-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("0.log");
        {
            let p = Partition::open("0".into(), Some(path.clone())).unwrap();
            p.append(vec![data_message(b"a".to_vec()), data_message(b"bb".to_vec())])
                .unwrap();
            p.append(vec![data_message(b"ccc".to_vec())]).unwrap();
        }
        // a torn entry at the end
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[50, 0, 0, 0, 1, 2]).unwrap();
        drop(f);
        let p = Partition::open("0".into(), Some(path.clone())).unwrap();
        let c = p.counters();
        assert_eq!(c.count, 3);
        assert_eq!(c.last_sequence_number, 2);
        p.append(vec![data_message(b"dddd".to_vec())]).unwrap();
        let p = Partition::open("0".into(), Some(path)).unwrap();
        let mut out = Vec::new();
        p.read(0, 10, &mut out);
        let bodies: Vec<Vec<u8>> = out
            .iter()
            .map(|e| match &e.message.body {
                Body::Data(d) => d[0].0.to_vec(),
                _ => panic!(),
            })
            .collect();
        assert_eq!(
            bodies,
            vec![b"a".to_vec(), b"bb".to_vec(), b"ccc".to_vec(), b"dddd".to_vec()]
        );
        assert!(out.windows(2).all(|w| w[0].offset < w[1].offset));
        assert_eq!(p.start_index(&StartAt::Offset(out[1].offset, false)), 2);
        assert_eq!(p.start_index(&StartAt::Offset(out[1].offset, true)), 1);
        assert_eq!(p.start_index(&StartAt::Offset(-1, false)), 0);
        assert_eq!(p.start_index(&StartAt::SequenceNumber(2, true)), 2);
        assert_eq!(p.start_index(&StartAt::SequenceNumber(2, false)), 3);
        assert_eq!(p.start_index(&StartAt::Latest), 4);
        fs::remove_dir_all(&dir).unwrap();
    }
}

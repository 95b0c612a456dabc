//! Staging logs: the records of one open Parquet file, appended durably at every flush, so that
//! a record can be acknowledged long before the file that will hold it is published.
//!
//! A log is a header line, then frames: `[u32 LE payload length][u64 LE checksum][payload]`,
//! the payload being records as `[u32 LE length][record bytes]`. One flush appends one frame (or
//! a few, each at most [`MAX_FRAME`], the size of one Append Block in Blob Storage). A crash can
//! leave a torn last frame on local disk; reading stops at the first frame that is short or whose
//! checksum does not match, and what it covers was never acknowledged.

use crate::TablesError;

/// The first bytes of every log.
pub(crate) const HEADER: &[u8] = b"defender-tables staging log v1\n";

/// The largest frame (Append Block's limit is 4 MiB; 12 bytes of frame header fit below it).
pub(crate) const MAX_FRAME: usize = 4 * 1024 * 1024 - 64;

/// A 64-bit checksum, 8 bytes at a time: catches torn and stale tails, not adversaries.
pub(crate) fn checksum(data: &[u8]) -> u64 {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut h: u64 = 0xCBF2_9CE4_8422_2325 ^ (data.len() as u64);
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_le_bytes(c.try_into().expect("8 bytes"));
        h = (h ^ w).wrapping_mul(K).rotate_left(29);
    }
    for &b in chunks.remainder() {
        h = (h ^ u64::from(b)).wrapping_mul(K).rotate_left(29);
    }
    h ^ (h >> 32)
}

/// Records waiting for the next flush of one log, already framed as a payload.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    frames: Vec<Vec<u8>>,
}

impl Pending {
    pub fn push(&mut self, record: &[u8]) {
        let need = 4 + record.len();
        if self.frames.last().is_none_or(|f| f.len() + need > MAX_FRAME - 12) {
            let mut frame = Vec::with_capacity((need + 12).max(64 * 1024));
            frame.extend_from_slice(&[0; 12]);
            self.frames.push(frame);
        }
        let frame = self.frames.last_mut().expect("just ensured");
        frame.extend_from_slice(&u32::try_from(record.len()).unwrap_or(u32::MAX).to_le_bytes());
        frame.extend_from_slice(record);
    }

    /// Puts frames that could not be appended back in front, for the next flush.
    pub fn restore(&mut self, mut frames: Vec<Vec<u8>>) {
        frames.append(&mut self.frames);
        self.frames = frames;
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.frames.iter().map(Vec::len).sum()
    }

    /// The frames, headers filled in; empties the queue.
    pub fn take_frames(&mut self) -> Vec<Vec<u8>> {
        let mut frames = std::mem::take(&mut self.frames);
        for f in &mut frames {
            let payload_len = u32::try_from(f.len() - 12).expect("frames stay below 4 MiB");
            let sum = checksum(&f[12..]);
            f[..4].copy_from_slice(&payload_len.to_le_bytes());
            f[4..12].copy_from_slice(&sum.to_le_bytes());
        }
        frames
    }
}

/// The records of a log, in order, up to its first torn or damaged frame; and whether one was.
pub(crate) fn read_records<'a>(name: &str, data: &'a [u8]) -> Result<(Vec<&'a [u8]>, bool), TablesError> {
    let damaged = |why: &str| TablesError::Staging {
        name: name.to_owned(),
        why: why.to_owned(),
    };
    if data.len() < HEADER.len() {
        // Created but the header never became durable: nothing was acknowledged from it.
        return Ok((Vec::new(), !data.is_empty()));
    }
    if &data[..HEADER.len()] != HEADER {
        return Err(damaged("not a staging log (bad header)"));
    }
    let mut at = HEADER.len();
    let mut records = Vec::new();
    while at < data.len() {
        let Some(head) = data.get(at..at + 12) else {
            return Ok((records, true));
        };
        let len = u32::from_le_bytes(head[..4].try_into().expect("4 bytes")) as usize;
        let sum = u64::from_le_bytes(head[4..].try_into().expect("8 bytes"));
        let Some(payload) = data.get(at + 12..at + 12 + len) else {
            return Ok((records, true));
        };
        if checksum(payload) != sum {
            return Ok((records, true));
        }
        let mut p = 0;
        while p < payload.len() {
            let n = payload
                .get(p..p + 4)
                .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize)
                .ok_or_else(|| damaged("a record length crosses its frame"))?;
            let record = payload
                .get(p + 4..p + 4 + n)
                .ok_or_else(|| damaged("a record crosses its frame"))?;
            records.push(record);
            p += 4 + n;
        }
        at += 12 + len;
    }
    Ok((records, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_torn_tails_stop_reading() {
        let mut p = Pending::default();
        p.push(b"{\"a\":1}");
        p.push(b"");
        let mut log = HEADER.to_vec();
        for f in p.take_frames() {
            log.extend_from_slice(&f);
        }
        p.push(b"second");
        let second = p.take_frames().concat();
        log.extend_from_slice(&second);
        let (records, torn) = read_records("t", &log).unwrap();
        assert_eq!(records, vec![&b"{\"a\":1}"[..], b"", b"second"]);
        assert!(!torn);
        for cut in 1..second.len() {
            let (records, torn) = read_records("t", &log[..log.len() - cut]).unwrap();
            assert_eq!(records.len(), 2, "cut {cut}");
            assert!(torn);
        }
        let mut flipped = log.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(read_records("t", &flipped).unwrap().0.len(), 2);
    }
}

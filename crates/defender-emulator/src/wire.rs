//! Byte-level fixes between fe2o3-amqp and the clients, applied to the TCP stream.
//!
//! - **Write side**: every outgoing performative is re-encoded with its full field list. fe2o3 drops
//!   trailing null/default fields (which AMQP allows), but pyamqp reads performative fields by
//!   position and reads a transfer's payload right after the last field it counted, so it fails on
//!   short lists ("list index out of range") and on `list0`.
//! - **Read side**: the client's `open` has its `max-frame-size` lowered by [`FRAME_SLACK`] bytes
//!   before fe2o3 sees it. fe2o3 fills transfer frames up to the peer's limit exactly; padding a
//!   full frame would push it over and the client would refuse the frame.
//!
//! Both work on whole frames (8-byte protocol headers pass untouched) and never decode more than
//! the performative's descriptor and list header.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes taken off the client's `max-frame-size`: more than the largest padding can add
/// (10 nulls, plus 8 bytes when a list has to grow from `list8` to `list32`).
pub(crate) const FRAME_SLACK: u32 = 64;

/// Flush to the socket before accepting more once this much is waiting.
const WRITE_HIGH_WATER: usize = 512 * 1024;

const FRAME_TYPE_AMQP: u8 = 0;
const FRAME_TYPE_SASL: u8 = 1;

/// How many fields a performative has in full, by frame type and descriptor code.
#[allow(clippy::match_same_arms)] // one arm per performative reads better
fn full_field_count(frame_type: u8, code: u64) -> Option<u8> {
    match (frame_type, code) {
        (FRAME_TYPE_AMQP, 0x10) => Some(10),              // open
        (FRAME_TYPE_AMQP, 0x11) => Some(8),               // begin
        (FRAME_TYPE_AMQP, 0x12) => Some(14),              // attach
        (FRAME_TYPE_AMQP, 0x13 | 0x14) => Some(11),       // flow, transfer
        (FRAME_TYPE_AMQP, 0x15) => Some(6),               // disposition
        (FRAME_TYPE_AMQP, 0x16) => Some(3),               // detach
        (FRAME_TYPE_AMQP, 0x17 | 0x18) => Some(1),        // end, close
        (FRAME_TYPE_SASL, 0x40 | 0x42 | 0x43) => Some(1), // mechanisms, challenge, response
        (FRAME_TYPE_SASL, 0x41) => Some(3),               // init
        (FRAME_TYPE_SASL, 0x44) => Some(2),               // outcome
        _ => None,
    }
}

/// A performative's descriptor and list, located inside a frame.
struct Performative {
    /// Offset of the frame body (after the extended header).
    body: usize,
    code: u64,
    /// Offset of the list constructor.
    list: usize,
    /// Offset of the first field.
    fields: usize,
    /// Offset just past the list.
    end: usize,
    count: u32,
}

fn be_u32(bytes: &[u8], at: usize) -> Option<u32> {
    bytes
        .get(at..at + 4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// Locates the performative of a complete frame (`frame` includes its 4-byte size).
fn locate(frame: &[u8]) -> Option<Performative> {
    let doff = usize::from(*frame.get(4)?);
    let body = doff * 4;
    if body < 8 || body >= frame.len() || frame[body] != 0x00 {
        return None;
    }
    let (code, list) = match *frame.get(body + 1)? {
        0x53 => (u64::from(*frame.get(body + 2)?), body + 3),
        0x44 => (0, body + 2),
        0x80 => {
            let b = frame.get(body + 2..body + 10)?;
            (u64::from_be_bytes(b.try_into().ok()?), body + 10)
        }
        _ => return None,
    };
    let (fields, end, count) = match *frame.get(list)? {
        0x45 => (list + 1, list + 1, 0),
        0xc0 => {
            let size = usize::from(*frame.get(list + 1)?);
            let count = u32::from(*frame.get(list + 2)?);
            (list + 3, list + 2 + size, count)
        }
        0xd0 => {
            let size = be_u32(frame, list + 1)? as usize;
            let count = be_u32(frame, list + 5)?;
            (list + 9, list + 5 + size, count)
        }
        _ => return None,
    };
    if end > frame.len() || fields > end {
        return None;
    }
    Some(Performative {
        body,
        code,
        list,
        fields,
        end,
        count,
    })
}

/// Appends `frame` to `out`, its performative padded with nulls to the full field count.
fn pad_frame(frame: &[u8], out: &mut Vec<u8>) {
    let frame_type = frame.get(5).copied().unwrap_or(u8::MAX);
    let Some(p) = locate(frame) else {
        out.extend_from_slice(frame);
        return;
    };
    let Some(full) = full_field_count(frame_type, p.code) else {
        out.extend_from_slice(frame);
        return;
    };
    let full = u32::from(full);
    // pyamqp also cannot read `list0`: re-encode it even when nothing is missing.
    if p.count >= full && frame[p.list] != 0x45 {
        out.extend_from_slice(frame);
        return;
    }
    let missing = full.saturating_sub(p.count) as usize;
    let count = p.count.max(full);
    let content = p.end - p.fields + missing;
    let start = out.len();
    out.extend_from_slice(&[0, 0, 0, 0]); // size, patched below
    out.extend_from_slice(&frame[4..p.list]); // doff, type, channel, extended header, descriptor
    if let (Ok(size), Ok(count)) = (u8::try_from(content + 1), u8::try_from(count)) {
        out.extend_from_slice(&[0xc0, size, count]);
    } else {
        out.push(0xd0);
        #[allow(clippy::cast_possible_truncation)] // a frame is far below 4 GiB
        out.extend_from_slice(&((content + 4) as u32).to_be_bytes());
        out.extend_from_slice(&count.to_be_bytes());
    }
    out.extend_from_slice(&frame[p.fields..p.end]);
    out.resize(out.len() + missing, 0x40);
    out.extend_from_slice(&frame[p.end..]); // transfer payload
    #[allow(clippy::cast_possible_truncation)]
    let size = (out.len() - start) as u32;
    out[start..start + 4].copy_from_slice(&size.to_be_bytes());
    debug_assert!(p.body >= 8);
}

/// Lowers the `max-frame-size` of an `open` frame by [`FRAME_SLACK`]. Returns `None` when the
/// frame is not an `open` or cannot be read (it then passes unchanged).
fn lower_max_frame_size(frame: &[u8]) -> Option<Vec<u8>> {
    if frame.get(5) != Some(&FRAME_TYPE_AMQP) {
        return None;
    }
    let p = locate(frame)?;
    if p.code != 0x10 {
        return None;
    }
    // Skip container-id and hostname to reach max-frame-size (field 3).
    let mut at = p.fields;
    let mut index = 0;
    while index < 2 && index < p.count {
        at = skip_string_or_null(frame, at)?;
        index += 1;
    }
    let (current, field_end) = if p.count <= 2 {
        (u32::MAX, at)
    } else {
        match *frame.get(at)? {
            0x40 => (u32::MAX, at + 1),
            0x43 => (0, at + 1),
            0x52 => (u32::from(*frame.get(at + 1)?), at + 2),
            0x70 => (be_u32(frame, at + 1)?, at + 5),
            _ => return None,
        }
    };
    let lowered = current.max(512 + FRAME_SLACK) - FRAME_SLACK;
    // Rebuild: fields before, the new value, fields after; fill missing fields up to 3.
    let mut fields = Vec::with_capacity(p.end - p.fields + 8);
    fields.extend_from_slice(&frame[p.fields..at]);
    let mut count = p.count;
    while count < 2 {
        fields.push(0x40);
        count += 1;
    }
    fields.push(0x70);
    fields.extend_from_slice(&lowered.to_be_bytes());
    fields.extend_from_slice(&frame[field_end..p.end]);
    let count = count.max(3);
    let mut out = Vec::with_capacity(frame.len() + 16);
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(&frame[4..p.list]);
    out.push(0xd0);
    #[allow(clippy::cast_possible_truncation)]
    out.extend_from_slice(&((fields.len() + 4) as u32).to_be_bytes());
    out.extend_from_slice(&count.to_be_bytes());
    out.extend_from_slice(&fields);
    out.extend_from_slice(&frame[p.end..]);
    #[allow(clippy::cast_possible_truncation)]
    let size = out.len() as u32;
    out[..4].copy_from_slice(&size.to_be_bytes());
    Some(out)
}

fn skip_string_or_null(frame: &[u8], at: usize) -> Option<usize> {
    match *frame.get(at)? {
        0x40 => Some(at + 1),
        0xa1 | 0xa3 => Some(at + 2 + usize::from(*frame.get(at + 1)?)),
        0xb1 | 0xb3 => Some(at + 5 + be_u32(frame, at + 1)? as usize),
        _ => None,
    }
}

/// Length of the next unit (protocol header or frame) at the start of `buf`, once known.
fn unit_len(buf: &[u8]) -> Option<usize> {
    let head = buf.get(..4)?;
    if head == b"AMQP" {
        Some(8)
    } else {
        Some((be_u32(buf, 0)? as usize).max(8))
    }
}

/// The client's TCP stream with the fixes above applied.
#[derive(Debug)]
pub(crate) struct FixedStream<S> {
    inner: S,
    /// Read side: until the client's `open` went by, bytes are held here to be scanned.
    scanning: bool,
    scan: Vec<u8>,
    /// Read side: bytes ready for the reader, from `ready_pos` on.
    ready: Vec<u8>,
    ready_pos: usize,
    /// Write side: bytes received from fe2o3, not yet a whole unit.
    pending: Vec<u8>,
    /// Write side: processed bytes waiting for the socket, from `out_pos` on.
    out: Vec<u8>,
    out_pos: usize,
}

impl<S> FixedStream<S> {
    pub(crate) fn new(inner: S) -> Self {
        Self {
            inner,
            scanning: true,
            scan: Vec::new(),
            ready: Vec::new(),
            ready_pos: 0,
            pending: Vec::new(),
            out: Vec::new(),
            out_pos: 0,
        }
    }

    /// Moves complete units from `scan` to `ready`, rewriting the `open`.
    fn scan_units(&mut self) {
        let mut at = 0;
        while self.scanning {
            let Some(len) = unit_len(&self.scan[at..]) else { break };
            if self.scan.len() - at < len {
                break;
            }
            let unit = &self.scan[at..at + len];
            if (len > 8 || unit[..4] != *b"AMQP")
                && let Some(rewritten) = lower_max_frame_size(unit)
            {
                self.ready.extend_from_slice(&rewritten);
                self.scanning = false;
                at += len;
                break;
            }
            self.ready.extend_from_slice(unit);
            at += len;
        }
        if self.scanning {
            self.scan.drain(..at);
        } else {
            // Everything after the `open` passes untouched.
            self.ready.extend_from_slice(&self.scan[at..]);
            self.scan = Vec::new();
        }
    }

    /// Moves complete units from `pending` to `out`, padded.
    fn pad_units(&mut self) {
        let mut at = 0;
        while let Some(len) = unit_len(&self.pending[at..]) {
            if self.pending.len() - at < len {
                break;
            }
            let unit = &self.pending[at..at + len];
            if len == 8 || unit[..4] == *b"AMQP" {
                self.out.extend_from_slice(unit);
            } else {
                pad_frame(unit, &mut self.out);
            }
            at += len;
        }
        self.pending.drain(..at);
    }
}

impl<S: AsyncWrite + Unpin> FixedStream<S> {
    /// Writes `out` to the socket until it is empty or the socket is busy.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.out_pos < self.out.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.out[self.out_pos..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out_pos += n;
        }
        self.out.clear();
        self.out_pos = 0;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for FixedStream<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.ready_pos < this.ready.len() {
                let n = buf.remaining().min(this.ready.len() - this.ready_pos);
                buf.put_slice(&this.ready[this.ready_pos..this.ready_pos + n]);
                this.ready_pos += n;
                if this.ready_pos == this.ready.len() {
                    this.ready.clear();
                    this.ready_pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if !this.scanning {
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            let mut chunk = [0u8; 4096];
            let mut chunk_buf = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut chunk_buf))?;
            let filled = chunk_buf.filled();
            if filled.is_empty() {
                // End of stream: hand over whatever is left as is.
                this.scanning = false;
                let rest = std::mem::take(&mut this.scan);
                this.ready.extend_from_slice(&rest);
                if this.ready.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            this.scan.extend_from_slice(filled);
            this.scan_units();
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FixedStream<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.out.len() - this.out_pos >= WRITE_HIGH_WATER {
            ready!(this.poll_drain(cx))?;
        }
        this.pending.extend_from_slice(buf);
        this.pad_units();
        // Start sending now; whatever the socket does not take waits for the next write or flush.
        if let Poll::Ready(Err(e)) = this.poll_drain(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(frame_type: u8, body: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        #[allow(clippy::cast_possible_truncation)]
        f.extend_from_slice(&((body.len() + 8) as u32).to_be_bytes());
        f.extend_from_slice(&[2, frame_type, 0, 0]);
        f.extend_from_slice(body);
        f
    }

    #[test]
    fn pads_short_list_and_keeps_payload() {
        // transfer with handle=0 only, then a 3-byte payload
        let f = frame(0, &[0x00, 0x53, 0x14, 0xc0, 0x02, 0x01, 0x43, 0xaa, 0xbb, 0xcc]);
        let mut out = Vec::new();
        pad_frame(&f, &mut out);
        let expected = frame(
            0,
            &[
                0x00, 0x53, 0x14, 0xc0, 12, 11, 0x43, 0x40, 0x40, 0x40, 0x40, 0x40, 0x40, 0x40, 0x40, 0x40, 0x40, 0xaa,
                0xbb, 0xcc,
            ],
        );
        assert_eq!(out, expected);
    }

    #[test]
    fn pads_list0() {
        let f = frame(0, &[0x00, 0x53, 0x17, 0x45]);
        let mut out = Vec::new();
        pad_frame(&f, &mut out);
        assert_eq!(out, frame(0, &[0x00, 0x53, 0x17, 0xc0, 0x02, 0x01, 0x40]));
    }

    #[test]
    fn full_lists_and_empty_frames_pass() {
        let f = frame(0, &[0x00, 0x53, 0x17, 0xc0, 0x02, 0x01, 0x40]);
        let mut out = Vec::new();
        pad_frame(&f, &mut out);
        assert_eq!(out, f);
        let heartbeat = frame(0, &[]);
        out.clear();
        pad_frame(&heartbeat, &mut out);
        assert_eq!(out, heartbeat);
    }

    #[test]
    fn lowers_open_max_frame_size() {
        // open: container-id "c", hostname null, max-frame-size 65536 (uint)
        let f = frame(
            0,
            &[
                0x00, 0x53, 0x10, 0xc0, 0x0a, 0x03, 0xa1, 0x01, b'c', 0x40, 0x70, 0x00, 0x01, 0x00, 0x00,
            ],
        );
        let out = lower_max_frame_size(&f).unwrap();
        let p = locate(&out).unwrap();
        assert_eq!(p.count, 3);
        assert_eq!(&out[p.end - 4..p.end], &(65536 - FRAME_SLACK).to_be_bytes());
        // only container-id: max-frame-size defaults to u32::MAX
        let f = frame(0, &[0x00, 0x53, 0x10, 0xc0, 0x04, 0x01, 0xa1, 0x01, b'c']);
        let out = lower_max_frame_size(&f).unwrap();
        let p = locate(&out).unwrap();
        assert_eq!(p.count, 3);
        assert_eq!(&out[p.end - 4..p.end], &(u32::MAX - FRAME_SLACK).to_be_bytes());
    }
}

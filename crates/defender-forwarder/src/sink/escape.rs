//! Records as JSON string literals, the form the Sekoia intake's `jsons` array takes.
//!
//! Escaping every byte of every record was the sink's largest cost: this scans eight bytes at a
//! time, copies long runs that need nothing (most of a record) in one piece and short ones as
//! whole words. The output is the same as `serde_json`'s for the same string.

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// For each byte of `w` (little-endian) that is `"`, `\` or below 0x20, its high bit is set; the
/// lowest set bit is exact (bits above it may be spurious, which is enough to find the first).
#[inline]
fn special(w: u64) -> u64 {
    let zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS;
    let control = w.wrapping_sub(ONES * 0x20) & !w & HIGHS;
    zero(w ^ (ONES * u64::from(b'"'))) | zero(w ^ (ONES * u64::from(b'\\'))) | control
}

/// [`special`] bytes of `word`, and bytes above 0x7f while the input has been ASCII so far.
#[inline]
fn attention(word: [u8; 8], ascii_so_far: bool) -> u64 {
    let w = u64::from_le_bytes(word);
    special(w) | if ascii_so_far { w & HIGHS } else { 0 }
}

/// What follows the backslash for a byte that needs escaping, `u` for `\u00XX`, 0 for none.
const ESCAPE: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut b = 0;
    while b < 0x20 {
        t[b] = b'u';
        b += 1;
    }
    t[0x08] = b'b';
    t[0x09] = b't';
    t[0x0a] = b'n';
    t[0x0c] = b'f';
    t[0x0d] = b'r';
    t[b'"' as usize] = b'"';
    t[b'\\' as usize] = b'\\';
    t
};

/// Appends `raw` to `out` as a JSON string literal, quotes included. Bytes that are not UTF-8
/// become U+FFFD, as `String::from_utf8_lossy` makes them.
pub fn push_json_string(out: &mut Vec<u8>, raw: &[u8]) {
    if !push_utf8(out, raw) {
        push_utf8(out, String::from_utf8_lossy(raw).as_bytes());
    }
}

/// Escapes `s` into `out`, checking UTF-8 on the way: the first byte above 0x7f has the rest
/// validated once, so ASCII records (most) are read only once. Returns `false`, having written
/// nothing, when `s` is not UTF-8.
fn push_utf8(out: &mut Vec<u8>, s: &[u8]) -> bool {
    let before = out.len();
    out.reserve(s.len() + s.len() / 8 + 2);
    out.push(b'"');
    let mut ascii_so_far = true;
    let mut i = 0;
    while i < s.len() {
        if let Some(word) = s.get(i..i + 8) {
            let word: [u8; 8] = word.try_into().expect("eight bytes");
            let mask = attention(word, ascii_so_far);
            if mask != 0 {
                // Records are dense with quotes: short runs are stored as a whole word (a
                // fixed-size copy, no call) cut back to the bytes before the one to look at.
                let plain = (mask.trailing_zeros() / 8) as usize;
                let len = out.len();
                out.extend_from_slice(&word);
                out.truncate(len + plain);
                i += plain;
            } else {
                // A long run: find its end, then copy it in one piece.
                let mut end = i + 8;
                while let Some(word) = s.get(end..end + 8) {
                    let mask = attention(word.try_into().expect("eight bytes"), ascii_so_far);
                    if mask != 0 {
                        end += (mask.trailing_zeros() / 8) as usize;
                        break;
                    }
                    end += 8;
                }
                out.extend_from_slice(&s[i..end]);
                i = end;
                continue;
            }
        }
        let b = s[i];
        i += 1;
        if b >= 0x80 {
            if ascii_so_far {
                // Everything before is ASCII, so `b` starts a character.
                if std::str::from_utf8(&s[i - 1..]).is_err() {
                    out.truncate(before);
                    return false;
                }
                ascii_so_far = false;
            }
            out.push(b);
            continue;
        }
        match ESCAPE[usize::from(b)] {
            0 => out.push(b),
            b'u' => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(&[
                    b'\\',
                    b'u',
                    b'0',
                    b'0',
                    HEX[usize::from(b >> 4)],
                    HEX[usize::from(b & 0xf)],
                ]);
            }
            esc => out.extend_from_slice(&[b'\\', esc]),
        }
    }
    out.push(b'"');
    true
}

#[cfg(test)]
mod tests {
    use super::push_json_string;
    use proptest::prelude::*;

    fn ours(raw: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        push_json_string(&mut out, raw);
        out
    }

    fn serde(raw: &[u8]) -> Vec<u8> {
        serde_json::to_vec(&*String::from_utf8_lossy(raw)).unwrap()
    }

    #[test]
    fn every_byte_value_at_every_position_in_a_word() {
        for b in 0u8..=255 {
            for pad in 0..17 {
                let mut raw = vec![b'a'; pad];
                raw.push(b);
                raw.extend_from_slice(b"tail\"\\x");
                assert_eq!(ours(&raw), serde(&raw), "byte {b:#x} after {pad}");
            }
        }
    }

    #[test]
    fn records_and_edge_cases() {
        for raw in [
            &b""[..],
            b"{\"a\":\"b\\\"c\",\"n\":1}",
            "caf\u{e9} \u{1f600} \u{7f}".as_bytes(),
            b"\x00\x1f\x20\x21\"\"\\\\\n\r\t\x08\x0c",
            b"invalid \xff\xfe utf-8 \xc3",
        ] {
            assert_eq!(ours(raw), serde(raw), "{:?}", String::from_utf8_lossy(raw));
        }
    }

    proptest! {
        #[test]
        fn same_as_serde_json(raw in proptest::collection::vec(any::<u8>(), 0..200)) {
            prop_assert_eq!(ours(&raw), serde(&raw));
        }

        #[test]
        fn same_as_serde_json_on_text(text in ".{0,200}") {
            prop_assert_eq!(ours(text.as_bytes()), serde(text.as_bytes()));
        }
    }
}

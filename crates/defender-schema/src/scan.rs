//! A hand-written splitter for the shape Defender writes: `{"records":[{...},...]}`, compact,
//! each record an object whose `category` is a plain string and whose `properties` is an object.
//!
//! Routing every message body through `serde_json` was the forwarder's largest own cost. This
//! scanner checks the same JSON grammar but skips strings a word at a time (`memchr2` for long
//! ones) and builds nothing but spans. It only ever answers for inputs it fully understands: anything else (a syntax error,
//! a control byte anywhere, an escaped key, a record that is not routable, other envelope keys,
//! deep nesting) returns `None`, and the caller takes the `serde_json` path, which gives the same
//! records or the precise error. So it may refuse valid input, but never accepts invalid input.

/// One routable record: byte ranges into the body.
pub(crate) struct Spans {
    pub record: (usize, usize),
    pub category: (usize, usize),
    pub properties: (usize, usize),
    pub time: Option<(usize, usize)>,
}

/// Nesting the scanner follows before it hands over to `serde_json` (whose own limit is 128).
const MAX_DEPTH: u32 = 100;

/// The records of `body` as spans, or `None` when the `serde_json` path must decide.
pub(crate) fn split(body: &str) -> Option<Vec<Spans>> {
    let b = body.as_bytes();
    // JSON allows no control byte in a string; with none anywhere, strings need no per-byte check.
    if has_control(b) {
        return None;
    }
    let mut s = Scan { b, i: 0 };
    s.ws();
    s.eat(b'{')?;
    s.ws();
    if s.key()? != b"records" {
        return None;
    }
    s.ws();
    s.eat(b':')?;
    s.ws();
    s.eat(b'[')?;
    s.ws();
    let mut out = Vec::with_capacity(64);
    if s.eat(b']').is_none() {
        loop {
            out.push(s.record()?);
            if !s.more(b']')? {
                break;
            }
        }
    }
    s.ws();
    s.eat(b'}')?;
    s.ws();
    (s.i == b.len()).then_some(out)
}

/// One record on its own (a line of the Storage export), or `None` for the `serde_json` path.
pub(crate) fn record(raw: &str) -> Option<Spans> {
    let b = raw.as_bytes();
    if has_control(b) {
        return None;
    }
    let mut s = Scan { b, i: 0 };
    s.ws();
    let spans = s.record()?;
    s.ws();
    (s.i == b.len()).then_some(spans)
}

/// Whether any byte is below 0x20 (tab, line feed and carriage return included). Folded 32 bytes
/// at a time without early exit, so the compiler can vectorise it.
fn has_control(b: &[u8]) -> bool {
    let mut chunks = b.chunks_exact(32);
    let found = chunks
        .by_ref()
        .any(|c| c.iter().fold(0u8, |acc, &x| acc | u8::from(x < 0x20)) != 0);
    found || chunks.remainder().iter().any(|&x| x < 0x20)
}

/// The first `"` or `\\` in `s`. Most strings in a record are short (keys, names, times), where
/// eight bytes at a time beat setting up a vector search; past 64 bytes (command lines, JSON in
/// strings) `memchr2` takes over.
fn quote_or_backslash(s: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    // High bit of each zero byte of `x`; the lowest one set is exact, which is all we read.
    let zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS;
    let mut i = 0;
    while let Some(word) = s.get(i..i + 8) {
        let w = u64::from_le_bytes(word.try_into().expect("eight bytes"));
        let hit = zero(w ^ (ONES * u64::from(b'"'))) | zero(w ^ (ONES * u64::from(b'\\')));
        if hit != 0 {
            return Some(i + (hit.trailing_zeros() / 8) as usize);
        }
        i += 8;
        if i == 64 {
            return memchr::memchr2(b'"', b'\\', &s[i..]).map(|at| at + i);
        }
    }
    s[i..].iter().position(|&c| c == b'"' || c == b'\\').map(|at| at + i)
}

struct Scan<'a> {
    b: &'a [u8],
    i: usize,
}

impl Scan<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.i += 1;
        Some(c)
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        (self.peek()? == c).then(|| self.i += 1)
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    /// A string at `i` (its opening quote); returns its span, quotes included, and whether it
    /// has escapes.
    fn string(&mut self) -> Option<((usize, usize), bool)> {
        let start = self.i;
        self.eat(b'"')?;
        let mut escaped = false;
        loop {
            self.i += quote_or_backslash(self.b.get(self.i..)?)?;
            if self.next()? == b'"' {
                return Some(((start, self.i), escaped));
            }
            escaped = true;
            match self.next()? {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {}
                b'u' => {
                    let hex = self.b.get(self.i..self.i + 4)?;
                    if !hex.iter().all(u8::is_ascii_hexdigit) {
                        return None;
                    }
                    self.i += 4;
                }
                _ => return None,
            }
        }
    }

    /// An object key without escapes, its text; then the caller expects `:`.
    fn key(&mut self) -> Option<&[u8]> {
        let ((start, end), escaped) = self.string()?;
        if escaped {
            return None;
        }
        self.b.get(start + 1..end - 1)
    }

    fn record(&mut self) -> Option<Spans> {
        let start = self.i;
        self.eat(b'{')?;
        let (mut category, mut properties, mut time) = (None, None, None);
        self.ws();
        if self.peek()? == b'}' {
            return None; // no category: the serde path reports it
        }
        loop {
            let key = self.key()?;
            let slot = match key {
                b"category" => Some(&mut category),
                b"properties" => Some(&mut properties),
                b"time" => Some(&mut time),
                _ => None,
            };
            let is_category = key == b"category";
            self.ws();
            self.eat(b':')?;
            self.ws();
            let from = self.i;
            if is_category {
                // Routing borrows the category's text: it must be a string without escapes.
                if self.peek()? != b'"' || self.string()?.1 {
                    return None;
                }
            } else {
                self.value(MAX_DEPTH)?;
            }
            if let Some(slot) = slot
                && slot.replace((from, self.i)).is_some()
            {
                return None; // duplicate: the serde path reports it
            }
            if !self.more(b'}')? {
                break;
            }
        }
        let category: (usize, usize) = category?;
        let properties: (usize, usize) = properties?;
        if self.b[properties.0] != b'{' {
            return None;
        }
        Some(Spans {
            record: (start, self.i),
            category: (category.0 + 1, category.1 - 1),
            properties,
            time,
        })
    }

    /// Skips one value, checking its syntax; `depth` is how many more containers may open.
    fn value(&mut self, depth: u32) -> Option<()> {
        match self.peek()? {
            b'"' => self.string().map(drop),
            b'{' => self.container(b'}', true, depth),
            b'[' => self.container(b']', false, depth),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            _ => self.number(),
        }
    }

    /// The rest of an object (`keyed`) or array whose opening bracket is at `i`.
    fn container(&mut self, close: u8, keyed: bool, depth: u32) -> Option<()> {
        let depth = depth.checked_sub(1)?;
        self.i += 1;
        self.ws();
        if self.eat(close).is_some() {
            return Some(());
        }
        loop {
            if keyed {
                if self.peek()? != b'"' {
                    return None;
                }
                self.string()?;
                self.ws();
                self.eat(b':')?;
                self.ws();
            }
            self.value(depth)?;
            if !self.more(close)? {
                return Some(());
            }
        }
    }

    /// After an element: `true` at a `,` (another follows), `false` at `close`; `None` at
    /// anything else.
    fn more(&mut self, close: u8) -> Option<bool> {
        self.ws();
        match self.next()? {
            b',' => {
                self.ws();
                Some(true)
            }
            c if c == close => Some(false),
            _ => None,
        }
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        if self.b.get(self.i..self.i + word.len())? != word {
            return None;
        }
        self.i += word.len();
        Some(())
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`
    fn number(&mut self) -> Option<()> {
        let _ = self.eat(b'-');
        match self.next()? {
            b'0' => {}
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.eat(b'.').is_some() {
            self.some_digits()?;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.i += 1;
            }
            self.some_digits()?;
        }
        // `01` or `1x`: what follows a number must end it.
        match self.peek() {
            Some(c) if c.is_ascii_alphanumeric() || c == b'.' => None,
            _ => Some(()),
        }
    }

    fn digits(&mut self) {
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.i += 1;
        }
    }

    fn some_digits(&mut self) -> Option<()> {
        if !self.peek()?.is_ascii_digit() {
            return None;
        }
        self.digits();
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use crate::envelope::{parse_record_with_serde, split_with_serde};

    /// Where the scanner answers, `serde_json` must give the same records; it must never accept
    /// what `serde_json` refuses.
    fn agrees(body: &str) -> bool {
        let Some(spans) = super::split(body) else {
            return false;
        };
        let records = split_with_serde(body).unwrap_or_else(|e| panic!("scanner accepted {body:?}; serde: {e}"));
        assert_eq!(spans.len(), records.len(), "{body:?}");
        for (s, r) in spans.iter().zip(&records) {
            let r = r
                .as_ref()
                .unwrap_or_else(|e| panic!("scanner accepted a bad record in {body:?}: {e}"));
            assert_eq!(&body[s.record.0..s.record.1], r.raw(), "{body:?}");
            assert_eq!(&body[s.category.0..s.category.1], r.category(), "{body:?}");
            assert_eq!(&body[s.properties.0..s.properties.1], r.properties().get(), "{body:?}");
            assert_eq!(s.time.map(|(a, z)| &body[a..z]), r.time_raw(), "{body:?}");
        }
        true
    }

    /// The same for one record on its own.
    fn agrees_on_record(raw: &str) -> bool {
        let Some(s) = super::record(raw) else {
            return false;
        };
        let r = parse_record_with_serde(raw).unwrap_or_else(|e| panic!("scanner accepted {raw:?}; serde: {e}"));
        assert_eq!(&raw[s.category.0..s.category.1], r.category(), "{raw:?}");
        assert_eq!(&raw[s.properties.0..s.properties.1], r.properties().get(), "{raw:?}");
        assert_eq!(s.time.map(|(a, z)| &raw[a..z]), r.time_raw(), "{raw:?}");
        true
    }

    fn leaf() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            ".{0,12}".prop_map(Value::String),
            "[ -~]{0,40}".prop_map(Value::String),
        ]
    }

    fn value() -> impl Strategy<Value = Value> {
        leaf().prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(".{0,8}", inner, 0..6).prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn record() -> impl Strategy<Value = Value> {
        (
            prop::collection::btree_map("[a-zA-Z]{1,10}", value(), 0..5),
            "[A-Za-z-]{0,30}",
            prop::option::of("[0-9:TZ.-]{0,28}"),
        )
            .prop_map(|(props, category, time)| {
                let mut r = json!({"category": category, "properties": props});
                if let Some(t) = time {
                    r["time"] = Value::String(t);
                }
                r
            })
    }

    /// Bodies as Defender writes them, compact or spaced out.
    fn body() -> impl Strategy<Value = String> {
        (prop::collection::vec(record(), 0..5), any::<bool>()).prop_map(|(records, pretty)| {
            let body = json!({ "records": records });
            if pretty {
                serde_json::to_string_pretty(&body).unwrap()
            } else {
                serde_json::to_string(&body).unwrap()
            }
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

        #[test]
        fn compact_bodies_are_scanned_and_agree(body in body()) {
            // Only line breaks (pretty printing) send a well-formed body to the serde path.
            prop_assert_eq!(agrees(&body), !body.contains('\n'));
        }

        #[test]
        fn records_alone_are_scanned_and_agree(record in record(), pretty in any::<bool>()) {
            let raw = if pretty { serde_json::to_string_pretty(&record) } else { serde_json::to_string(&record) };
            let raw = raw.unwrap();
            prop_assert_eq!(agrees_on_record(&raw), !raw.contains('\n'));
            prop_assert_eq!(agrees_on_record(&format!(" {raw} ")), !raw.contains('\n'));
        }

        #[test]
        fn mutated_bodies_never_diverge(
            body in body(),
            edits in prop::collection::vec((any::<prop::sample::Index>(), prop::sample::select(&b"{}[]\":,\\ 0-.eE+tfnu1a\x01"[..])), 1..4),
            cut in prop::option::weighted(0.2, any::<prop::sample::Index>()),
        ) {
            let mut bytes = body.into_bytes();
            for (at, b) in edits {
                let i = at.index(bytes.len() + 1);
                if i < bytes.len() && i % 2 == 0 {
                    bytes[i] = b;
                } else {
                    bytes.insert(i.min(bytes.len()), b);
                }
            }
            if let Some(cut) = cut {
                bytes.truncate(cut.index(bytes.len() + 1));
            }
            if let Ok(text) = String::from_utf8(bytes) {
                agrees(&text);
                agrees_on_record(&text);
                if let Some(inner) = text.strip_prefix("{\"records\":[").and_then(|t| t.strip_suffix("]}")) {
                    agrees_on_record(inner);
                }
            }
        }

        #[test]
        fn arbitrary_text_never_diverges(text in "[{}\\[\\]\":, a-z0-9\\\\.eE+-]{0,80}") {
            agrees(&format!("{{\"records\":[{text}]}}"));
            agrees(&format!("{{\"records\":[{{\"category\":\"A\",\"properties\":{{\"a\":{text}}}}}]}}"));
            agrees(&text);
            agrees_on_record(&text);
        }
    }

    #[test]
    fn refuses_what_serde_refuses_or_reports() {
        for body in [
            r#"{"records":[{"category":"A","properties":{}}],"x":1}"#,
            r#"{"records":[{"category":"A","properties":{}},]}"#,
            r#"{"records":[{"category":"A\u0041","properties":{}}]}"#,
            r#"{"records":[{"category":"A","properties":[]}]}"#,
            r#"{"records":[{"category":"A","category":"B","properties":{}}]}"#,
            r#"{"records":[{"categ\u006fry":"A","properties":{}}]}"#,
            r#"{"records":[{"category":"A","properties":{"a":01}}]}"#,
            r#"{"records":[{"category":"A","properties":{"a":"\x"}}]}"#,
            r#"{"records":[{"category":"A","properties":{"a":tru}}]}"#,
            r#"{"records":[{"category":"A","properties":{"a":1.}}]}"#,
            r#"{"records":[{"category":"A","properties":{"a":1.e5}}]}"#,
            r#"{"records":[{"category":"A","properties":{"a":1e}}]}"#,
            r#"{"records":[{"category":"A","properties":{"a":-}}]}"#,
            r#"{"records":[{"category":"A","properties":{"a":.5}}]}"#,
            r#"{"records":[{"category":"A","properties":{"a":+1}}]}"#,
            r#"{"records":[{"category":"A","properties":{"a":"\u12G4"}}]}"#,
            "{\"records\":[{\"category\":\"A\",\"properties\":{\"a\":\"\t\"}}]}",
            r#"{"records":[{}]}"#,
            r#"{"records":[1]}"#,
            r#"{"records":[{"category":"A","properties":{}}]} x"#,
        ] {
            assert!(super::split(body).is_none(), "{body}");
        }
        let deep = format!(
            r#"{{"records":[{{"category":"A","properties":{{"a":{}1{}}}}}]}}"#,
            "[".repeat(120),
            "]".repeat(120)
        );
        assert!(super::split(&deep).is_none());
        assert!(agrees(
            r#" { "records" : [ { "time" : "t" , "category" : "AdvancedHunting-X" , "properties" : { "a" : [ 1.5e-3 , -0 , true , null , "\"\\\/\b\f\n\r\t\u00e9" ] } } ] } "#
        ));
        assert!(agrees(r#"{"records":[]}"#));
    }
}

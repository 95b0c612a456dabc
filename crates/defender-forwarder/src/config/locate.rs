//! Field paths (`sinks[1].tables.include[0]`) and source positions, both ways: the path of the
//! value at a byte offset (for the parser's errors) and the span of a path (for checks made
//! after parsing).

use std::ops::Range;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// The path of the deepest key or value holding byte `pos`.
pub(super) fn path_at(doc: &Spanned<DeTable<'_>>, pos: usize) -> Option<String> {
    in_table(doc.get_ref(), pos, "")
}

fn in_table(table: &DeTable<'_>, pos: usize, prefix: &str) -> Option<String> {
    for (key, value) in table {
        let path = if prefix.is_empty() {
            key.get_ref().to_string()
        } else {
            format!("{prefix}.{}", key.get_ref())
        };
        if let Some(deeper) = in_value(value, pos, &path) {
            return Some(deeper);
        }
        if key.span().contains(&pos) || value.span().contains(&pos) {
            return Some(path);
        }
    }
    None
}

fn in_value(value: &Spanned<DeValue<'_>>, pos: usize, path: &str) -> Option<String> {
    match value.get_ref() {
        DeValue::Table(t) => in_table(t, pos, path),
        DeValue::Array(items) => items.iter().enumerate().find_map(|(i, item)| {
            let path = format!("{path}[{i}]");
            in_value(item, pos, &path).or_else(|| item.span().contains(&pos).then_some(path))
        }),
        _ => None,
    }
}

/// The span of the deepest part of `field` that exists in the document.
pub(super) fn span_of(doc: &Spanned<DeTable<'_>>, field: &str) -> Option<Range<usize>> {
    let mut span = None;
    let mut current: Option<&Spanned<DeValue<'_>>> = None;
    for segment in segments(field) {
        let next = match (segment, current.map(Spanned::get_ref)) {
            (Segment::Key(k), None) => doc.get_ref().get_key_value(k),
            (Segment::Key(k), Some(DeValue::Table(t))) => t.get_key_value(k),
            (Segment::Index(i), Some(DeValue::Array(items))) => {
                let item = items.get(i);
                if let Some(item) = item {
                    span = Some(item.span());
                    current = Some(item);
                    continue;
                }
                None
            }
            _ => None,
        };
        let Some((key, value)) = next else { break };
        span = Some(key.span());
        current = Some(value);
    }
    span
}

enum Segment<'a> {
    Key(&'a str),
    Index(usize),
}

fn segments(field: &str) -> impl Iterator<Item = Segment<'_>> {
    field.split('.').flat_map(|part| {
        let mut out = Vec::new();
        let mut rest = part;
        if let Some(open) = rest.find('[') {
            out.push(Segment::Key(&rest[..open]));
            rest = &rest[open..];
            while let Some(close) = rest.find(']') {
                if let Ok(i) = rest[1..close].parse() {
                    out.push(Segment::Index(i));
                }
                rest = &rest[close + 1..];
            }
        } else {
            out.push(Segment::Key(rest));
        }
        out
    })
}

/// 1-based line and column of byte `pos`.
pub(super) fn line_column(text: &str, pos: usize) -> (Option<usize>, Option<usize>) {
    let before = text.get(..pos.min(text.len())).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (Some(line), Some(column))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "state_dir = \"/s\"\n[[sinks]]\nkind = \"stdout\"\ntables = { include = [\"A\", \"B\"] }\n[[sinks]]\nkind = \"files\"\ndir = \"/a\"\n";

    #[test]
    fn paths_and_spans_agree() {
        let doc = DeTable::parse(TEXT).unwrap();
        let b = TEXT.find("\"B\"").unwrap();
        assert_eq!(path_at(&doc, b).as_deref(), Some("sinks[0].tables.include[1]"));
        let dir = TEXT.rfind("dir").unwrap();
        assert_eq!(path_at(&doc, dir).as_deref(), Some("sinks[1].dir"));
        let span = span_of(&doc, "sinks[1].dir").unwrap();
        assert_eq!(line_column(TEXT, span.start), (Some(7), Some(1)));
        let span = span_of(&doc, "sinks[0].tables.include[1]").unwrap();
        assert_eq!(span.start, b);
        // A field that is not in the file: the deepest part that is.
        let span = span_of(&doc, "sinks[1].url").unwrap();
        assert_eq!(line_column(TEXT, span.start).0, Some(5));
    }
}

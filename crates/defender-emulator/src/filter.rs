//! The selector filter a receiver attaches with, e.g. `amqp.annotation.x-opt-offset > '-1'`.

use fe2o3_amqp_types::messaging::Source;
use fe2o3_amqp_types::primitives::Value;

use crate::store::StartAt;

/// The filter key (the descriptor arrives as this symbol or as code 0x0000468C00000004).
const SELECTOR_KEY: &str = "apache.org:selector-filter:string";

/// Reads the start position from a receiver's source. No filter means from the start.
pub(crate) fn start_at(source: Option<&Source>) -> Result<StartAt, String> {
    let Some(filters) = source.and_then(|s| s.filter.as_ref()) else {
        return Ok(StartAt::Offset(-1, false));
    };
    let mut expression = None;
    for (key, value) in filters {
        let text = match value {
            Value::Described(d) => match &d.value {
                Value::String(s) => Some(s.as_str()),
                _ => None,
            },
            Value::String(s) => Some(s.as_str()),
            _ => None,
        };
        if let Some(text) = text
            && (key.as_str() == SELECTOR_KEY || expression.is_none())
        {
            expression = Some(text);
        }
    }
    match expression {
        Some(e) => parse(e),
        None => Ok(StartAt::Offset(-1, false)),
    }
}

/// Parses one selector expression.
pub(crate) fn parse(expression: &str) -> Result<StartAt, String> {
    let bad = || format!("unsupported selector filter: {expression}");
    let text = expression.trim();
    if unquote(text) == Some("@latest") {
        return Ok(StartAt::Latest);
    }
    let (lhs, rest) = text.split_once('>').ok_or_else(bad)?;
    let (inclusive, rhs) = match rest.strip_prefix('=') {
        Some(r) => (true, r),
        None => (false, rest),
    };
    let field = lhs.trim().to_ascii_lowercase();
    let value = unquote(rhs.trim()).ok_or_else(bad)?.trim();
    if value == "@latest" {
        return Ok(StartAt::Latest);
    }
    let number: i64 = value.parse().map_err(|_| bad())?;
    let field = field.strip_prefix("amqp.annotation.").unwrap_or(&field);
    match field {
        "x-opt-offset" => Ok(StartAt::Offset(number, inclusive)),
        "x-opt-sequence-number" => Ok(StartAt::SequenceNumber(number, inclusive)),
        "x-opt-enqueued-time" => Ok(StartAt::EnqueuedTime(number, inclusive)),
        _ => Err(bad()),
    }
}

fn unquote(s: &str) -> Option<&str> {
    s.strip_prefix('\'')
        .and_then(|s| s.strip_suffix('\''))
        .or_else(|| s.strip_prefix('"').and_then(|s| s.strip_suffix('"')))
        .or_else(|| (!s.is_empty() && !s.contains(['\'', '"', ' '])).then_some(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_sent_by_the_clients() {
        assert_eq!(
            parse("amqp.annotation.x-opt-offset > '-1'"),
            Ok(StartAt::Offset(-1, false))
        );
        assert_eq!(parse("amqp.annotation.x-opt-offset > '@latest'"), Ok(StartAt::Latest));
        assert_eq!(parse("'@latest'"), Ok(StartAt::Latest));
        assert_eq!(
            parse("amqp.annotation.x-opt-sequence-number >'2'"),
            Ok(StartAt::SequenceNumber(2, false))
        );
        assert_eq!(
            parse("amqp.annotation.x-opt-sequence-number >= '2'"),
            Ok(StartAt::SequenceNumber(2, true))
        );
        assert_eq!(
            parse("amqp.annotation.x-opt-offset > '121'"),
            Ok(StartAt::Offset(121, false))
        );
        assert_eq!(
            parse("amqp.annotation.x-opt-enqueued-time >'1700000000000'"),
            Ok(StartAt::EnqueuedTime(1_700_000_000_000, false))
        );
        assert!(parse("amqp.annotation.x-opt-offset < '1'").is_err());
        assert!(parse("amqp.annotation.x-opt-foo > '1'").is_err());
    }
}

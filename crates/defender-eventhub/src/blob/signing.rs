//! Shared Key authorization and URL encoding for the Blob service.
//!
//! <https://learn.microsoft.com/rest/api/storageservices/authorize-with-shared-key>

use std::fmt::Write as _;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac as _};
use reqwest::header::HeaderMap;
use sha2::Sha256;

/// The standard headers that take a fixed line of the string to sign, in order (after the verb).
const STANDARD_HEADERS: [&str; 11] = [
    "content-encoding",
    "content-language",
    "content-length",
    "content-md5",
    "content-type",
    "date",
    "if-modified-since",
    "if-match",
    "if-none-match",
    "if-unmodified-since",
    "range",
];

/// The Shared Key string to sign for one request.
///
/// `encoded_path` is the URL path exactly as sent (percent-encoded); `query` holds the decoded query
/// parameters; `content_length` is the body length (an empty line when 0, as for versions since 2015-02-21).
pub(crate) fn string_to_sign(
    method: &str,
    headers: &HeaderMap,
    content_length: usize,
    account: &str,
    encoded_path: &str,
    query: &[(String, String)],
) -> String {
    let mut out = String::with_capacity(256);
    out.push_str(method);
    out.push('\n');
    for name in STANDARD_HEADERS {
        if name == "content-length" {
            if content_length > 0 {
                let _ = write!(out, "{content_length}");
            }
        } else if let Some(value) = headers.get(name).and_then(|v| v.to_str().ok()) {
            out.push_str(value);
        }
        out.push('\n');
    }

    // Canonicalized headers: every x-ms-* header, lower-cased, sorted, `name:value\n`.
    let mut ms_headers: Vec<(String, String)> = Vec::new();
    for name in headers.keys() {
        let lower = name.as_str().to_ascii_lowercase();
        if !lower.starts_with("x-ms-") {
            continue;
        }
        let values: Vec<String> = headers
            .get_all(name)
            .iter()
            .map(|v| fold_whitespace(&String::from_utf8_lossy(v.as_bytes())))
            .collect();
        ms_headers.push((lower, values.join(",")));
    }
    ms_headers.sort();
    for (name, value) in ms_headers {
        let _ = writeln!(out, "{name}:{value}");
    }

    // Canonicalized resource: `/account/path` then `\nname:value` per query parameter, sorted.
    out.push('/');
    out.push_str(account);
    out.push_str(if encoded_path.is_empty() { "/" } else { encoded_path });
    let mut params: Vec<(String, Vec<&str>)> = Vec::new();
    for (name, value) in query {
        let name = name.to_ascii_lowercase();
        match params.iter_mut().find(|(n, _)| *n == name) {
            Some((_, values)) => values.push(value),
            None => params.push((name, vec![value])),
        }
    }
    params.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, mut values) in params {
        values.sort_unstable();
        let _ = write!(out, "\n{name}:{}", values.join(","));
    }
    out
}

/// `base64(HMAC-SHA256(key, string_to_sign))`.
pub(crate) fn sign(key: &[u8], string_to_sign: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(string_to_sign.as_bytes());
    STANDARD.encode(mac.finalize().into_bytes())
}

/// Trims and folds runs of whitespace into one space (outside quotes is what the spec asks; header
/// values this client sends never contain quoted whitespace).
fn fold_whitespace(value: &str) -> String {
    value.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Percent-encodes everything but RFC 3986 unreserved characters (and `/` when `keep_slash`), the way
/// the Python SDK does (`quote(name, safe='~/')`): `$default` becomes `%24default`.
pub(crate) fn percent_encode(value: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') || (keep_slash && byte == b'/') {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

/// Encodes a blob name for the URL path: [`percent_encode`] keeping `/`, except that `.` and `..`
/// segments become `%2E` / `%2E%2E` so that URL normalisation cannot resolve them away.
pub(crate) fn encode_blob_path(name: &str) -> String {
    name.split('/')
        .map(|segment| match segment {
            "." => "%2E".to_owned(),
            ".." => "%2E%2E".to_owned(),
            other => percent_encode(other, false),
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Decodes `%XX` escapes (used for `<Name Encoded="true">` in listings). Invalid escapes stay as they are.
pub(crate) fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = if bytes[i] == b'%' && i + 2 < bytes.len() {
            hex(bytes[i + 1]).zip(hex(bytes[i + 2]))
        } else {
            None
        };
        if let Some((hi, lo)) = escaped {
            out.push((hi << 4) | lo);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use reqwest::header::HeaderValue;

    use super::*;
    use crate::blob::credential::DEVELOPMENT_ACCOUNT_KEY;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    /// Strings to sign and signatures recorded from Azurite 3.35 (`--debug`), which accepted them;
    /// the signatures were recomputed independently with Python's `hmac`.
    #[test]
    fn string_to_sign_matches_azurite_for_a_conditional_put_with_metadata() {
        let headers = headers(&[
            ("x-ms-blob-type", "BlockBlob"),
            ("x-ms-meta-ownerid", "me"),
            ("if-none-match", "*"),
            ("x-ms-version", "2021-08-06"),
            ("x-ms-date", "Mon, 23 Nov 2026 09:29:49 GMT"),
            ("content-length", "0"),
        ]);
        let to_sign = string_to_sign(
            "PUT",
            &headers,
            0,
            "devstoreaccount1",
            "/devstoreaccount1/scratch/ns/hub/%24default/ownership/0",
            &[],
        );
        assert_eq!(
            to_sign,
            "PUT\n\n\n\n\n\n\n\n\n*\n\n\nx-ms-blob-type:BlockBlob\nx-ms-date:Mon, 23 Nov 2026 09:29:49 GMT\n\
             x-ms-meta-ownerid:me\nx-ms-version:2021-08-06\n\
             /devstoreaccount1/devstoreaccount1/scratch/ns/hub/%24default/ownership/0"
        );
        let key = STANDARD.decode(DEVELOPMENT_ACCOUNT_KEY).unwrap();
        assert_eq!(sign(&key, &to_sign), "KCITFtebH+xavh0egmmN+v1PeGP4AcKAanWXfzMapeg=");
    }

    #[test]
    fn string_to_sign_matches_azurite_for_a_listing() {
        let headers = headers(&[
            ("x-ms-version", "2021-08-06"),
            ("x-ms-date", "Mon, 23 Nov 2026 09:29:49 GMT"),
        ]);
        let query: Vec<(String, String)> = [
            ("restype", "container"),
            ("comp", "list"),
            ("include", "metadata"),
            ("prefix", "ns/hub/$default/"),
            ("marker", "m"),
            ("maxresults", "2"),
        ]
        .iter()
        .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
        .collect();
        let to_sign = string_to_sign(
            "GET",
            &headers,
            0,
            "devstoreaccount1",
            "/devstoreaccount1/scratch",
            &query,
        );
        assert_eq!(
            to_sign,
            "GET\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:Mon, 23 Nov 2026 09:29:49 GMT\nx-ms-version:2021-08-06\n\
             /devstoreaccount1/devstoreaccount1/scratch\ncomp:list\ninclude:metadata\nmarker:m\nmaxresults:2\n\
             prefix:ns/hub/$default/\nrestype:container"
        );
        let key = STANDARD.decode(DEVELOPMENT_ACCOUNT_KEY).unwrap();
        assert_eq!(sign(&key, &to_sign), "ns2+Wr5xIrchpoGoOivFGG/FJilrLIG/KNwxr+o5gAA=");
    }

    #[test]
    fn string_to_sign_places_length_range_and_if_match() {
        let headers = headers(&[
            ("x-ms-version", "2021-08-06"),
            ("x-ms-date", "Mon, 23 Nov 2026 09:29:38 GMT"),
            ("if-match", "\"0x123\""),
            ("range", "bytes=6-100"),
            ("X-MS-Meta-B", "  two   words "),
        ]);
        let query = vec![("COMP".to_owned(), "appendblock".to_owned())];
        let to_sign = string_to_sign("PUT", &headers, 11, "acct", "/c/app", &query);
        assert_eq!(
            to_sign,
            "PUT\n\n\n11\n\n\n\n\n\"0x123\"\n\n\nbytes=6-100\nx-ms-date:Mon, 23 Nov 2026 09:29:38 GMT\n\
             x-ms-meta-b:two words\nx-ms-version:2021-08-06\n/acct/c/app\ncomp:appendblock"
        );
    }

    #[test]
    fn encodes_like_the_python_sdk() {
        assert_eq!(
            percent_encode("myns.servicebus.windows.net/myhub/$default/ownership/0", true),
            "myns.servicebus.windows.net/myhub/%24default/ownership/0"
        );
        assert_eq!(percent_encode("a b/c&d=e", false), "a%20b%2Fc%26d%3De");
        assert_eq!(
            encode_blob_path("ns/hub/$default/ownership/0"),
            percent_encode("ns/hub/$default/ownership/0", true)
        );
        assert_eq!(encode_blob_path("a/../b/./c..d/"), "a/%2E%2E/b/%2E/c..d/");
        assert_eq!(percent_encode("é", true), "%C3%A9");
        assert_eq!(percent_decode("a%20b%2Fc%C3%A9%zz%4"), "a b/cé%zz%4");
    }
}

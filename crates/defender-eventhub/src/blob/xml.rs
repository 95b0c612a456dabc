//! Reading the Blob service's XML: List Blobs results and error bodies.

use std::collections::BTreeMap;

use quick_xml::Reader;
use quick_xml::events::Event;

use super::signing::percent_decode;

/// One `<Blob>` of a List Blobs page, as text.
#[derive(Debug, Default)]
pub(crate) struct RawBlob {
    pub name: String,
    pub properties: BTreeMap<String, String>,
    pub metadata: BTreeMap<String, String>,
}

#[derive(Debug, Default)]
pub(crate) struct RawListPage {
    pub blobs: Vec<RawBlob>,
    pub next_marker: Option<String>,
}

/// Parses `EnumerationResults`. Element names are matched by local name; entity and character
/// references in text are resolved (quick-xml reports them as separate events).
pub(crate) fn parse_list_blobs(xml: &str) -> Result<RawListPage, String> {
    let mut reader = Reader::from_str(xml);
    let mut list = ListParser::default();
    loop {
        let event = reader
            .read_event()
            .map_err(|e| format!("bad XML at byte {}: {e}", reader.error_position()))?;
        match event {
            Event::Start(start) => list.start(&start),
            Event::Empty(empty) => list.empty(&String::from_utf8_lossy(empty.local_name().as_ref())),
            Event::Text(t) => list
                .text
                .push_str(&t.xml10_content().map_err(|e| format!("bad text in XML: {e}"))?),
            Event::CData(c) => list
                .text
                .push_str(&c.xml10_content().map_err(|e| format!("bad CDATA in XML: {e}"))?),
            Event::GeneralRef(r) => resolve_reference(&r, &mut list.text)?,
            Event::End(_) => list.end()?,
            Event::Eof => break,
            Event::Comment(_) | Event::Decl(_) | Event::PI(_) | Event::DocType(_) => {}
        }
    }
    if !list.path.is_empty() {
        return Err("truncated XML".to_owned());
    }
    Ok(list.page)
}

/// Where the parse of a listing is.
#[derive(Default)]
struct ListParser {
    page: RawListPage,
    /// The element path from the root, by local name.
    path: Vec<String>,
    text: String,
    current: Option<RawBlob>,
    name_encoded: bool,
}

impl ListParser {
    fn start(&mut self, start: &quick_xml::events::BytesStart<'_>) {
        let name = String::from_utf8_lossy(start.local_name().as_ref()).into_owned();
        self.text.clear();
        if name == "Blob" && path_is(&self.path, &["EnumerationResults", "Blobs"]) {
            self.current = Some(RawBlob::default());
        }
        if name == "Name" && self.current.is_some() && self.path.len() == 3 {
            self.name_encoded = start
                .try_get_attribute("Encoded")
                .ok()
                .flatten()
                .and_then(|a| {
                    a.normalized_value(quick_xml::XmlVersion::Implicit1_0)
                        .ok()
                        .map(|v| v.eq_ignore_ascii_case("true"))
                })
                .unwrap_or(false);
        }
        self.path.push(name);
    }

    /// `<NextMarker />`, `<Metadata />`, `<ownerid />` (an empty value) ...
    fn empty(&mut self, name: &str) {
        let Some(blob) = self.current.as_mut() else { return };
        match self.path.last().map(String::as_str) {
            Some("Metadata") if self.path.len() == 4 => {
                blob.metadata.insert(name.to_owned(), String::new());
            }
            Some("Properties") if self.path.len() == 4 => {
                blob.properties.insert(name.to_owned(), String::new());
            }
            _ => {}
        }
    }

    fn end(&mut self) -> Result<(), String> {
        let Some(name) = self.path.pop() else {
            return Err("unbalanced XML".to_owned());
        };
        let depth = self.path.len();
        let parent = self.path.last().map(String::as_str);
        match (self.current.as_mut(), depth) {
            (Some(blob), 3) if name == "Name" => {
                blob.name = if self.name_encoded {
                    percent_decode(&self.text)
                } else {
                    std::mem::take(&mut self.text)
                };
            }
            (Some(blob), 4) if parent == Some("Properties") => {
                blob.properties.insert(name, std::mem::take(&mut self.text));
            }
            (Some(blob), 4) if parent == Some("Metadata") => {
                blob.metadata.insert(name, std::mem::take(&mut self.text));
            }
            (Some(_), 2) if name == "Blob" => {
                self.page.blobs.extend(self.current.take());
            }
            (_, 1) if name == "NextMarker" => {
                let marker = std::mem::take(&mut self.text);
                if !marker.is_empty() {
                    self.page.next_marker = Some(marker);
                }
            }
            _ => {}
        }
        self.text.clear();
        Ok(())
    }
}

/// Appends what a character or predefined entity reference stands for.
fn resolve_reference(r: &quick_xml::events::BytesRef<'_>, text: &mut String) -> Result<(), String> {
    if let Some(c) = r
        .resolve_char_ref()
        .map_err(|e| format!("bad character reference: {e}"))?
    {
        text.push(c);
        return Ok(());
    }
    let entity = r.decode().map_err(|e| format!("bad entity: {e}"))?;
    let resolved =
        quick_xml::escape::resolve_predefined_entity(&entity).ok_or_else(|| format!("unknown entity &{entity};"))?;
    text.push_str(resolved);
    Ok(())
}

fn path_is(path: &[String], expected: &[&str]) -> bool {
    path.len() == expected.len() && path.iter().zip(expected).all(|(a, b)| a == b)
}

/// The `<Message>` of an error body, first line only, at most 300 characters.
pub(crate) fn error_message(xml: &str) -> Option<String> {
    let start = xml.find("<Message>")? + "<Message>".len();
    let end = start + xml[start..].find("</Message>")?;
    let message = quick_xml::escape::unescape(&xml[start..end]).ok()?;
    let first_line = message.lines().next().unwrap_or_default().trim();
    if first_line.is_empty() {
        return None;
    }
    Some(first_line.chars().take(300).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_listing_page() {
        let xml = r#"<?xml version="1.0" encoding="utf-8"?>
<EnumerationResults ServiceEndpoint="http://127.0.0.1:10000/devstoreaccount1" ContainerName="c">
  <Prefix>ns/hub/$default/ownership/</Prefix>
  <MaxResults>2</MaxResults>
  <Blobs>
    <Blob>
      <Name>ns/hub/$default/ownership/0</Name>
      <Properties>
        <Creation-Time>Tue, 24 Nov 2026 10:00:00 GMT</Creation-Time>
        <Last-Modified>Tue, 24 Nov 2026 10:00:01 GMT</Last-Modified>
        <Etag>0x8DC0000000000001</Etag>
        <Content-Length>0</Content-Length>
        <Content-Type />
        <BlobType>BlockBlob</BlobType>
      </Properties>
      <Metadata><ownerid>a &amp; b &#65;</ownerid></Metadata>
    </Blob>
    <Blob>
      <Name Encoded="true">ns/hub/%24default/ownership/%EF%BF%BF</Name>
      <Properties><Etag>0x2</Etag></Properties>
      <Metadata><ownerid /></Metadata>
    </Blob>
    <Blob><Name>bare</Name><Metadata /></Blob>
  </Blobs>
  <NextMarker>2!84!bWFya2Vy</NextMarker>
</EnumerationResults>"#;
        let page = parse_list_blobs(xml).unwrap();
        assert_eq!(page.next_marker.as_deref(), Some("2!84!bWFya2Vy"));
        assert_eq!(page.blobs.len(), 3);
        let first = &page.blobs[0];
        assert_eq!(first.name, "ns/hub/$default/ownership/0");
        assert_eq!(first.properties["Etag"], "0x8DC0000000000001");
        assert_eq!(first.properties["Last-Modified"], "Tue, 24 Nov 2026 10:00:01 GMT");
        assert_eq!(first.properties["Content-Type"], "");
        assert_eq!(first.metadata["ownerid"], "a & b A");
        let second = &page.blobs[1];
        assert_eq!(second.name, "ns/hub/$default/ownership/\u{ffff}");
        assert_eq!(second.metadata["ownerid"], "");
        assert_eq!(page.blobs[2].name, "bare");
        assert!(page.blobs[2].metadata.is_empty());
    }

    #[test]
    fn empty_next_marker_ends_the_listing() {
        let xml = "<EnumerationResults><Blobs /><NextMarker /></EnumerationResults>";
        let page = parse_list_blobs(xml).unwrap();
        assert!(page.blobs.is_empty());
        assert!(page.next_marker.is_none());
    }

    #[test]
    fn rejects_broken_xml() {
        assert!(parse_list_blobs("<EnumerationResults><Blobs><Blob>").is_err());
        assert!(parse_list_blobs("<EnumerationResults></Blobs>").is_err());
    }

    #[test]
    fn extracts_error_messages() {
        let xml = "<?xml version=\"1.0\"?><Error><Code>ConditionNotMet</Code><Message>The condition &amp; more.\nRequestId:1</Message></Error>";
        assert_eq!(error_message(xml).as_deref(), Some("The condition & more."));
        assert_eq!(error_message("nothing"), None);
    }
}

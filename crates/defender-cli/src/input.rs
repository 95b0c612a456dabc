//! Reading what users point the CLI at: files, folders and stdin, plain, gzip or zstd, holding
//! Event Hub message bodies, single records, NDJSON or JSON arrays of either.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::de::IgnoredAny;
use serde_json::value::RawValue;

/// One input as given on the command line, expanded: a file, or stdin.
#[derive(Debug, Clone)]
pub enum Source {
    Stdin,
    File(PathBuf),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Stdin => f.write_str("<stdin>"),
            Source::File(p) => write!(f, "{}", p.display()),
        }
    }
}

const DATA_EXTENSIONS: &[&str] = &["json", "ndjson", "jsonl"];

/// Expands the arguments: `-` is stdin, a folder is every data file below it (sorted), a file is
/// itself whatever its name. A missing path is an error naming it.
pub fn expand(args: &[PathBuf]) -> Result<Vec<Source>> {
    expand_listing(args).map(|(sources, _)| sources)
}

/// As [`expand`], also returning the files found in folders but left out for their extension.
pub fn expand_listing(args: &[PathBuf]) -> Result<(Vec<Source>, Vec<PathBuf>)> {
    let mut out = Vec::new();
    let mut skipped = Vec::new();
    for arg in args {
        if arg.as_os_str() == "-" {
            out.push(Source::Stdin);
            continue;
        }
        let meta = std::fs::metadata(arg).with_context(|| format!("cannot read `{}`", arg.display()))?;
        if meta.is_dir() {
            let mut files = Vec::new();
            walk(arg, &mut files, &mut skipped).with_context(|| format!("cannot list `{}`", arg.display()))?;
            files.sort();
            out.extend(files.into_iter().map(Source::File));
        } else {
            out.push(Source::File(arg.clone()));
        }
    }
    skipped.sort();
    Ok((out, skipped))
}

/// The extensions read inside folders, for messages.
pub fn data_extensions() -> String {
    DATA_EXTENSIONS
        .iter()
        .map(|e| format!(".{e}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>, skipped: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            walk(&path, out, skipped)?;
        } else if is_data_file(&path) {
            out.push(path);
        } else if !path.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')) {
            skipped.push(path);
        }
    }
    Ok(())
}

fn is_data_file(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let name = name
        .strip_suffix(".gz")
        .or_else(|| name.strip_suffix(".zst"))
        .unwrap_or(name);
    DATA_EXTENSIONS.iter().any(|ext| name.ends_with(&format!(".{ext}")))
}

/// The size on disk, for progress bars (0 for stdin).
pub fn size(source: &Source) -> u64 {
    match source {
        Source::Stdin => 0,
        Source::File(p) => std::fs::metadata(p).map_or(0, |m| m.len()),
    }
}

/// Reads a source whole, decompressing `.gz` / `.zst` (by name, or by magic bytes on stdin).
pub fn read(source: &Source) -> Result<Vec<u8>> {
    let raw = match source {
        Source::Stdin => {
            let mut buf = Vec::new();
            std::io::stdin().read_to_end(&mut buf).context("cannot read stdin")?;
            buf
        }
        Source::File(p) => std::fs::read(p).with_context(|| format!("cannot read `{}`", p.display()))?,
    };
    decompress(raw).with_context(|| format!("cannot decompress `{source}`"))
}

fn decompress(raw: Vec<u8>) -> Result<Vec<u8>> {
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .context("gzip data is truncated or corrupt")?;
        Ok(out)
    } else if raw.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        zstd::stream::decode_all(raw.as_slice()).context("zstd data is truncated or corrupt")
    } else {
        Ok(raw)
    }
}

/// Where a unit sits in its source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    /// The whole document.
    Whole,
    /// A line of NDJSON (1-based).
    Line(usize),
    /// An element of a top-level JSON array (0-based).
    Index(usize),
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Position::Whole => Ok(()),
            Position::Line(n) => write!(f, ":{n}"),
            Position::Index(i) => write!(f, "[{i}]"),
        }
    }
}

/// One thing found in a document.
#[derive(Debug)]
pub enum Unit<'a> {
    /// An Event Hub message body, `{"records": [...]}`.
    Body(&'a str),
    /// One record.
    Record(&'a str),
    /// Text that is not JSON (with why).
    Broken(String),
}

/// Splits a document into units, detecting its shape.
pub fn units(text: &str) -> Vec<(Position, Unit<'_>)> {
    let trimmed = text.trim_start_matches('\u{feff}').trim();
    if trimmed.is_empty() {
        return Vec::new();
    }
    if trimmed.starts_with('[') {
        return match serde_json::from_str::<Vec<&RawValue>>(trimmed) {
            Ok(items) => items
                .into_iter()
                .enumerate()
                .map(|(i, v)| (Position::Index(i), classify(v.get())))
                .collect(),
            Err(e) => vec![(Position::Whole, Unit::Broken(format!("not valid JSON: {e}")))],
        };
    }
    match serde_json::from_str::<&RawValue>(trimmed) {
        Ok(v) => vec![(Position::Whole, classify(v.get()))],
        // Not one document, but its first line is one: NDJSON (else a broken document, one error).
        Err(_)
            if trimmed
                .lines()
                .next()
                .is_some_and(|l| serde_json::from_str::<&RawValue>(l.trim()).is_ok()) =>
        {
            text.lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
                .map(|(n, l)| {
                    let l = l.trim();
                    let unit = match serde_json::from_str::<&RawValue>(l) {
                        Ok(v) => classify(v.get()),
                        Err(e) => Unit::Broken(format!("not valid JSON: {e}")),
                    };
                    (Position::Line(n + 1), unit)
                })
                .collect()
        }
        Err(e) => vec![(Position::Whole, Unit::Broken(format!("not valid JSON: {e}")))],
    }
}

/// An object with a `records` key is a message body; anything else is taken as a record (and
/// the record decoder says what is wrong with it, if anything).
fn classify(json: &str) -> Unit<'_> {
    #[derive(serde::Deserialize)]
    struct Probe {
        records: Option<IgnoredAny>,
    }
    match serde_json::from_str::<Probe>(json) {
        Ok(Probe { records: Some(_) }) => Unit::Body(json),
        _ => Unit::Record(json),
    }
}

/// Fails with a usage-style message when nothing was given.
pub fn require_some(args: &[PathBuf]) -> Result<()> {
    if args.is_empty() {
        bail!("no input: give files, folders, or `-` for stdin");
    }
    Ok(())
}

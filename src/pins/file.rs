//! Pin files: one `<upstream>.pins.json` per upstream in `policy.pins_dir`,
//! written by `pin record`, reviewed like code, loaded (and reloaded, keep
//! last good) with the policies.
//!
//! ```json
//! { "upstream": "demo",
//!   "spiffe_id": "spiffe://example.org/ns/mcp/sa/server",
//!   "tools": { "echo": { "hash": "sha256:…", "definition": { "name": "echo", … } } },
//!   "prompts": {},
//!   "resource_templates": {} }
//! ```
//!
//! A file is refused whole, with its name and the line, when it is not
//! strict JSON (duplicate keys included), has an unknown member, names an
//! upstream that is not configured or another SPIFFE ID than the
//! configured one, or holds an entry whose hash is not the canonical hash
//! of the definition beside it (a hand-edited definition cannot pass for
//! the reviewed one) or whose definition names another entry.
//!
//! Must never: load part of a file, or a pin bound to another workload.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::path::Path;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{PinKind, canonical};

/// File names end in this.
pub const SUFFIX: &str = ".pins.json";

/// Why a pin file or directory was refused.
#[derive(Debug, thiserror::Error)]
pub enum PinFileError {
    #[error("{file}: {message}")]
    File { file: String, message: String },
    #[error("{dir}: {message}")]
    Dir { dir: String, message: String },
}

/// One pinned definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pin {
    /// `sha256:<hex>` of the definition's canonical JSON.
    pub hash: String,
    /// The definition as recorded, for review and for `pin diff`.
    pub definition: Value,
}

/// The pins of one upstream, as in its file.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PinFile {
    pub upstream: String,
    pub spiffe_id: String,
    #[serde(default)]
    pub tools: Entries<ToolKey>,
    #[serde(default)]
    pub prompts: Entries<PromptKey>,
    #[serde(default)]
    pub resource_templates: Entries<TemplateKey>,
}

/// Which entry member names an entry, per kind (the key its map uses).
pub trait EntryKey {
    const KIND: PinKind;
}
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ToolKey;
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PromptKey;
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TemplateKey;
impl EntryKey for ToolKey {
    const KIND: PinKind = PinKind::Tool;
}
impl EntryKey for PromptKey {
    const KIND: PinKind = PinKind::Prompt;
}
impl EntryKey for TemplateKey {
    const KIND: PinKind = PinKind::Template;
}

/// The pins of one kind, by name; each checked as it is read, so an error
/// carries its line.
#[derive(Debug, Clone, PartialEq)]
pub struct Entries<K> {
    pub by_name: BTreeMap<String, Pin>,
    kind: PhantomData<K>,
}

impl<K> Default for Entries<K> {
    fn default() -> Self {
        Entries {
            by_name: BTreeMap::new(),
            kind: PhantomData,
        }
    }
}

impl<K> From<BTreeMap<String, Pin>> for Entries<K> {
    fn from(by_name: BTreeMap<String, Pin>) -> Self {
        Entries {
            by_name,
            kind: PhantomData,
        }
    }
}

impl<K> Serialize for Entries<K> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.by_name.serialize(s)
    }
}

impl<'de, K: EntryKey> Deserialize<'de> for Entries<K> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(EntriesVisitor::<K>(PhantomData))
    }
}

struct EntriesVisitor<K>(PhantomData<K>);

impl<'de, K: EntryKey> Visitor<'de> for EntriesVisitor<K> {
    type Value = Entries<K>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "an object of {} pins by name", K::KIND.label())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut by_name = BTreeMap::new();
        while let Some((name, pin)) = map.next_entry::<String, Pin>()? {
            check_pin(K::KIND, &name, &pin).map_err(de::Error::custom)?;
            by_name.insert(name, pin);
        }
        Ok(by_name.into())
    }
}

/// An entry's hash must be the canonical hash of its definition, and the
/// definition must name the entry.
fn check_pin(kind: PinKind, name: &str, pin: &Pin) -> Result<(), String> {
    let what = kind.label();
    if !canonical::is_hash(&pin.hash) {
        return Err(format!(
            "{what} {name:?}: hash must be \"sha256:\" and 64 lowercase hex digits"
        ));
    }
    let named = pin.definition.get(kind.entry_key()).and_then(Value::as_str);
    if named != Some(name) {
        return Err(format!(
            "{what} {name:?}: its definition's {:?} is {named:?}",
            kind.entry_key()
        ));
    }
    match canonical::hash(&pin.definition) {
        Some(h) if h == pin.hash => Ok(()),
        Some(h) => Err(format!(
            "{what} {name:?}: hash {} is not the hash of its definition ({h}); record the pins again, do not edit them",
            pin.hash
        )),
        None => Err(format!(
            "{what} {name:?}: definition cannot be canonicalised"
        )),
    }
}

impl PinFile {
    /// Parses one file's text strictly; `file` names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<PinFile, PinFileError> {
        let refuse = |message: String| PinFileError::File {
            file: file.to_owned(),
            message,
        };
        crate::mcp::check_json(text).map_err(|e| refuse(with_line(text, &e)))?;
        serde_json::from_str(text).map_err(|e| refuse(e.to_string()))
    }

    /// The pinned entry of `kind` named `name`.
    pub fn get(&self, kind: PinKind, name: &str) -> Option<&Pin> {
        self.entries(kind).get(name)
    }

    /// Every entry of one kind, by name.
    pub fn entries(&self, kind: PinKind) -> &BTreeMap<String, Pin> {
        match kind {
            PinKind::Tool => &self.tools.by_name,
            PinKind::Prompt => &self.prompts.by_name,
            PinKind::Template => &self.resource_templates.by_name,
        }
    }

    /// The same, to fill.
    pub fn entries_mut(&mut self, kind: PinKind) -> &mut BTreeMap<String, Pin> {
        match kind {
            PinKind::Tool => &mut self.tools.by_name,
            PinKind::Prompt => &mut self.prompts.by_name,
            PinKind::Template => &mut self.resource_templates.by_name,
        }
    }

    /// Pins `entry` (a listed definition) under its name. Returns `None`
    /// when it has no name, cannot be hashed, or its name cannot be a key of
    /// the file (one the strict reader refuses, so the file would not load).
    pub fn insert(&mut self, kind: PinKind, entry: Value) -> Option<()> {
        let name = entry.get(kind.entry_key())?.as_str()?.to_owned();
        if crate::mcp::is_reserved_key(&name) {
            return None;
        }
        let hash = canonical::hash(&entry)?;
        self.entries_mut(kind).insert(
            name,
            Pin {
                hash,
                definition: entry,
            },
        );
        Some(())
    }

    /// The file's text: pretty JSON, keys sorted, a final newline (stable
    /// for review in a diff).
    pub fn to_text(&self) -> String {
        let mut text = serde_json::to_string_pretty(self).unwrap_or_default();
        text.push('\n');
        text
    }

    /// The file name of an upstream's pins.
    pub fn file_name(upstream: &str) -> String {
        format!("{upstream}{SUFFIX}")
    }

    /// Reads and parses one file.
    pub fn read(path: &Path) -> Result<PinFile, PinFileError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| PinFileError::File {
            file: file.clone(),
            message: e.to_string(),
        })?;
        PinFile::parse(&file, &text)
    }
}

/// A strict-parse error with its line and column.
fn with_line(text: &str, e: &crate::mcp::ParseError) -> String {
    use crate::mcp::ParseError as P;
    let offset = match e {
        P::InvalidUtf8 { offset }
        | P::Syntax { offset, .. }
        | P::LoneSurrogate { offset }
        | P::DuplicateKey { offset, .. }
        | P::ReservedKey { offset, .. }
        | P::TooDeep { offset }
        | P::TrailingData { offset } => *offset,
        P::InvalidRequest { .. } => 0,
    };
    let before = text.get(..offset.min(text.len())).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    format!("{e} (line {line} column {column})")
}

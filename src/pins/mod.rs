//! Tool-definition pinning: what an upstream lists (tools, prompts,
//! resource templates) is compared, by canonical hash, with what was
//! reviewed and pinned for that upstream's SPIFFE ID.
//!
//! - [`canonical`]: the hash (RFC 8785 canonical JSON, SHA-256).
//! - [`file`]: pin files, one per upstream, strict.
//! - [`PinSet`]: every pin file of `policy.pins_dir`, loaded and reloaded
//!   with the policies (keep last good), so a request sees one snapshot.
//! - [`Observed`]: per upstream, the hash of each definition the gateway
//!   last saw it list, so a call is checked against what its upstream
//!   lists now (a tool never seen listed is checked against the pin file
//!   alone), and whether the upstream announced a list change since.
//!
//! Each upstream has a mode (`pins:` in its config): `off`, `audit` (a
//! mismatch is counted, audited and shown to policies as `context.pin`,
//! nothing is refused) or `enforce` (an unpinned or changed entry is taken
//! out of every list and a call to it is refused, -32070).
//!
//! Must never: let an entry pinned for one upstream or SPIFFE ID pass for
//! another, or call an entry pinned that was listed with another definition.

pub mod canonical;
pub mod diff;
pub mod file;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::Deserialize;

use crate::mcp::method::ListKind;
use file::{PinFile, PinFileError, SUFFIX};

/// What a pin covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PinKind {
    Tool,
    Prompt,
    Template,
}

impl PinKind {
    pub const ALL: [PinKind; 3] = [PinKind::Tool, PinKind::Prompt, PinKind::Template];

    /// As in audit details and errors.
    pub fn label(self) -> &'static str {
        match self {
            PinKind::Tool => "tool",
            PinKind::Prompt => "prompt",
            PinKind::Template => "resource template",
        }
    }

    /// The member that names an entry of this kind.
    pub fn entry_key(self) -> &'static str {
        self.list().entry_key()
    }

    /// The list that shows entries of this kind.
    pub fn list(self) -> ListKind {
        match self {
            PinKind::Tool => ListKind::Tools,
            PinKind::Prompt => ListKind::Prompts,
            PinKind::Template => ListKind::Templates,
        }
    }

    /// The kind a list shows; `resources/list` lists concrete resources,
    /// which are data, not definitions a model is told to use: not pinned.
    pub fn of_list(list: ListKind) -> Option<PinKind> {
        match list {
            ListKind::Tools => Some(PinKind::Tool),
            ListKind::Prompts => Some(PinKind::Prompt),
            ListKind::Templates => Some(PinKind::Template),
            ListKind::Resources => None,
        }
    }

    /// The kind a call uses: `tools/call` a tool, `prompts/get` a prompt.
    /// (`resources/read` names a URI, not a template: not checked.)
    pub fn of_call(method: &str) -> Option<PinKind> {
        match method {
            crate::mcp::method::TOOLS_CALL => Some(PinKind::Tool),
            crate::mcp::method::PROMPTS_GET => Some(PinKind::Prompt),
            _ => None,
        }
    }
}

/// The list a `notifications/*/list_changed` announces as changed.
/// (`notifications/resources/list_changed` covers templates too.)
pub fn list_changed(method: &str) -> Option<PinKind> {
    match method {
        "notifications/tools/list_changed" => Some(PinKind::Tool),
        "notifications/prompts/list_changed" => Some(PinKind::Prompt),
        "notifications/resources/list_changed" => Some(PinKind::Template),
        _ => None,
    }
}

/// `pins:` of an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PinMode {
    #[default]
    Off,
    Audit,
    Enforce,
}

/// How a definition stands against its pin (`context.pin`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinStatus {
    /// Pinned, and listed (or last listed) with the pinned definition.
    Pinned,
    /// Pinned, but listed with another definition.
    Changed,
    /// No pin for this name.
    Unpinned,
}

impl PinStatus {
    /// The status named `text` (as `context.pin` spells it).
    pub fn parse(text: &str) -> Result<PinStatus, String> {
        match text {
            "pinned" => Ok(PinStatus::Pinned),
            "changed" => Ok(PinStatus::Changed),
            "unpinned" => Ok(PinStatus::Unpinned),
            other => Err(format!("{other:?} is not pinned, changed or unpinned")),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PinStatus::Pinned => "pinned",
            PinStatus::Changed => "changed",
            PinStatus::Unpinned => "unpinned",
        }
    }
}

/// One definition checked against its pin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub status: PinStatus,
    /// The pinned hash, if any.
    pub pinned: Option<String>,
    /// The hash of the definition listed, if one was seen.
    pub listed: Option<String>,
}

impl Check {
    /// What an audit record says of a mismatch.
    pub fn detail(&self, kind: PinKind, name: &str) -> String {
        let none = "none";
        format!(
            "{} {name:?} is {}: pinned {}, listed {}",
            kind.label(),
            self.status.as_str(),
            self.pinned.as_deref().unwrap_or(none),
            self.listed.as_deref().unwrap_or(none),
        )
    }
}

/// Every pin file of the pins directory, by upstream name.
#[derive(Debug, Default)]
pub struct PinSet {
    by_upstream: HashMap<String, PinFile>,
}

impl PinSet {
    /// Reads every `*.pins.json` of `dir`. `upstreams` are the configured
    /// (name, SPIFFE ID) pairs each file must name. Hidden entries (`.x`,
    /// as Kubernetes' `..data`) are skipped; any other file is an error.
    pub fn load_dir(dir: &Path, upstreams: &[(String, String)]) -> Result<PinSet, PinFileError> {
        let refuse = |message: String| PinFileError::Dir {
            dir: dir.display().to_string(),
            message,
        };
        let entries = std::fs::read_dir(dir).map_err(|e| refuse(e.to_string()))?;
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| refuse(e.to_string()))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || entry.path().is_dir() {
                continue;
            }
            if !name.ends_with(SUFFIX) {
                return Err(refuse(format!(
                    "{name}: not a pin file (they end in {SUFFIX})"
                )));
            }
            names.push(name);
        }
        names.sort();
        let mut set = PinSet::default();
        for name in names {
            let path = dir.join(&name);
            let file = PinFile::read(&path)?;
            check_binding(&name, &file, upstreams).map_err(|message| PinFileError::File {
                file: path.display().to_string(),
                message,
            })?;
            set.by_upstream.insert(file.upstream.clone(), file);
        }
        Ok(set)
    }

    /// The pins of one upstream.
    pub fn of(&self, upstream: &str) -> Option<&PinFile> {
        self.by_upstream.get(upstream)
    }

    /// Pinned entries in all.
    pub fn len(&self) -> usize {
        self.by_upstream
            .values()
            .map(|f| {
                PinKind::ALL
                    .iter()
                    .map(|k| f.entries(*k).len())
                    .sum::<usize>()
            })
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A file is named after the upstream it names, which must be configured
/// with the SPIFFE ID the pins were recorded for.
fn check_binding(name: &str, file: &PinFile, upstreams: &[(String, String)]) -> Result<(), String> {
    if name != PinFile::file_name(&file.upstream) {
        return Err(format!(
            "names upstream {:?}; its file must be {}",
            file.upstream,
            PinFile::file_name(&file.upstream)
        ));
    }
    match upstreams.iter().find(|(n, _)| *n == file.upstream) {
        None => Err(format!("upstream {:?} is not configured", file.upstream)),
        Some((_, id)) if *id != file.spiffe_id => Err(format!(
            "pins were recorded for {}, but upstream {:?} is {id}; record them again",
            file.spiffe_id, file.upstream
        )),
        Some(_) => Ok(()),
    }
}

/// Unpinned definitions remembered as already audited, per upstream; past
/// this the memory is cleared (they are audited again rather than the set
/// growing with whatever names an upstream invents).
const MAX_REPORTED: usize = 4096;

/// What one upstream has been seen to list, across callers and sessions.
#[derive(Default)]
pub struct Observed {
    seen: Mutex<Seen>,
    /// Set by `notifications/*/list_changed`: the lists are re-read before
    /// the next call is let through.
    stale: [AtomicBool; 3],
    /// One re-read at a time.
    reread: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct Seen {
    /// (kind, name) -> hash of the definition last listed, for pinned names
    /// only: bounded by the pin file (any other name is unpinned whatever
    /// was listed).
    /// Indexed by `PinKind as usize`, so a call looks its name up without
    /// allocating a key.
    pinned: [HashMap<String, String>; 3],
    /// (kind, name, hash) of unpinned definitions already audited.
    reported: HashSet<(PinKind, String, String)>,
}

impl Observed {
    /// Checks a listed definition against `pins` and remembers it. Returns
    /// the check, and whether this mismatch is new (not the definition last
    /// seen under that name): each mismatch is audited once, not per list.
    pub fn listed(
        &self,
        pins: Option<&PinFile>,
        kind: PinKind,
        name: &str,
        entry: &serde_json::Value,
    ) -> (Check, bool) {
        let listed = canonical::hash(entry);
        let pinned = pins.and_then(|p| p.get(kind, name)).map(|p| p.hash.clone());
        let status = match (&pinned, &listed) {
            (None, _) => PinStatus::Unpinned,
            (Some(p), Some(l)) if p == l => PinStatus::Pinned,
            (Some(_), _) => PinStatus::Changed,
        };
        let new = {
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            let hash = listed.clone().unwrap_or_default();
            if pinned.is_some() {
                let last = seen.pinned[kind as usize].insert(name.to_owned(), hash.clone());
                last.as_deref() != Some(hash.as_str())
            } else {
                if seen.reported.len() >= MAX_REPORTED {
                    seen.reported.clear();
                }
                seen.reported.insert((kind, name.to_owned(), hash))
            }
        };
        let check = Check {
            status,
            pinned,
            listed,
        };
        (check, new)
    }

    /// Checks a call of `name` against `pins` and what was last listed
    /// under that name (the pin file alone when it was never listed).
    pub fn called(&self, pins: Option<&PinFile>, kind: PinKind, name: &str) -> Check {
        let pinned = pins.and_then(|p| p.get(kind, name)).map(|p| p.hash.clone());
        let listed = self.seen.lock().unwrap_or_else(|e| e.into_inner()).pinned[kind as usize]
            .get(name)
            .cloned();
        let status = match (&pinned, &listed) {
            (None, _) => PinStatus::Unpinned,
            (Some(_), None) => PinStatus::Pinned,
            (Some(p), Some(l)) if p == l => PinStatus::Pinned,
            (Some(_), Some(_)) => PinStatus::Changed,
        };
        Check {
            status,
            pinned,
            listed,
        }
    }

    /// The upstream announced that a list changed.
    pub fn mark_stale(&self, kind: PinKind) {
        self.stale[kind as usize].store(true, Ordering::Release);
    }

    /// Whether that list must be re-read before the next call.
    pub fn is_stale(&self, kind: PinKind) -> bool {
        self.stale[kind as usize].load(Ordering::Acquire)
    }

    /// The list was re-read.
    pub fn clear_stale(&self, kind: PinKind) {
        self.stale[kind as usize].store(false, Ordering::Release);
    }

    /// Held while a list is re-read: calls wait for it instead of passing
    /// on what was seen before the change.
    pub async fn rereading(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.reread.lock().await
    }
}

#[cfg(test)]
mod tests;

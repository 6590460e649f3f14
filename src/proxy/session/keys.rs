//! The keys that seal session ids (`sessions.keys_file`).
//!
//! Every replica that holds the same keys can open every session id any of
//! them sealed, so a session is valid on any replica with no shared store.
//! The file lists one key per line, `<id> <base64 of 32 bytes>`; the last
//! key seals, every listed key opens. A rotation appends a key, and once
//! every replica has read it and the old sessions have ended, removes the
//! oldest. A session sealed with a key that is no longer listed is refused.
//!
//! Without `keys_file` the process draws one key of its own at start, said
//! so in the log: its sessions are valid on this process only, and end with
//! it. A configured file that is missing or malformed stops the start; a
//! reload that fails keeps the keys in use. Never: a random key silently in
//! place of a configured file, or key material in a log line.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::aead::{CHACHA20_POLY1305, LessSafeKey, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::metrics::Metrics;

/// Bytes of a ChaCha20-Poly1305 key.
pub const KEY_BYTES: usize = 32;
/// Longest key id.
const MAX_KEY_ID: usize = 32;
/// Most keys in one file: a rotation needs two or three.
const MAX_KEYS: usize = 16;

/// Why a key file cannot be used; each names the file and line.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyFileError {
    #[error("{0}: cannot be read: {1}")]
    Unreadable(String, String),
    #[error("{0}: no key: write one line `<id> <base64 of 32 random bytes>`")]
    Empty(String),
    #[error("{0}:{1}: expected `<id> <base64 of 32 bytes>`")]
    Shape(String, usize),
    #[error("{0}:{1}: key id {2:?}: use 1 to 32 of A-Z a-z 0-9 . _ -")]
    BadId(String, usize, String),
    #[error("{0}:{1}: key id {2:?} is listed twice")]
    DuplicateId(String, usize, String),
    #[error("{0}:{1}: the key is not base64")]
    NotBase64(String, usize),
    #[error("{0}:{1}: the key is {2} bytes; it must be exactly 32 (random)")]
    Length(String, usize, usize),
    #[error("{0}: more than 16 keys")]
    TooMany(String),
}

/// One key, by its id.
pub struct Key {
    pub id: Arc<str>,
    pub(super) aead: LessSafeKey,
}

/// The keys in use: the last seals.
pub struct Ring {
    pub keys: Vec<Key>,
}

impl Ring {
    /// The key that seals new sessions.
    pub fn sealing(&self) -> &Key {
        // A ring is never empty: `parse` refuses an empty file and
        // `random` makes one key.
        &self.keys[self.keys.len() - 1]
    }

    pub fn get(&self, id: &[u8]) -> Option<&Key> {
        self.keys.iter().find(|k| k.id.as_bytes() == id)
    }

    pub fn ids(&self) -> Vec<&str> {
        self.keys.iter().map(|k| &*k.id).collect()
    }

    /// One random key of this process's own.
    fn random(rng: &SystemRandom) -> Option<Ring> {
        let mut bytes = [0u8; KEY_BYTES];
        rng.fill(&mut bytes).ok()?;
        let key = key("process", &bytes)?;
        Some(Ring { keys: vec![key] })
    }
}

fn key(id: &str, bytes: &[u8]) -> Option<Key> {
    let unbound = UnboundKey::new(&CHACHA20_POLY1305, bytes).ok()?;
    Some(Key {
        id: Arc::from(id),
        aead: LessSafeKey::new(unbound),
    })
}

/// The key ring shared by every session table, swapped whole on a reload.
pub struct SessionKeys {
    ring: ArcSwap<Ring>,
    /// The configured file; `None`: one key of this process's own.
    file: Option<PathBuf>,
    pub(super) rng: SystemRandom,
}

impl SessionKeys {
    /// The keys of `file`, or one of this process's own without it.
    pub fn load(file: Option<&Path>) -> Result<SessionKeys, KeyFileError> {
        let rng = SystemRandom::new();
        let ring = match file {
            Some(path) => read(path)?,
            None => Ring::random(&rng).ok_or_else(|| {
                KeyFileError::Unreadable("session key".into(), "no randomness".into())
            })?,
        };
        Ok(SessionKeys {
            ring: ArcSwap::from_pointee(ring),
            file: file.map(Path::to_path_buf),
            rng,
        })
    }

    /// Whether the keys come from a file other replicas may share. With a
    /// key of the process's own, a session is known only here.
    pub fn shared(&self) -> bool {
        self.file.is_some()
    }

    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    pub fn current(&self) -> arc_swap::Guard<Arc<Ring>> {
        self.ring.load()
    }

    /// Reads the file again and swaps its keys in; on an error the keys in
    /// use stay. Returns the ids now in use.
    pub fn reload(&self) -> Result<Vec<String>, KeyFileError> {
        let Some(path) = &self.file else {
            return Ok(self
                .current()
                .ids()
                .into_iter()
                .map(str::to_owned)
                .collect());
        };
        let ring = read(path)?;
        let ids = ring.ids().into_iter().map(str::to_owned).collect();
        self.ring.store(Arc::new(ring));
        Ok(ids)
    }
}

fn read(path: &Path) -> Result<Ring, KeyFileError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| KeyFileError::Unreadable(name.clone(), e.to_string()))?;
    parse(&name, &text)
}

/// Parses a key file's text; `name` is what errors call it.
pub fn parse(name: &str, text: &str) -> Result<Ring, KeyFileError> {
    let mut keys: Vec<Key> = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line_no = index + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_whitespace();
        let (Some(id), Some(material), None) = (fields.next(), fields.next(), fields.next()) else {
            return Err(KeyFileError::Shape(name.into(), line_no));
        };
        let id_ok = !id.is_empty()
            && id.len() <= MAX_KEY_ID
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !id_ok {
            return Err(KeyFileError::BadId(name.into(), line_no, id.into()));
        }
        if keys.iter().any(|k| &*k.id == id) {
            return Err(KeyFileError::DuplicateId(name.into(), line_no, id.into()));
        }
        let bytes = STANDARD
            .decode(material)
            .map_err(|_| KeyFileError::NotBase64(name.into(), line_no))?;
        if bytes.len() != KEY_BYTES {
            return Err(KeyFileError::Length(name.into(), line_no, bytes.len()));
        }
        if keys.len() == MAX_KEYS {
            return Err(KeyFileError::TooMany(name.into()));
        }
        // 32 bytes is exactly the key length ChaCha20-Poly1305 takes.
        keys.extend(key(id, &bytes));
    }
    if keys.is_empty() {
        return Err(KeyFileError::Empty(name.into()));
    }
    Ok(Ring { keys })
}

impl SessionKeys {
    /// Reads the key file again on SIGHUP and whenever its bytes change
    /// (looked at every `every`), until shutdown. A file that cannot be
    /// used is logged and counted, and the keys in use stay.
    pub async fn watch(
        self: Arc<Self>,
        every: Duration,
        metrics: Metrics,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let Some(path) = self.file.clone() else {
            return;
        };
        let mut hangup = signal(SignalKind::hangup())
            .map_err(|e| warn!(error = %e, "cannot listen for SIGHUP; the session keys file is re-read when it changes"))
            .ok();
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut seen = std::fs::read(&path).ok();
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let now = std::fs::read(&path).ok();
                    if now == seen {
                        continue;
                    }
                    seen = now;
                }
                Some(()) = async { hangup.as_mut()?.recv().await }, if hangup.is_some() => {}
                _ = shutdown.changed() => return,
            }
            match self.reload() {
                Ok(ids) => {
                    metrics.session_key_reload(true);
                    info!(keys = ?ids, "sessions: keys file read; the last key seals");
                }
                Err(e) => {
                    metrics.session_key_reload(false);
                    error!(error = %e, "sessions: keys file refused; the keys in use stay");
                }
            }
        }
    }
}

//! What changed between pinned definitions and live ones: entries added,
//! removed and changed, and for a changed one each member that differs
//! (as a path into the definition, with the old and new values), so a
//! reviewer reads the change instead of two hashes.
//!
//! Must never: report two definitions with the same hash as changed, or
//! two with different hashes as the same.

use std::fmt::Write as _;

use serde_json::Value;

use super::PinKind;
use super::file::PinFile;

/// One entry that differs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub kind: PinKind,
    pub name: String,
    pub what: What,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum What {
    /// Listed, not pinned.
    Added,
    /// Pinned, no longer listed.
    Removed,
    /// Listed with another definition: the members that differ.
    Changed(Vec<Field>),
}

/// One member that differs, `/`-separated path from the definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub path: String,
    /// Compact JSON; `None` where the member is absent.
    pub old: Option<String>,
    pub new: Option<String>,
}

/// The differences from `pinned` to `live`, by kind then name.
pub fn diff(pinned: &PinFile, live: &PinFile) -> Vec<Change> {
    let mut changes = Vec::new();
    for kind in PinKind::ALL {
        let (old, new) = (pinned.entries(kind), live.entries(kind));
        let names: std::collections::BTreeSet<&String> = old.keys().chain(new.keys()).collect();
        for name in names {
            let what = match (old.get(name), new.get(name)) {
                (None, Some(_)) => What::Added,
                (Some(_), None) => What::Removed,
                (Some(a), Some(b)) if a.hash != b.hash => {
                    let mut fields = Vec::new();
                    fields_between(&a.definition, &b.definition, String::new(), &mut fields);
                    What::Changed(fields)
                }
                _ => continue,
            };
            changes.push(Change {
                kind,
                name: name.clone(),
                what,
            });
        }
    }
    changes
}

/// The members that differ between two values, recursing into objects
/// (arrays and scalars are compared whole).
fn fields_between(old: &Value, new: &Value, path: String, out: &mut Vec<Field>) {
    if let (Value::Object(a), Value::Object(b)) = (old, new) {
        let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
        for key in keys {
            let sub = format!("{path}/{key}");
            match (a.get(key), b.get(key)) {
                (Some(x), Some(y)) => fields_between(x, y, sub, out),
                (x, y) => out.push(Field {
                    path: sub,
                    old: x.map(compact),
                    new: y.map(compact),
                }),
            }
        }
        return;
    }
    if super::canonical::hash(old) != super::canonical::hash(new) {
        out.push(Field {
            path: if path.is_empty() {
                "/".to_owned()
            } else {
                path
            },
            old: Some(compact(old)),
            new: Some(compact(new)),
        });
    }
}

/// Canonical (RFC 8785) text: keys sorted, so a diff reads the same
/// whatever order the upstream wrote them in.
fn compact(v: &Value) -> String {
    serde_json_canonicalizer::to_string(v).unwrap_or_default()
}

/// The changes as text for a terminal or a review comment.
pub fn render(changes: &[Change]) -> String {
    let mut out = String::new();
    for c in changes {
        let _ = match &c.what {
            What::Added => writeln!(out, "{} {:?}: added (not pinned)", c.kind.label(), c.name),
            What::Removed => writeln!(
                out,
                "{} {:?}: removed (pinned, no longer listed)",
                c.kind.label(),
                c.name
            ),
            What::Changed(fields) => {
                let _ = writeln!(out, "{} {:?}: changed", c.kind.label(), c.name);
                for f in fields {
                    let absent = "(absent)";
                    let _ = writeln!(
                        out,
                        "  {}: {} -> {}",
                        f.path,
                        f.old.as_deref().unwrap_or(absent),
                        f.new.as_deref().unwrap_or(absent)
                    );
                }
                Ok(())
            }
        };
    }
    out
}

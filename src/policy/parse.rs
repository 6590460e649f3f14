//! Parsing the policy files: each policy re-identified by its `@id`, a
//! large file cut into parts parsed on several threads.
//!
//! Runs at load, never on the request path. Cedar's parser is most of the
//! cost of loading a large set (about 30 us a policy) and reads one policy
//! at a time, so a file is cut after a policy's closing `;` (one outside
//! strings and comments, the only place where Cedar allows one) and the
//! parts are parsed apart. The parts' policies are then checked in file
//! order, one file after the other, as one would check them whole: unique
//! `@id`s, canonical workload ids.
//!
//! Must give the same policies in the same order, and the same first
//! error at the same file and line, as parsing each file whole, one after
//! the other: a file a part of which does not parse (or holds a template)
//! is parsed again whole, and its error is the whole file's.

use std::collections::HashMap;
use std::ops::Range;
use std::str::FromStr;

use cedar_policy::{Policy, PolicyId, PolicySet};

use super::PolicyError;
use super::load::{SourceFile, line_column, line_of, primary_location};
use super::parallel::run;

/// One policy, re-identified by its `@id`, as the caller's `finish` made
/// it (see [`parse_files`]), and where it came from.
pub(super) struct LoadedPolicy<P> {
    pub(super) parsed: P,
    /// Its file, in the list given to [`parse_files`].
    pub(super) file: usize,
    /// Where the text Cedar parsed it from starts in the file: the
    /// policy's source locations count from there.
    pub(super) base: usize,
}

/// How the work is cut: on how many threads, in parts of about how many
/// bytes of a file.
#[derive(Debug, Clone, Copy)]
pub(super) struct Parallelism {
    pub(super) threads: usize,
    pub(super) min_part: usize,
}

/// A policy of a part, in file order, with the checks that need no other
/// policy done.
struct Item<P> {
    /// Where its text starts in the file (for its line).
    offset: usize,
    checked: Checked<P>,
}

enum Checked<P> {
    MissingId,
    Id {
        id: String,
        /// The canonical-workload-id check.
        workload: Result<(), String>,
        policy: P,
    },
}

/// The policies of one part; after one with a problem, none.
type Part<P> = Result<Vec<Item<P>>, PolicyError>;

impl Parallelism {
    /// As many threads as the machine has, taking parts of 32 KiB
    /// (about 250 policies) in turn. Cedar holds a part's whole syntax
    /// tree at once, some hundred times the text: in small parts it fits
    /// in memory the allocator has just freed, where parts of 256 KiB
    /// made a fifth of the parse the kernel zeroing fresh pages.
    pub(super) fn of_machine() -> Parallelism {
        Parallelism {
            threads: super::parallel::threads(),
            min_part: 32 * 1024,
        }
    }

    /// How many parts to cut `text` into.
    fn parts(&self, text: &str) -> usize {
        (text.len() / self.min_part.max(1)).max(1)
    }
}

/// The policies of `files`, in file order. Each part's policies, in
/// order, are given to `finish` on the thread that parsed them, which
/// makes of each what the caller keeps (and frees there what it does not);
/// it must give back one for each.
pub(super) fn parse_files<P, F>(
    files: &[&SourceFile],
    parallelism: Parallelism,
    finish: F,
) -> Result<Vec<LoadedPolicy<P>>, PolicyError>
where
    P: Send,
    F: Fn(Vec<Policy>) -> Vec<P> + Sync,
{
    let tasks: Vec<(usize, Range<usize>)> = files
        .iter()
        .enumerate()
        .flat_map(|(i, f)| cut(&f.text, parallelism.parts(&f.text)).map(move |r| (i, r)))
        .collect();
    let mut parts = run(&tasks, parallelism.threads, |(file, range)| {
        parse_part(files[*file], range.clone(), &finish)
    })
    .into_iter();
    let mut tasks = tasks.iter().peekable();
    let mut checks = Checks::default();
    for (index, file) in files.iter().enumerate() {
        let mut mine = Vec::new();
        while let Some((_, range)) = tasks.next_if(|(f, _)| *f == index) {
            mine.push((range.start, parts.next().flatten()));
        }
        if mine.iter().any(|(_, part)| !matches!(part, Some(Ok(_)))) {
            // Whole, for the whole file's first error.
            mine = vec![(0, Some(parse_part(file, 0..file.text.len(), &finish)))];
        }
        let mut position = 0;
        for (base, part) in mine {
            let items = part.unwrap_or_else(|| Ok(Vec::new()))?;
            for item in items {
                position += 1;
                checks.check(files, index, base, position, item)?;
            }
        }
    }
    Ok(checks.loaded)
}

/// `text` cut into at most `count` parts of about the same size, each
/// but the last ending after a policy's `;`.
pub(super) fn cut(text: &str, count: usize) -> impl Iterator<Item = Range<usize>> {
    let mut ends = policy_ends(text).into_iter();
    let mut start = 0;
    let mut cuts = Vec::with_capacity(count);
    for k in 1..count {
        let target = text.len() * k / count;
        if let Some(end) = ends.find(|&end| end >= target && end > start) {
            cuts.push(start..end);
            start = end;
        }
    }
    cuts.push(start..text.len());
    cuts.into_iter()
}

/// The offsets just after each `;` outside string literals and `//`
/// comments: where a policy ends.
fn policy_ends(text: &str) -> Vec<usize> {
    enum State {
        Code,
        String { escaped: bool },
        Comment,
    }
    let mut state = State::Code;
    let mut ends = Vec::new();
    let bytes = text.as_bytes();
    for (at, &byte) in bytes.iter().enumerate() {
        state = match (state, byte) {
            (State::Code, b';') => {
                ends.push(at + 1);
                State::Code
            }
            (State::Code, b'"') => State::String { escaped: false },
            (State::Code, b'/') if bytes.get(at + 1) == Some(&b'/') => State::Comment,
            (State::Code, _) => State::Code,
            (State::String { escaped: false }, b'"') => State::Code,
            (State::String { escaped }, b) => State::String {
                escaped: !escaped && b == b'\\',
            },
            (State::Comment, b'\n') => State::Code,
            (State::Comment, _) => State::Comment,
        };
    }
    ends
}

/// The policies of `file[range]` in file order, each with the checks
/// that need no other policy; refused if the part does not parse or holds
/// a template.
fn parse_part<P>(
    file: &SourceFile,
    range: Range<usize>,
    finish: &(impl Fn(Vec<Policy>) -> Vec<P> + Sync),
) -> Part<P> {
    let base = range.start;
    let set = parse_set(file, range)?;
    // Lines are found by searching each policy's text after the previous one.
    let mut cursor = base;
    let mut items = Vec::new();
    let mut policies = Vec::new();
    for policy in in_file_order(&set) {
        let text = policy.to_string();
        let offset = file
            .text
            .get(cursor..)
            .and_then(|rest| rest.find(&text))
            .map_or(cursor, |at| cursor + at);
        cursor = offset + text.len();
        let checked = match id_of(policy) {
            Some(id) if !id.trim().is_empty() => {
                policies.push(policy.new_id(PolicyId::new(id)));
                Checked::Id {
                    id: id.to_owned(),
                    workload: check_workload_ids(policy),
                    policy: (),
                }
            }
            _ => Checked::MissingId,
        };
        let last = !matches!(
            checked,
            Checked::Id {
                workload: Ok(()),
                ..
            }
        );
        items.push(Item { offset, checked });
        if last {
            break;
        }
    }
    drop(set);
    let count = policies.len();
    attach(items, finish(policies), count)
}

/// The policy set of `file[range]`; refused if it does not parse or holds
/// a template.
fn parse_set(file: &SourceFile, range: Range<usize>) -> Result<PolicySet, PolicyError> {
    let base = range.start;
    let text = file.text.get(range).unwrap_or_default();
    let set = PolicySet::from_str(text).map_err(|e| {
        let (line, column) = primary_location(&e, &file.text, base).unwrap_or((1, 1));
        PolicyError::Syntax {
            file: file.name.clone(),
            line,
            column,
            message: e.to_string(),
        }
    })?;
    if let Some(template) = set.templates().next() {
        return Err(PolicyError::Template {
            file: file.name.clone(),
            line: line_of(&file.text, &template.to_string()),
            id: template.annotation("id").unwrap_or_default().to_owned(),
        });
    }
    Ok(set)
}

/// `items` with the policies `finish` made of theirs, in order; refused
/// unless there is exactly one for each of the `count` items with an id.
fn attach<P>(items: Vec<Item<()>>, finished: Vec<P>, count: usize) -> Part<P> {
    let lost = || PolicyError::Index {
        message: "policy parsing lost a policy".to_owned(),
    };
    if finished.len() != count {
        return Err(lost());
    }
    let mut finished = finished.into_iter();
    items
        .into_iter()
        .map(|item| {
            let checked = match item.checked {
                Checked::MissingId => Checked::MissingId,
                Checked::Id { id, workload, .. } => Checked::Id {
                    id,
                    workload,
                    policy: finished.next().ok_or_else(lost)?,
                },
            };
            Ok(Item {
                offset: item.offset,
                checked,
            })
        })
        .collect()
}

/// The checks across policies, in file order.
struct Checks<P> {
    loaded: Vec<LoadedPolicy<P>>,
    /// Each `@id` seen so far, and its file.
    first_file: HashMap<String, usize>,
}

impl<P> Default for Checks<P> {
    fn default() -> Self {
        Checks {
            loaded: Vec::new(),
            first_file: HashMap::new(),
        }
    }
}

impl<P> Checks<P> {
    /// Checks policy number `position` (from 1) of file `index`, parsed
    /// from the text at `base`, and keeps it.
    fn check(
        &mut self,
        files: &[&SourceFile],
        index: usize,
        base: usize,
        position: usize,
        item: Item<P>,
    ) -> Result<(), PolicyError> {
        let file = files[index];
        let line = || line_column(&file.text, item.offset).0;
        let (id, workload, policy) = match item.checked {
            Checked::MissingId => {
                return Err(PolicyError::MissingId {
                    file: file.name.clone(),
                    line: line(),
                    index: position,
                });
            }
            Checked::Id {
                id,
                workload,
                policy,
            } => (id, workload, policy),
        };
        if let Some(&first) = self.first_file.get(&id) {
            return Err(PolicyError::DuplicateId {
                file: file.name.clone(),
                line: line(),
                id,
                first_file: files[first].name.clone(),
            });
        }
        if let Err(message) = workload {
            return Err(PolicyError::WorkloadId {
                file: file.name.clone(),
                line: line(),
                id,
                message,
            });
        }
        self.first_file.insert(id, index);
        self.loaded.push(LoadedPolicy {
            parsed: policy,
            file: index,
            base,
        });
        Ok(())
    }
}

/// The `@id` annotation: `Policy::annotation` would parse the key with
/// Cedar's parser on every call, a tenth of the cost of loading.
fn id_of(policy: &Policy) -> Option<&str> {
    policy
        .annotations()
        .find_map(|(key, value)| (key == "id").then_some(value))
}

/// `policies()` is in no particular order; errors are reported in file
/// order (Cedar numbers them `policy0`, `policy1`, ... as written).
fn in_file_order(set: &PolicySet) -> Vec<&Policy> {
    let mut policies: Vec<&Policy> = set.policies().collect();
    policies.sort_by_key(|p| {
        p.id()
            .to_string()
            .trim_start_matches("policy")
            .parse::<usize>()
            .unwrap_or(0)
    });
    policies
}

/// Every `Mcp::Workload` a policy names is a workload's SPIFFE ID in
/// canonical form: principals are matched byte for byte, so one written
/// `spiffe://EXAMPLE.ORG/...` would silently never apply.
fn check_workload_ids(policy: &Policy) -> Result<(), String> {
    for uid in policy.entity_literals() {
        if uid.type_name().to_string() == "Mcp::Workload" {
            crate::identity::spiffe_id::workload(uid.id().unescaped())
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

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
use std::sync::atomic::{AtomicUsize, Ordering};

use cedar_policy::{Policy, PolicyId, PolicySet};

use super::PolicyError;
use super::load::{SourceFile, line_column, line_of, primary_location};

/// One policy, re-identified by its `@id`, and where it came from.
pub(super) struct LoadedPolicy {
    pub(super) policy: Policy,
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
struct Item {
    /// Where its text starts in the file (for its line).
    offset: usize,
    checked: Checked,
}

enum Checked {
    MissingId,
    Id {
        id: String,
        /// The canonical-workload-id check.
        workload: Result<(), String>,
        policy: Box<Policy>,
    },
}

/// The policies of one part; after one with a problem, none.
type Part = Result<Vec<Item>, PolicyError>;

impl Parallelism {
    /// As many threads as the machine has, taking parts of 256 KiB
    /// (about 2,000 policies) in turn: less is not worth a thread, and
    /// more makes Cedar hold a larger syntax tree at once (100,000
    /// policies parsed whole peak at 1.4 GB, in such parts at 0.5 GB).
    pub(super) fn of_machine() -> Parallelism {
        Parallelism {
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            min_part: 256 * 1024,
        }
    }

    /// How many parts to cut `text` into.
    fn parts(&self, text: &str) -> usize {
        (text.len() / self.min_part.max(1)).max(1)
    }
}

/// The policies of `files`, in file order.
pub(super) fn parse_files(
    files: &[&SourceFile],
    parallelism: Parallelism,
) -> Result<Vec<LoadedPolicy>, PolicyError> {
    let tasks: Vec<(usize, Range<usize>)> = files
        .iter()
        .enumerate()
        .flat_map(|(i, f)| cut(&f.text, parallelism.parts(&f.text)).map(move |r| (i, r)))
        .collect();
    let mut parts = run(&tasks, parallelism.threads, |(file, range)| {
        parse_part(files[*file], range.clone())
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
            mine = vec![(0, Some(parse_part(file, 0..file.text.len())))];
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

/// Runs `work` on every task, on up to `threads` threads; a task whose
/// thread panicked has no result.
fn run<T, W>(tasks: &[T], threads: usize, work: W) -> Vec<Option<Part>>
where
    T: Sync,
    W: Fn(&T) -> Part + Sync,
{
    let threads = threads.min(tasks.len());
    if threads <= 1 {
        return tasks.iter().map(|task| Some(work(task))).collect();
    }
    let next = AtomicUsize::new(0);
    let done: Vec<Vec<(usize, Part)>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let at = next.fetch_add(1, Ordering::Relaxed);
                        let Some(task) = tasks.get(at) else { break };
                        done.push((at, work(task)));
                    }
                    done
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|worker| worker.join().unwrap_or_default())
            .collect()
    });
    let mut results: Vec<Option<Part>> = tasks.iter().map(|_| None).collect();
    for (task, part) in done.into_iter().flatten() {
        results[task] = Some(part);
    }
    results
}

/// The policies of `file[range]` in file order, each with the checks
/// that need no other policy; refused if the part does not parse or holds
/// a template.
fn parse_part(file: &SourceFile, range: Range<usize>) -> Part {
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
    // Lines are found by searching each policy's text after the previous one.
    let mut cursor = base;
    let mut items = Vec::new();
    for policy in in_file_order(&set) {
        let text = policy.to_string();
        let offset = file
            .text
            .get(cursor..)
            .and_then(|rest| rest.find(&text))
            .map_or(cursor, |at| cursor + at);
        cursor = offset + text.len();
        let checked = match id_of(policy) {
            Some(id) if !id.trim().is_empty() => Checked::Id {
                id: id.to_owned(),
                workload: check_workload_ids(policy),
                policy: Box::new(policy.new_id(PolicyId::new(id))),
            },
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
    Ok(items)
}

/// The checks across policies, in file order.
#[derive(Default)]
struct Checks {
    loaded: Vec<LoadedPolicy>,
    /// Each `@id` seen so far, and its file.
    first_file: HashMap<String, usize>,
}

impl Checks {
    /// Checks policy number `position` (from 1) of file `index`, parsed
    /// from the text at `base`, and keeps it.
    fn check(
        &mut self,
        files: &[&SourceFile],
        index: usize,
        base: usize,
        position: usize,
        item: Item,
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
            policy: *policy,
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

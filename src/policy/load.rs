//! Loading a policy directory into an indexed [`PolicyEngine`].
//!
//! Runs at start and on reload, never on the request path. It must never
//! accept a policy set it cannot vouch for: the schema must parse, every
//! policy must parse, carry a unique `@id` and pass strict validation, or
//! the whole load fails with an error naming the file.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::Path;
use std::str::FromStr;

use cedar_policy::{
    EntityTypeName, Policy, PolicyId, PolicySet, Schema, ValidationMode, ValidationResult,
    ValidationWarning, Validator,
};
use miette::Diagnostic;
use ring::digest::{Context, SHA256};

use super::build::{self, Build, Keep, Parsed};
use super::index::Rule;
use super::parallel;
use super::parse::{LoadedPolicy, Parallelism, parse_files};
use super::request::EntityTypes;
use super::{PolicyEngine, PolicyError};

const SCHEMA_EXT: &str = "cedarschema";
const POLICY_EXT: &str = "cedar";

/// A file of the policy directory: its name and text.
pub(super) struct SourceFile {
    pub(super) name: String,
    pub(super) text: String,
}

pub(super) fn load_dir(dir: &Path) -> Result<PolicyEngine, PolicyError> {
    load_dir_with(dir, Parallelism::of_machine())
}

/// [`load_dir`], with the files parsed in parts as `parallelism` says.
pub(super) fn load_dir_with(
    dir: &Path,
    parallelism: Parallelism,
) -> Result<PolicyEngine, PolicyError> {
    let files = read_dir(dir)?;
    let version = version(&files);
    let (schema_file, policy_files): (Vec<&SourceFile>, Vec<&SourceFile>) = files
        .iter()
        .partition(|f| f.name.ends_with(&format!(".{SCHEMA_EXT}")));
    let schema_file = match schema_file.as_slice() {
        [] => {
            return Err(PolicyError::NoSchema {
                dir: dir.display().to_string(),
            });
        }
        [one] => *one,
        several => {
            let files = several
                .iter()
                .map(|f| f.name.as_str())
                .collect::<Vec<_>>()
                .join(", ");
            return Err(PolicyError::SeveralSchemas {
                dir: dir.display().to_string(),
                files,
            });
        }
    };
    let schema = parse_schema(schema_file)?;
    let types = entity_types(&schema, &schema_file.name)?;
    let (mut actions, methods) = build::actions(&schema, &types)?;
    let build = Build::new(&schema, &types, &methods);
    let parse = |keep| parse_files(&policy_files, parallelism, |part| build.part(part, keep));
    let mut loaded = parse(Keep::OnePerShape)?;
    if !shapes_are_clean(&schema, &loaded)? {
        if loaded.iter().any(|p| p.parsed.kept.is_none()) {
            loaded = parse(Keep::All)?;
        }
        validate_all(&schema, &schema_file.name, &loaded, &policy_files)?;
    }
    let (rules, applies): (Vec<Rule>, Vec<Vec<usize>>) = loaded
        .into_iter()
        .map(|p| (p.parsed.rule, p.parsed.methods))
        .unzip();
    build::index(&mut actions, &methods, &applies, &rules)?;
    tracing::info!(policies = rules.len(), actions = actions.len(), %version, "policy set loaded");
    Ok(PolicyEngine {
        version,
        policy_count: rules.len(),
        actions,
        rules,
        types,
        no_slots: Default::default(),
    })
}

/// Reads the schema and policy files of `dir`, sorted by name. Hidden
/// entries (a ConfigMap mount's `..data`) and directories are skipped;
/// symlinks are followed.
fn read_dir(dir: &Path) -> Result<Vec<SourceFile>, PolicyError> {
    let read_dir_error = |source| PolicyError::ReadDir {
        dir: dir.display().to_string(),
        source,
    };
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).map_err(read_dir_error)? {
        let path = entry.map_err(read_dir_error)?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let wanted = matches!(
            path.extension().and_then(|e| e.to_str()),
            Some(SCHEMA_EXT | POLICY_EXT)
        );
        if name.starts_with('.') || !wanted || path.is_dir() {
            continue;
        }
        let text = fs::read_to_string(&path).map_err(|source| PolicyError::ReadFile {
            file: path.display().to_string(),
            source,
        })?;
        files.push(SourceFile {
            name: name.to_owned(),
            text,
        });
    }
    files.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(files)
}

/// `sha256:<first 16 hex>` over each file's name and text, length-prefixed
/// so that no two different directories hash alike.
fn version(files: &[SourceFile]) -> String {
    let mut hasher = Context::new(&SHA256);
    for file in files {
        for part in [file.name.as_bytes(), file.text.as_bytes()] {
            hasher.update(&(part.len() as u64).to_le_bytes());
            hasher.update(part);
        }
    }
    let digest = hasher.finish();
    let hex: String = digest
        .as_ref()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
}

fn parse_schema(file: &SourceFile) -> Result<Schema, PolicyError> {
    let (schema, warnings) =
        Schema::from_cedarschema_str(&file.text).map_err(|e| PolicyError::Schema {
            file: file.name.clone(),
            message: diagnostic_message(&e, &file.text),
        })?;
    for warning in warnings {
        tracing::warn!(file = %file.name, %warning, "Cedar schema warning");
    }
    Ok(schema)
}

/// The entity types the gateway builds must be declared by the schema.
fn entity_types(schema: &Schema, file: &str) -> Result<EntityTypes, PolicyError> {
    let declared: HashSet<String> = schema.entity_types().map(ToString::to_string).collect();
    let lookup = |name: &str| {
        if !declared.contains(name) {
            return Err(PolicyError::SchemaContract {
                file: file.to_owned(),
                name: name.to_owned(),
            });
        }
        EntityTypeName::from_str(name)
            .map(|t| t.as_ref().clone())
            .map_err(|e| PolicyError::Schema {
                file: file.to_owned(),
                message: e.to_string(),
            })
    };
    Ok(EntityTypes {
        workload: lookup("Mcp::Workload")?,
        server: lookup("Mcp::Server")?,
        tool: lookup("Mcp::Tool")?,
        prompt: lookup("Mcp::Prompt")?,
        resource: lookup("Mcp::Resource")?,
    })
}

/// Strict validation of every policy (each one kept: see [`Keep`]); every
/// error is reported with its file and line. Warnings that a policy can
/// never apply, or that hide text direction tricks (bidi controls), are
/// errors too: a policy that silently does nothing is a bug in an
/// authorization system.
fn validate_all(
    schema: &Schema,
    schema_name: &str,
    loaded: &[LoadedPolicy<Parsed>],
    files: &[&SourceFile],
) -> Result<(), PolicyError> {
    let kept = || {
        loaded
            .iter()
            .filter_map(|p| Some((p, &p.parsed.kept.as_ref()?.policy)))
    };
    let all: Vec<&Policy> = kept().map(|(_, policy)| policy).collect();
    if all.len() != loaded.len() {
        return Err(PolicyError::Index {
            message: "a policy to validate was not kept".to_owned(),
        });
    }
    let results = validate_in_parts(schema, &all)?;
    if results.iter().all(clean) {
        return Ok(());
    }
    let file_of: HashMap<&PolicyId, (&SourceFile, usize)> = kept()
        .map(|(p, policy)| (policy.id(), (files[p.file], p.base)))
        .collect();
    let locate = |id: &PolicyId, error: &dyn Diagnostic| match file_of.get(id) {
        Some((file, base)) => {
            let (line, column) = primary_location(error, &file.text, *base).unwrap_or((1, 1));
            format!("{}:{line}:{column}: {error}", file.name)
        }
        None => error.to_string(),
    };
    let mut errors: Vec<String> = results
        .iter()
        .flat_map(ValidationResult::validation_errors)
        .map(|e| locate(e.policy_id(), e))
        .collect();
    for warning in results
        .iter()
        .flat_map(ValidationResult::validation_warnings)
    {
        let message = locate(warning.policy_id(), warning);
        match refusal_hint(warning) {
            Some(hint) => errors.push(format!("{message}{hint}")),
            None => tracing::warn!(warning = %message, "Cedar validation warning"),
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(PolicyError::Validation {
            schema: schema_name.to_owned(),
            errors,
        })
    }
}

/// For a warning that refuses the set, what to add to its message; `None`
/// for one that is only logged.
fn refusal_hint(warning: &ValidationWarning) -> Option<&'static str> {
    match warning {
        ValidationWarning::ImpossiblePolicy(_) => Some(
            " (a policy that can never apply is rejected; if it reads tool arguments, declare them in ToolArguments)",
        ),
        ValidationWarning::InvalidActionApplication(_) => {
            Some(" (a policy that can never apply is rejected)")
        }
        ValidationWarning::BidiCharsInString(_) | ValidationWarning::BidiCharsInIdentifier(_) => {
            Some("")
        }
        _ => None,
    }
}

/// Whether one policy of each shape (see [`super::shape`]) passes strict
/// validation without a warning, and so every policy does. False when
/// one does not, or when no two policies share a shape: the caller then
/// validates them all, for every error and warning with its own policy.
/// The first policy of each shape in its part is kept (with its shape),
/// so the first of each shape in all parts is too.
fn shapes_are_clean(schema: &Schema, loaded: &[LoadedPolicy<Parsed>]) -> Result<bool, PolicyError> {
    let mut seen = HashSet::new();
    let one_per_shape: Vec<&Policy> = loaded
        .iter()
        .filter_map(|p| p.parsed.kept.as_ref())
        .filter(|kept| kept.shape.as_ref().is_none_or(|shape| seen.insert(shape)))
        .map(|kept| &kept.policy)
        .collect();
    if one_per_shape.len() == loaded.len() {
        return Ok(false);
    }
    Ok(validate_in_parts(schema, &one_per_shape)?.iter().all(clean))
}

/// Passed, and without a warning.
fn clean(result: &ValidationResult) -> bool {
    result.validation_passed() && result.validation_warnings().next().is_none()
}

/// Strict validation of `policies`, in parts on as many threads as the
/// machine has (Cedar typechecks each policy against every action of the
/// schema: ~0.1 ms a policy). Each policy is validated on its own, so
/// the parts give the same errors and warnings as the whole.
fn validate_in_parts(
    schema: &Schema,
    policies: &[&Policy],
) -> Result<Vec<ValidationResult>, PolicyError> {
    /// Fewer policies are not worth a thread.
    const MIN_PART: usize = 1_000;
    let threads = parallel::threads();
    let part = policies.len().div_ceil(threads).max(MIN_PART);
    let parts: Vec<&[&Policy]> = policies.chunks(part).collect();
    parallel::run(&parts, threads, |part| validate_part(schema, part))
        .into_iter()
        .map(|result| {
            result.unwrap_or_else(|| {
                Err(PolicyError::Index {
                    message: "policy validation panicked".to_owned(),
                })
            })
        })
        .collect()
}

fn validate_part(schema: &Schema, part: &[&Policy]) -> Result<ValidationResult, PolicyError> {
    let policies = PolicySet::from_policies(part.iter().map(|&p| p.clone())).map_err(|e| {
        PolicyError::Index {
            message: e.to_string(),
        }
    })?;
    Ok(Validator::new(schema.clone()).validate(&policies, ValidationMode::Strict))
}

/// Cedar's message plus, when it has a source location, `(at line:col)`.
fn diagnostic_message(error: &dyn Diagnostic, text: &str) -> String {
    match primary_location(error, text, 0) {
        Some((line, column)) => format!("{error} (at line {line}, column {column})"),
        None => error.to_string(),
    }
}

/// Line and column (1-based) in `text` of a diagnostic's first labelled
/// span, for a diagnostic about the part of `text` from `base` on.
pub(super) fn primary_location(
    error: &dyn Diagnostic,
    text: &str,
    base: usize,
) -> Option<(usize, usize)> {
    let offset = error.labels()?.next()?.offset();
    Some(line_column(text, base + offset))
}

pub(super) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text.as_bytes()[..offset.min(text.len())];
    let line = before.iter().filter(|b| **b == b'\n').count() + 1;
    let column = before.iter().rev().take_while(|b| **b != b'\n').count() + 1;
    (line, column)
}

/// The line where `snippet` starts in `text` (1 if not found).
pub(super) fn line_of(text: &str, snippet: &str) -> usize {
    text.find(snippet)
        .map_or(1, |offset| line_column(text, offset).0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The version is SHA-256 over length-prefixed names and texts: pinned
    /// here (computed independently) so a change of digest library or of
    /// framing cannot go unnoticed.
    #[test]
    fn the_version_is_sha256_over_length_prefixed_names_and_texts() {
        let file = |name: &str, text: &str| SourceFile {
            name: name.to_owned(),
            text: text.to_owned(),
        };
        let files = [
            file("a.cedar", "permit(principal,action,resource);"),
            file("s.cedarschema", "namespace Mcp {}"),
        ];
        assert_eq!(version(&files), "sha256:722ab31a6f223957");
    }
}

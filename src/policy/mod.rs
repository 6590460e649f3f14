//! Policy decisions: every MCP message is decided by Cedar policies.
//!
//! This module turns one message (who calls, which method, on what) into a
//! Cedar request and returns a [`Decision`] that carries its own labels
//! (allowed, reason, the `@id`s of the policies that determined it), so the
//! audit record and the metrics come from the same value.
//!
//! It must never: allow what no policy permits (deny by default), allow a
//! method the schema does not declare, let an evaluation error turn into an
//! allow, panic, block, or do I/O on the request path. [`PolicyEngine`] is
//! built once by [`PolicyEngine::load_dir`] and is immutable afterwards; a
//! reload builds a new engine and swaps it in whole.
//!
//! # Contract
//! The entity model is the one in `policies/mcp.cedarschema` (namespace
//! `Mcp`): principal `Mcp::Workload::"<SPIFFE ID>"` (`trust_domain`, `path`),
//! action `Mcp::Action::"<method>"`, resource `Mcp::Server`, `Mcp::Tool`,
//! `Mcp::Prompt`, `Mcp::Resource` (the last three `in` their server) or, for
//! server->client requests, the agent's `Mcp::Workload`. Context:
//! `session_id?`, `protocol_version?`, `arguments?`, and
//! `arguments_representable` (always present).
//!
//! # Tool arguments, and why requests are not validated at run time
//! Policies are validated against the schema in strict mode when they load.
//! Tool arguments have no fixed shape, and Cedar (4.14) has no open record
//! type for strict validation: `additionalAttributes` exists only behind
//! cedar's experimental `partial-validate` feature, only in the JSON schema
//! format and only for the non-strict "partial" mode. So the schema declares
//! `arguments` as the common type `ToolArguments`, in which operators name
//! (all optional) the arguments their policies read, and policies read them
//! as `context has arguments.repo && context.arguments.repo == "public"`.
//! Strict validation types `has` of an undeclared attribute as always false
//! and would accept such a policy as "impossible" (yet it would match at run
//! time), so a policy the validator finds impossible, or applicable to no
//! action, is a load error that says to declare the argument.
//!
//! The request itself is built *without* schema validation, so arguments
//! the schema does not declare do not reject the call. What run-time
//! validation would otherwise give is checked here, cheaper: the action must
//! be declared in the schema (else `default_deny`, whatever the policies
//! say) and the resource kind must be one the action applies to (else
//! `error`); principal, resource and context are built by this module in
//! the declared shapes. An argument whose run-time type differs from the
//! declared one makes `==` false or makes the policy error, which denies.
//!
//! Arguments are converted to Cedar values exactly or not at all: strings,
//! booleans, integers that fit in i64, arrays (as sets) and objects (as
//! records). Any `null`, fraction, out-of-range integer or duplicate key
//! anywhere leaves `arguments` out and sets `arguments_representable` to
//! false. Objects are never read as Cedar's `__entity`/`__extn` escapes, so
//! a caller cannot forge entity references.
//!
//! # Errors are denials
//! Cedar skips a policy whose evaluation errors (so an erroring `forbid`
//! would not forbid). Here any evaluation error denies the message with
//! reason `error` and the erroring policies' ids.
//!
//! # Cost
//! Cedar has no policy slicing: its authorizer evaluates every policy it
//! is given (over a whole set: about 9 us a decision at 10 policies,
//! 0.7 ms at 1,000, 127 ms at 100,000). A decision here does what that
//! authorizer does over the whole set, for the policies that can apply
//! only:
//! - `index` looks them up by action, principal and resource, and matches
//!   their scopes exactly as Cedar would over the entities built here;
//! - Cedar's evaluator (`cedar-policy-core`) evaluates the `when`/`unless`
//!   conditions of those whose scope matched, and nothing else; with no
//!   such conditions, no Cedar request is built at all;
//! - `request` builds only what those conditions may read: the principal
//!   and resource entities, the context attributes (the tool arguments
//!   parsed, or only checked to be representable; the `datetime` reused
//!   for the same millisecond on a thread).
//!
//! The property test in `equivalence_tests` holds the decisions to
//! `cedar_policy::Authorizer`'s over the whole set.
//!
//! `cargo bench --bench decision` on two shared CPUs: a decision costs
//! the same at 10, 1,000 and 100,000 policies. Medians: 3.0 us for the
//! demo's allowed tool call, 3.4 us when no agent policy matches (three
//! conditions evaluated), 4.3 us when one does (four). The p99 of the
//! quietest round of 20,000 decisions is 4.1, 4.2 to 4.9 and 5.2 to 6.2 us:
//! above the 5 us target once four conditions apply, and the p99 over
//! all rounds is 5 to 20 us, as busy as the machine is. What remains is
//! Cedar's: building its entities and request (about 1.3 us) and its
//! evaluator (about 0.3 us per condition). Loading 100,000 policies costs
//! about 5 s of CPU, nearly all of it Cedar's parser, on every thread in
//! parts of a file (`parse`); strict validation runs on one policy per
//! shape (`shape`), a few for a generated set. The 2 s target needs the
//! two CPUs to itself: on the shared machine it takes 4 to 6 s. Loading
//! peaks at about 0.5 GB and the set holds about 80 MB: do it off the
//! request path, on a blocking thread, and swap the new engine in whole.
//!

mod args;
mod build;
mod index;
mod load;
mod parallel;
mod parse;
mod request;
mod shape;
mod user;

pub use user::{User, UserError};

#[cfg(test)]
mod equivalence_tests;
#[cfg(test)]
mod parse_tests;
#[cfg(test)]
mod shape_tests;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::path::Path;

use cedar_policy_core::ast::{self, Effect, EntityUIDEntry, Literal, SlotEnv, Value, ValueKind};
use cedar_policy_core::evaluator::Evaluator;
use cedar_policy_core::extensions::Extensions;

use index::{ActionIndex, Candidates, EntityRef, Reads, Rule};
use request::{EntityTypes, Resource};

use crate::mcp::method::TargetKind;

/// One message to decide, borrowed from the parsed request.
#[derive(Debug, Clone, Copy)]
pub struct PolicyInput<'a> {
    /// Caller SPIFFE ID, e.g. `spiffe://example.org/ns/demo/sa/agent`.
    pub principal: &'a str,
    /// The MCP method, e.g. `tools/call`.
    pub action: &'a str,
    /// Upstream name from the config, e.g. `demo`.
    pub server: &'a str,
    /// The upstream's SPIFFE ID.
    pub server_spiffe_id: &'a str,
    pub target: Target<'a>,
    /// `params.arguments` of tools/call (or prompts/get), if any: the JSON
    /// text exactly as received (the parser has already checked it).
    pub arguments: Option<&'a str>,
    pub session_id: Option<&'a str>,
    pub protocol_version: Option<&'a str>,
    /// The verified end user, when the request carried a valid token.
    pub user: Option<&'a User>,
    /// Decision time, milliseconds since the Unix epoch (`context.time`).
    pub now_unix_ms: i64,
    /// `context.pin` of a tool or prompt on an upstream with pinning on:
    /// `pinned`, `changed` or `unpinned` (`crate::pins::PinStatus`).
    pub pin: Option<&'static str>,
}

/// What the message acts on; it becomes the Cedar resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'a> {
    /// Server-wide methods: initialize, ping, tools/list, notifications, ...
    Server,
    /// tools/call: the tool name.
    Tool(&'a str),
    /// prompts/get: the prompt name.
    Prompt(&'a str),
    /// resources/read and (un)subscribe: the resource URI.
    Resource(&'a str),
    /// Server->client requests (sampling, elicitation, roots): the SPIFFE ID
    /// of the agent the request goes to.
    Workload(&'a str),
}

impl<'a> Target<'a> {
    /// The target of `method` named `name` (its tool, prompt or resource);
    /// the server for a method without one, or without a name.
    pub fn of_method(method: &str, name: Option<&'a str>) -> Target<'a> {
        match (crate::mcp::method::target_kind(method), name) {
            (Some(kind), Some(name)) => Target::named(kind, name),
            _ => Target::Server,
        }
    }

    /// A tool, prompt or resource by name.
    pub fn named(kind: TargetKind, name: &'a str) -> Target<'a> {
        match kind {
            TargetKind::Tool => Target::Tool(name),
            TargetKind::Prompt => Target::Prompt(name),
            TargetKind::Resource => Target::Resource(name),
        }
    }

    /// As audited (`target_kind`).
    pub fn audit_kind(&self) -> &'static str {
        match self {
            Target::Server => "server",
            Target::Tool(_) => TargetKind::Tool.as_str(),
            Target::Prompt(_) => TargetKind::Prompt.as_str(),
            Target::Resource(_) => TargetKind::Resource.as_str(),
            Target::Workload(_) => "workload",
        }
    }

    /// The name audited as `target`; none for the server.
    pub fn name(&self) -> Option<&'a str> {
        match *self {
            Target::Server => None,
            Target::Tool(n) | Target::Prompt(n) | Target::Resource(n) | Target::Workload(n) => {
                Some(n)
            }
        }
    }
}

/// The outcome of one decision, with what the audit record needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// `@id`s of the determining policies, sorted: the permits for
    /// `Permitted`, the forbids for `Forbidden`, the erroring policies for
    /// `Error`, none for `NoPermit`.
    pub policy_ids: Vec<String>,
    pub reason: DecisionReason,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecisionReason {
    /// At least one permit matched and no forbid did.
    Permitted,
    /// An explicit forbid matched.
    Forbidden,
    /// Nothing permitted the message (deny by default), including methods
    /// the schema does not declare.
    NoPermit,
    /// The request could not be built or a policy failed to evaluate: deny.
    Error,
}

/// The policy set, indexed for decisions. Immutable; share it in an `Arc`.
pub struct PolicyEngine {
    version: String,
    policy_count: usize,
    actions: HashMap<Box<str>, ActionEntry>,
    /// Every policy; the indexes hold positions in it.
    rules: Vec<Rule>,
    types: EntityTypes,
    /// Static policies have no slots: one empty environment for all.
    no_slots: SlotEnv,
}

/// Everything one action needs at decision time, built at load.
struct ActionEntry {
    uid: EntityUIDEntry,
    /// Resource kinds the schema lets this action apply to.
    resources: ResourceKinds,
    /// The action entity with its groups, only when the schema has action
    /// groups (`action in Mcp::Action::"group"` needs it in the store).
    entity: Option<std::sync::Arc<ast::Entity>>,
    /// The policies that can apply to this action, by principal and
    /// resource.
    index: ActionIndex,
}

/// The satisfied and the erroring policies of one decision.
#[derive(Default)]
struct Outcome<'a> {
    permits: Vec<&'a str>,
    forbids: Vec<&'a str>,
    errors: Vec<&'a str>,
}

/// A set of [`Target`] kinds, one bit each.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct ResourceKinds(u8);

#[derive(thiserror::Error, Debug)]
pub enum PolicyError {
    #[error("cannot read policy directory {dir}: {source}")]
    ReadDir { dir: String, source: std::io::Error },
    #[error("cannot read {file}: {source}")]
    ReadFile {
        file: String,
        source: std::io::Error,
    },
    #[error("no *.cedarschema file in policy directory {dir}")]
    NoSchema { dir: String },
    #[error("more than one *.cedarschema file in policy directory {dir}: {files}")]
    SeveralSchemas { dir: String, files: String },
    #[error("{file}: invalid Cedar schema: {message}")]
    Schema { file: String, message: String },
    #[error(
        "{file}: the schema lacks entity type {name}, which the gateway builds for every message"
    )]
    SchemaContract { file: String, name: String },
    #[error("{file}:{line}:{column}: Cedar syntax error: {message}")]
    Syntax {
        file: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error(
        "{file}:{line}: policy #{index} in the file has no @id(\"...\") annotation; every policy needs a unique one"
    )]
    MissingId {
        file: String,
        line: usize,
        index: usize,
    },
    #[error(
        "{file}:{line}: policy @id(\"{id}\") is already used in {first_file}; ids must be unique"
    )]
    DuplicateId {
        file: String,
        line: usize,
        id: String,
        first_file: String,
    },
    #[error(
        "{file}:{line}: template @id(\"{id}\") has slots; templates are not supported, write static policies"
    )]
    Template {
        file: String,
        line: usize,
        id: String,
    },
    #[error("{file}:{line}: policy @id(\"{id}\"): Mcp::Workload {message}")]
    WorkloadId {
        file: String,
        line: usize,
        id: String,
        message: String,
    },
    #[error("policies fail validation against {schema}:\n{}", .errors.join("\n"))]
    Validation {
        schema: String,
        /// One line per error: `file:line:column: policy `id`: message`.
        errors: Vec<String>,
    },
    #[error("cannot index the policies: {message}")]
    Index { message: String },
}

impl DecisionReason {
    /// The stable label used in audit records and metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            DecisionReason::Permitted => "permit",
            DecisionReason::Forbidden => "forbid",
            DecisionReason::NoPermit => "default_deny",
            DecisionReason::Error => "error",
        }
    }
}

impl Decision {
    fn deny(reason: DecisionReason, policy_ids: Vec<String>) -> Decision {
        Decision {
            allowed: false,
            policy_ids,
            reason,
        }
    }

    /// Cedar's decision over the evaluated policies, labelled: any
    /// evaluation error denies (fail closed), then a forbid overrides the
    /// permits, and without a permit the message is denied by default.
    fn from_outcome(outcome: Outcome<'_>) -> Decision {
        let ids = |mut ids: Vec<&str>| {
            ids.sort_unstable();
            ids.into_iter().map(str::to_owned).collect()
        };
        if !outcome.errors.is_empty() {
            Decision::deny(DecisionReason::Error, ids(outcome.errors))
        } else if !outcome.forbids.is_empty() {
            Decision::deny(DecisionReason::Forbidden, ids(outcome.forbids))
        } else if !outcome.permits.is_empty() {
            Decision {
                allowed: true,
                policy_ids: ids(outcome.permits),
                reason: DecisionReason::Permitted,
            }
        } else {
            Decision::deny(DecisionReason::NoPermit, Vec::new())
        }
    }
}

impl Target<'_> {
    fn kind(&self) -> ResourceKinds {
        ResourceKinds(match self {
            Target::Server => 1,
            Target::Tool(_) => 1 << 1,
            Target::Prompt(_) => 1 << 2,
            Target::Resource(_) => 1 << 3,
            Target::Workload(_) => 1 << 4,
        })
    }
}

impl ResourceKinds {
    fn insert(&mut self, other: ResourceKinds) {
        self.0 |= other.0;
    }

    fn contains(self, other: ResourceKinds) -> bool {
        self.0 & other.0 == other.0 && other.0 != 0
    }
}

impl PolicyEngine {
    /// Loads `dir`: exactly one `*.cedarschema` and every `*.cedar` file
    /// (hidden files and directories are skipped, so a Kubernetes ConfigMap
    /// mount works). Policies are validated against the schema in strict
    /// mode and must each carry a unique `@id`. Errors name the file.
    pub fn load_dir(dir: &Path) -> Result<PolicyEngine, PolicyError> {
        load::load_dir(dir)
    }

    /// Policy-set version, `sha256:<16 hex>` over the sorted file names and
    /// contents (schema included); it goes into every audit record.
    pub fn version(&self) -> &str {
        &self.version
    }

    pub fn policy_count(&self) -> usize {
        self.policy_count
    }

    /// Each policy's `@id` and the decision it determines when it applies
    /// (`Permitted` for a permit, `Forbidden` for a forbid), in load order:
    /// the ids a decision of this set can name.
    pub fn determining(&self) -> impl Iterator<Item = (&str, DecisionReason)> {
        self.rules.iter().map(|rule| {
            let determines = match rule.effect {
                Effect::Permit => DecisionReason::Permitted,
                Effect::Forbid => DecisionReason::Forbidden,
            };
            (&*rule.id, determines)
        })
    }

    /// Decides one message. Pure and synchronous; never panics; every
    /// failure is a denial.
    pub fn decide(&self, input: &PolicyInput<'_>) -> Decision {
        let Some(action) = self.actions.get(input.action) else {
            return Decision::deny(DecisionReason::NoPermit, Vec::new());
        };
        if !action.resources.contains(input.target.kind()) {
            tracing::debug!(action = input.action, target = ?input.target, "resource kind not declared for this action");
            return Decision::deny(DecisionReason::Error, Vec::new());
        }
        let time = match request::check(input) {
            Ok(time) => time,
            Err(message) => return cannot_build(input, &message),
        };
        let resource = Resource::of(input);
        let scope = (
            EntityRef {
                kind: Target::Workload("").kind(),
                id: input.principal,
                server: None,
            },
            resource.entity(),
        );
        let candidates = action.index.candidates(input.principal, &scope.1);
        let (mut reads, mut conditions, mut matched) = (Reads::default(), false, false);
        for rule in self.matching(&candidates, &scope) {
            matched = true;
            conditions |= rule.conditions.is_some();
            reads = reads.union(rule.reads);
        }
        if !matched {
            // What Cedar answers when no policy applies.
            return Decision::deny(DecisionReason::NoPermit, Vec::new());
        }
        if !conditions {
            // Only scopes to decide: nothing for Cedar to evaluate.
            return Decision::from_outcome(self.evaluate(&candidates, &scope, None));
        }
        let entry = (&action.uid, action.entity.as_ref());
        let built = request::build(&self.types, input, &resource, entry, time, reads);
        let (request, entities) = match built {
            Ok(built) => built,
            Err(message) => return cannot_build(input, &message),
        };
        let evaluator = Evaluator::new(request, &entities, Extensions::all_available());
        Decision::from_outcome(self.evaluate(&candidates, &scope, Some(&evaluator)))
    }

    /// The candidates whose scope matches the principal and resource.
    fn matching<'a>(
        &'a self,
        candidates: &'a Candidates<'a>,
        (principal, resource): &'a (EntityRef<'a>, EntityRef<'a>),
    ) -> impl Iterator<Item = &'a Rule> {
        candidates
            .iter()
            .map(|rule| &self.rules[rule])
            .filter(|rule| rule.scope_matches(principal, resource))
    }

    /// Evaluates the policies whose scope matches as Cedar's authorizer
    /// does: satisfied, not, or an error. Without conditions a policy is
    /// satisfied; `evaluator` is `None` only when none has conditions.
    fn evaluate<'a>(
        &'a self,
        candidates: &'a Candidates<'a>,
        scope: &'a (EntityRef<'a>, EntityRef<'a>),
        evaluator: Option<&Evaluator<'_>>,
    ) -> Outcome<'a> {
        let mut outcome = Outcome::default();
        for rule in self.matching(candidates, scope) {
            let result = match (&rule.conditions, evaluator) {
                (None, _) => Ok(true),
                (Some(conditions), Some(evaluator)) => self.satisfied(rule, conditions, evaluator),
                (Some(_), None) => Err(()),
            };
            match (result, rule.effect) {
                (Ok(true), Effect::Permit) => outcome.permits.push(&rule.id),
                (Ok(true), Effect::Forbid) => outcome.forbids.push(&rule.id),
                (Ok(false), _) => {}
                (Err(()), _) => outcome.errors.push(&rule.id),
            }
        }
        outcome
    }

    /// Cedar's evaluation of a policy's conditions: a boolean or an error.
    fn satisfied(
        &self,
        rule: &Rule,
        conditions: &ast::Expr,
        evaluator: &Evaluator<'_>,
    ) -> Result<bool, ()> {
        match evaluator.interpret(conditions, &self.no_slots) {
            Ok(Value {
                value: ValueKind::Lit(Literal::Bool(satisfied)),
                ..
            }) => Ok(satisfied),
            // Cedar's `scope && conditions` makes this a type error.
            Ok(other) => {
                tracing::debug!(policy = %rule.id, value = %other, "policy conditions are not a boolean");
                Err(())
            }
            Err(error) => {
                tracing::debug!(policy = %rule.id, %error, "policy evaluation error");
                Err(())
            }
        }
    }
}

fn cannot_build(input: &PolicyInput<'_>, message: &str) -> Decision {
    tracing::debug!(action = input.action, %message, "cannot build Cedar request");
    Decision::deny(DecisionReason::Error, Vec::new())
}

//! The policy index: which policies apply to a message, found by looking
//! up its action, principal and resource instead of evaluating every policy.
//!
//! Cedar evaluates every policy it is given, as the expression
//! `principal && action && resource && conditions` (scope first, left to
//! right), so its cost grows with the policy set. Here a decision does what
//! that evaluation would, in three steps:
//!
//! 1. Lookup. Each policy is filed at load, for every action it applies to
//!    (action groups resolved by `load`), under the workload its principal
//!    scope names (or "any principal"). A bucket of a few policies stays a
//!    list; a larger one is filed by the resource its resource scope names:
//!    an exact entity (`==`, `in`, `is .. in`), every tool, prompt and
//!    resource of a server (`in Mcp::Server::"s"`), an entity type (`is`),
//!    or "any resource". A lookup yields the policies filed under keys the
//!    message has: a superset of those whose scope matches.
//! 2. Scope. [`EntityScope::matches`] decides the principal and resource
//!    scopes exactly as Cedar would over the entities `request` builds: a
//!    workload has no parents; a tool, prompt or resource has exactly its
//!    server, which has none. Cedar's scope tests cannot fail, so a policy
//!    whose scope does not match is false, never an error.
//! 3. Conditions. Cedar's evaluator evaluates the `when`/`unless`
//!    conditions (`like` included) of the policies whose scope matched,
//!    over a request holding what those conditions may read ([`Reads`]).
//!
//! Must never drop a policy that could apply: only the scope is read, and a
//! scope on an entity type the gateway never builds is filed under "any"
//! and matched (as never equal) rather than guessed about. The property
//! test in `equivalence_tests` compares decisions with Cedar's over the
//! whole set.

use std::collections::HashMap;

use cedar_policy::{EntityUid, Policy, PrincipalConstraint, ResourceConstraint};
use cedar_policy_core::ast::{self, BinaryOp, Effect, ExprKind, Var};

use super::request::EntityTypes;
use super::{ResourceKinds, Target};

/// Positions of rules, by entity id.
type ById = HashMap<Box<str>, Vec<u32>>;

/// One policy as a decision evaluates it.
pub(super) struct Rule {
    /// The `@id`.
    pub(super) id: Box<str>,
    pub(super) effect: Effect,
    pub(super) principal: EntityScope,
    pub(super) resource: EntityScope,
    /// The `when` and `unless` clauses as one expression, as Cedar holds
    /// them; `None` when there are none (the policy applies on its scope).
    pub(super) conditions: Option<ast::Expr>,
    pub(super) reads: Reads,
}

/// A principal or resource scope. Entity types are the target kinds the
/// gateway builds; `None` is a type it never builds, which no entity of a
/// request has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum EntityScope {
    Any,
    Eq(Option<ResourceKinds>, Box<str>),
    In(Option<ResourceKinds>, Box<str>),
    Is(Option<ResourceKinds>),
    IsIn(Option<ResourceKinds>, Option<ResourceKinds>, Box<str>),
}

/// A request's principal or resource, as scopes see it.
#[derive(Debug, Clone, Copy)]
pub(super) struct EntityRef<'a> {
    pub(super) kind: ResourceKinds,
    /// The entity id, e.g. `demo/get_weather` for a tool of `demo`.
    pub(super) id: &'a str,
    /// The server a tool, prompt or resource is `in`: its only ancestor.
    pub(super) server: Option<&'a str>,
}

/// What a policy's conditions may read of a request: context attributes,
/// and the attributes, tags or ancestors of the principal or the resource.
/// A decision builds only what its policies may read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Reads {
    pub(super) context: ContextReads,
    pub(super) principal: bool,
    pub(super) resource: bool,
}

/// The context attributes a policy's conditions may read, one bit each.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct ContextReads(u8);

/// The policies of one action, by principal and then by resource.
#[derive(Default)]
pub(super) struct ActionIndex {
    /// Policies whose principal scope names no single workload.
    any_principal: ResourceIndex,
    /// Policies whose principal scope names this workload (`==`, `in`,
    /// `is .. in`).
    by_principal: HashMap<Box<str>, ResourceIndex>,
}

/// Positions in the engine's rules: a few as they are, more by resource
/// scope.
enum ResourceIndex {
    /// At most [`ResourceIndex::FEW`]: their scopes are matched one by one,
    /// cheaper than lookups and than a hundred thousand small maps for a
    /// policy per agent.
    Few(Vec<u32>),
    Many(Box<ByResource>),
}

/// Positions in the engine's rules, by resource scope.
#[derive(Default)]
struct ByResource {
    /// No resource scope, or one on a type the gateway never builds.
    any: Vec<u32>,
    /// `resource is T`.
    by_kind: Vec<(ResourceKinds, Vec<u32>)>,
    /// `resource == U`, `resource in U`, `resource is T in U`: they can
    /// match when the resource is U. By U's kind, then U's id.
    by_uid: Vec<(ResourceKinds, ById)>,
    /// `resource in Mcp::Server::"s"` (and `is T in` it): they can also
    /// match a tool, prompt or resource of server `s`.
    in_server: ById,
}

/// The lists of policies a lookup found, four (see
/// [`ResourceIndex::lookup`]) from each principal bucket; no policy is in
/// two of them.
pub(super) struct Candidates<'a> {
    lists: [&'a [u32]; 8],
}

impl Rule {
    pub(super) fn new(policy: &Policy, id: &str, types: &EntityTypes) -> Rule {
        let (principal, resource) = EntityScope::of(policy, types);
        let policy: &ast::Policy = policy.as_ref();
        let conditions = policy.non_scope_constraints().cloned();
        Rule {
            id: id.into(),
            effect: policy.effect(),
            principal,
            resource,
            reads: conditions.as_ref().map_or(Reads::default(), Reads::of),
            conditions,
        }
    }

    /// Whether the scope matches: Cedar's `principal && resource` scope
    /// tests (the action is settled by the index).
    pub(super) fn scope_matches(
        &self,
        principal: &EntityRef<'_>,
        resource: &EntityRef<'_>,
    ) -> bool {
        self.principal.matches(principal) && self.resource.matches(resource)
    }
}

impl EntityScope {
    /// The principal and resource scopes of `policy`.
    fn of(policy: &Policy, types: &EntityTypes) -> (EntityScope, EntityScope) {
        let kind = |name: &cedar_policy::EntityTypeName| types.kind(name.as_ref());
        let id = |uid: &EntityUid| Box::from(uid.id().unescaped());
        let principal = match policy.principal_constraint() {
            PrincipalConstraint::Any => EntityScope::Any,
            PrincipalConstraint::Eq(u) => EntityScope::Eq(kind(u.type_name()), id(&u)),
            PrincipalConstraint::In(u) => EntityScope::In(kind(u.type_name()), id(&u)),
            PrincipalConstraint::Is(t) => EntityScope::Is(kind(&t)),
            PrincipalConstraint::IsIn(t, u) => {
                EntityScope::IsIn(kind(&t), kind(u.type_name()), id(&u))
            }
        };
        let resource = match policy.resource_constraint() {
            ResourceConstraint::Any => EntityScope::Any,
            ResourceConstraint::Eq(u) => EntityScope::Eq(kind(u.type_name()), id(&u)),
            ResourceConstraint::In(u) => EntityScope::In(kind(u.type_name()), id(&u)),
            ResourceConstraint::Is(t) => EntityScope::Is(kind(&t)),
            ResourceConstraint::IsIn(t, u) => {
                EntityScope::IsIn(kind(&t), kind(u.type_name()), id(&u))
            }
        };
        (principal, resource)
    }

    /// Cedar's `==`, `in`, `is` and `is .. in` for an entity whose only
    /// possible ancestor is its server.
    pub(super) fn matches(&self, entity: &EntityRef<'_>) -> bool {
        let is = |kind: &Option<ResourceKinds>| *kind == Some(entity.kind);
        let eq = |kind: &Option<ResourceKinds>, id: &str| is(kind) && id == entity.id;
        let within = |kind: &Option<ResourceKinds>, id: &str| {
            eq(kind, id) || (*kind == Some(Target::Server.kind()) && entity.server == Some(id))
        };
        match self {
            EntityScope::Any => true,
            EntityScope::Eq(kind, id) => eq(kind, id),
            EntityScope::In(kind, id) => within(kind, id),
            EntityScope::Is(kind) => is(kind),
            EntityScope::IsIn(type_kind, kind, id) => is(type_kind) && within(kind, id),
        }
    }

    /// The uid this scope names, if it names one the gateway builds, and
    /// whether entities under it (`in`) match too.
    fn named(&self) -> Option<(ResourceKinds, &str, bool)> {
        match self {
            EntityScope::Eq(Some(kind), id) => Some((*kind, id, false)),
            EntityScope::In(Some(kind), id) | EntityScope::IsIn(_, Some(kind), id) => {
                Some((*kind, id, true))
            }
            _ => None,
        }
    }
}

impl Reads {
    /// What `conditions` may read. Of the context: `context` met anywhere
    /// but directly under `.attr`, `has attr` or `has attr.more` may read
    /// it all (`context == {..}`); an attribute read by name is the only one
    /// read. Of an entity: Cedar's evaluator reads the entity store for
    /// `.attr`, `has`, `getTag`, `hasTag` and the left of `in`; on
    /// `principal` or `resource` that reads the one, on anything else but
    /// the context (an entity literal, an `if`) perhaps both.
    fn of(conditions: &ast::Expr) -> Reads {
        let mut reads = Reads::default();
        let (mut seen, mut named) = (0usize, 0usize);
        for e in conditions.subexpressions() {
            let subject = match e.expr_kind() {
                ExprKind::Var(Var::Context) => {
                    seen += 1;
                    continue;
                }
                ExprKind::GetAttr { expr, attr } | ExprKind::HasAttr { expr, attr } => {
                    if is_context(expr) {
                        named += 1;
                        reads.context = reads.context.union(ContextReads::attribute(attr));
                    }
                    expr
                }
                ExprKind::ExtHasAttr { expr, attrs } => {
                    if is_context(expr) {
                        named += 1;
                        let attr = attrs.first();
                        reads.context = reads.context.union(ContextReads::attribute(attr));
                    }
                    expr
                }
                ExprKind::BinaryApp {
                    op: BinaryOp::In | BinaryOp::GetTag | BinaryOp::HasTag,
                    arg1,
                    ..
                } => arg1,
                _ => continue,
            };
            match subject.expr_kind() {
                ExprKind::Var(Var::Principal) => reads.principal = true,
                ExprKind::Var(Var::Resource) => reads.resource = true,
                // Records only (see `request`), or the action entity, which
                // is built whenever the schema has action groups.
                _ if within_context(subject) => {}
                ExprKind::Var(Var::Action) => {}
                _ => (reads.principal, reads.resource) = (true, true),
            }
        }
        if seen > named {
            reads.context = ContextReads::ALL;
        }
        reads
    }

    pub(super) fn union(self, other: Reads) -> Reads {
        Reads {
            context: self.context.union(other.context),
            principal: self.principal || other.principal,
            resource: self.resource || other.resource,
        }
    }
}

fn is_context(e: &ast::Expr) -> bool {
    matches!(e.expr_kind(), ExprKind::Var(Var::Context))
}

/// `context` or an attribute of an attribute .. of it.
fn within_context(e: &ast::Expr) -> bool {
    match e.expr_kind() {
        ExprKind::Var(Var::Context) => true,
        ExprKind::GetAttr { expr, .. } => within_context(expr),
        _ => false,
    }
}

impl ContextReads {
    /// Every attribute the gateway builds.
    const ATTRIBUTES: [&str; 8] = [
        "time",
        "upstream_spiffe_id",
        "session_id",
        "protocol_version",
        "user",
        "arguments",
        "arguments_representable",
        "pin",
    ];
    const ALL: ContextReads = ContextReads(u8::MAX);

    /// The bit of one attribute; a name the gateway does not build stands
    /// for all, so that the reader and the builder cannot disagree.
    pub(super) fn attribute(name: &str) -> ContextReads {
        match Self::ATTRIBUTES.iter().position(|a| *a == name) {
            Some(bit) => ContextReads(1 << bit),
            None => ContextReads::ALL,
        }
    }

    pub(super) fn union(self, other: ContextReads) -> ContextReads {
        ContextReads(self.0 | other.0)
    }

    /// Whether `name` may be read.
    pub(super) fn reads(self, name: &str) -> bool {
        self.0 & ContextReads::attribute(name).0 != 0
    }
}

impl ActionIndex {
    /// Files rule number `position` under what its scope names.
    pub(super) fn insert(&mut self, position: u32, rules: &[Rule]) {
        let rule = &rules[position as usize];
        let bucket = match rule.principal.named() {
            Some((kind, id, _)) if kind == Target::Workload("").kind() => {
                self.by_principal.entry(id.into()).or_default()
            }
            _ => &mut self.any_principal,
        };
        bucket.insert(position, rules);
    }

    /// The policies that may apply to a message from `principal` on
    /// `resource`: all whose scope matches, and others.
    pub(super) fn candidates<'a>(
        &'a self,
        principal: &str,
        resource: &EntityRef<'_>,
    ) -> Candidates<'a> {
        let [a, b, c, d] = self.any_principal.lookup(resource);
        let [e, f, g, h] = match self.by_principal.get(principal) {
            Some(own) => own.lookup(resource),
            None => [&[][..]; 4],
        };
        Candidates {
            lists: [a, b, c, d, e, f, g, h],
        }
    }
}

impl Default for ResourceIndex {
    fn default() -> ResourceIndex {
        ResourceIndex::Few(Vec::new())
    }
}

impl ResourceIndex {
    /// Small under test, so that the generated sets of the property test
    /// take both paths.
    const FEW: usize = if cfg!(test) { 2 } else { 8 };

    fn insert(&mut self, position: u32, rules: &[Rule]) {
        let scope = |position: u32| &rules[position as usize].resource;
        match self {
            ResourceIndex::Few(positions) if positions.len() < Self::FEW => {
                positions.push(position);
            }
            ResourceIndex::Few(positions) => {
                let mut many = ByResource::default();
                for position in positions.iter().copied().chain([position]) {
                    many.insert(position, scope(position));
                }
                *self = ResourceIndex::Many(Box::new(many));
            }
            ResourceIndex::Many(many) => many.insert(position, scope(position)),
        }
    }

    /// The four lists that may apply to `resource` (see
    /// [`ByResource::lookup`]).
    fn lookup(&self, resource: &EntityRef<'_>) -> [&[u32]; 4] {
        match self {
            ResourceIndex::Few(positions) => [positions, &[], &[], &[]],
            ResourceIndex::Many(many) => many.lookup(resource),
        }
    }
}

impl ByResource {
    fn insert(&mut self, position: u32, scope: &EntityScope) {
        if let EntityScope::Is(Some(kind)) = scope {
            return slot(&mut self.by_kind, *kind).push(position);
        }
        let Some((kind, id, within)) = scope.named() else {
            return self.any.push(position);
        };
        let by_id = slot(&mut self.by_uid, kind);
        by_id.entry(id.into()).or_default().push(position);
        // Only a server has entities under it; see the module doc.
        if within && kind == Target::Server.kind() {
            self.in_server.entry(id.into()).or_default().push(position);
        }
    }

    /// The four lists that may apply to `resource`: any resource, its
    /// kind, its uid, its server. A rule filed twice (an `in` on a server)
    /// is in one of them only: the resource is that server or one of its
    /// children, never both.
    fn lookup(&self, resource: &EntityRef<'_>) -> [&[u32]; 4] {
        let by_kind = self.by_kind.iter().find(|(k, _)| *k == resource.kind);
        let by_uid = self.by_uid.iter().find(|(k, _)| *k == resource.kind);
        let in_server = resource.server.and_then(|s| self.in_server.get(s));
        [
            &self.any,
            by_kind.map_or(&[], |(_, rules)| rules),
            by_uid
                .and_then(|(_, by_id)| by_id.get(resource.id))
                .map_or(&[], Vec::as_slice),
            in_server.map_or(&[], Vec::as_slice),
        ]
    }
}

/// The entry for `kind` in a short list keyed by kind, added if missing.
fn slot<T: Default>(list: &mut Vec<(ResourceKinds, T)>, kind: ResourceKinds) -> &mut T {
    let at = match list.iter().position(|(k, _)| *k == kind) {
        Some(at) => at,
        None => {
            list.push((kind, T::default()));
            list.len() - 1
        }
    };
    &mut list[at].1
}

impl Candidates<'_> {
    pub(super) fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.lists
            .iter()
            .flat_map(|rules| rules.iter().map(|&rule| rule as usize))
    }
}

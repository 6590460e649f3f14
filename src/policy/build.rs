//! From parsed policies to what the engine decides with: each policy's
//! rule and the actions it can apply to, then the per-action index.
//!
//! Runs at load, never on the request path. A policy's rule is derived on
//! the thread that parsed it, right after its part is parsed (see
//! [`Build::part`]), and the parsed policy is freed there unless
//! validation needs it: a hundred thousand parsed policies held to the
//! end of the load took as long to free on one thread as to derive.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use cedar_policy::{ActionConstraint, Entities, EntityUid, Policy, Schema};
use cedar_policy_core::ast;

use super::index::{ActionIndex, Rule};
use super::request::EntityTypes;
use super::shape;
use super::{ActionEntry, PolicyError, ResourceKinds};

const ACTION_TYPE: &str = "Mcp::Action";

/// A method of the schema: its action and the groups it is in.
pub(super) struct Method<'a> {
    uid: &'a EntityUid,
    groups: HashSet<EntityUid>,
}

/// The engine's entries by method name.
pub(super) type Actions = HashMap<Box<str>, ActionEntry>;

/// One policy as load keeps it.
pub(super) struct Parsed {
    /// The policy, when validation may need it (see [`Keep`]).
    pub(super) kept: Option<Kept>,
    pub(super) rule: Rule,
    /// The methods (positions in the list of [`actions`]) it can apply to.
    pub(super) methods: Vec<usize>,
}

/// A parsed policy kept for validation, and its shape (see [`shape`]).
pub(super) struct Kept {
    pub(super) policy: Policy,
    pub(super) shape: Option<String>,
}

/// Which parsed policies are kept for validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Keep {
    /// The first of each shape in its part, and those without a shape:
    /// enough to validate one policy of each shape.
    OnePerShape,
    /// Every one: to validate them all, for every error with its policy.
    All,
}

/// What deriving a policy's rule reads.
pub(super) struct Build<'a> {
    schema: &'a Schema,
    types: &'a EntityTypes,
    methods: &'a [Method<'a>],
}

impl<'a> Build<'a> {
    pub(super) fn new(
        schema: &'a Schema,
        types: &'a EntityTypes,
        methods: &'a [Method<'a>],
    ) -> Build<'a> {
        Build {
            schema,
            types,
            methods,
        }
    }

    /// One part's policies, in order, as load keeps them.
    pub(super) fn part(&self, policies: Vec<Policy>, keep: Keep) -> Vec<Parsed> {
        let mut seen = HashSet::new();
        policies
            .into_iter()
            .map(|policy| {
                let template = ast::Policy::template(policy.as_ref());
                let shape = shape::of(self.schema.as_ref(), template);
                let first = match &shape {
                    Some(shape) if seen.contains(shape) => false,
                    Some(shape) => seen.insert(shape.clone()),
                    None => true,
                };
                Parsed {
                    rule: Rule::new(&policy, policy.id().as_ref(), self.types),
                    methods: self.methods_of(&policy),
                    kept: (first || keep == Keep::All).then_some(Kept { policy, shape }),
                }
            })
            .collect()
    }

    /// The positions of the methods `policy` can apply to.
    fn methods_of(&self, policy: &Policy) -> Vec<usize> {
        let constraint = policy.action_constraint();
        let applies = |method: &Method<'_>| match &constraint {
            ActionConstraint::Any => true,
            ActionConstraint::Eq(a) => a == method.uid,
            ActionConstraint::In(list) => list
                .iter()
                .any(|a| a == method.uid || method.groups.contains(a)),
        };
        (0..self.methods.len())
            .filter(|&m| applies(&self.methods[m]))
            .collect()
    }
}

/// One entry per method of the schema, its index still empty: which
/// resource kinds the action applies to, and its entity when the schema
/// has action groups; and the methods, in a fixed order.
pub(super) fn actions<'a>(
    schema: &'a Schema,
    types: &EntityTypes,
) -> Result<(Actions, Vec<Method<'a>>), PolicyError> {
    let action_entities = schema.action_entities().map_err(|e| index_error(&e))?;
    let has_groups = schema.action_groups().next().is_some();
    let mut actions = HashMap::new();
    let mut methods = Vec::new();
    for uid in schema.actions() {
        if uid.type_name().to_string() != ACTION_TYPE {
            continue;
        }
        let resources = resource_kinds(schema, uid, types);
        if resources == ResourceKinds::default() {
            continue; // an action group, not a method
        }
        let core_uid: &ast::EntityUID = uid.as_ref();
        let entry = ActionEntry {
            uid: ast::EntityUIDEntry::known(core_uid.clone(), None),
            resources,
            entity: if has_groups {
                action_entity(&action_entities, uid)
            } else {
                None
            },
            index: ActionIndex::default(),
        };
        actions.insert(uid.id().unescaped().into(), entry);
        let groups = action_entities.ancestors(uid).into_iter().flatten();
        methods.push(Method {
            uid,
            groups: groups.cloned().collect(),
        });
    }
    Ok((actions, methods))
}

/// Fills each action's index: which policies can apply to it, by
/// principal and resource. `applies` holds each rule's methods.
pub(super) fn index(
    actions: &mut Actions,
    methods: &[Method<'_>],
    applies: &[Vec<usize>],
    rules: &[Rule],
) -> Result<(), PolicyError> {
    for (position, methods_of) in applies.iter().enumerate() {
        let position = u32::try_from(position).map_err(|e| index_error(&e))?;
        for &method in methods_of {
            if let Some(entry) = actions.get_mut(methods[method].uid.id().unescaped()) {
                entry.index.insert(position, rules);
            }
        }
    }
    Ok(())
}

/// The target kinds whose entity type the action lists as a resource.
fn resource_kinds(schema: &Schema, action: &EntityUid, types: &EntityTypes) -> ResourceKinds {
    let mut kinds = ResourceKinds::default();
    for name in schema.resources_for_action(action).into_iter().flatten() {
        if let Some(kind) = types.kind(name.as_ref()) {
            kinds.insert(kind);
        }
    }
    kinds
}

fn action_entity(entities: &Entities, uid: &EntityUid) -> Option<Arc<ast::Entity>> {
    entities.get(uid).map(|e| Arc::new(e.as_ref().clone()))
}

fn index_error(e: &dyn std::fmt::Display) -> PolicyError {
    PolicyError::Index {
        message: e.to_string(),
    }
}

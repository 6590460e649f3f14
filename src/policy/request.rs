//! Per-message Cedar inputs: the principal and resource entities, the
//! context, and the request, built from plain values.
//!
//! This is the one place that uses `cedar-policy-core` (pinned to the exact
//! version `cedar-policy` uses) rather than `cedar-policy`'s public API. The
//! public constructors evaluate every attribute as a restricted expression
//! and recompute the transitive closure of the entity store on every call:
//! that was ~8 of the ~14 us of a decision. The entities built here have a
//! hierarchy known in advance (a workload has no parents; a tool, prompt or
//! resource has exactly its server, which has none; an action entity comes
//! from the schema with its closure computed), so the closure is asserted,
//! not recomputed, and attributes are stored as values. The result is
//! converted into the public types for the authorizer.
//!
//! Must never build an entity whose ancestors are not closed, nor two
//! entities with the same uid.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use cedar_policy::{Context, Entities, EntityUid, Request};
use cedar_policy_core::ast::{self, Eid, EntityUID, ExtensionFunction, Name, PartialValue, Value};
use cedar_policy_core::entities::{self as core_entities, NoEntitiesSchema, TCComputation};
use cedar_policy_core::extensions::Extensions;
use smol_str::SmolStr;

use super::args;
use super::{PolicyInput, Target};

/// The entity types the gateway builds, parsed once at load.
pub(super) struct EntityTypes {
    pub(super) workload: ast::EntityType,
    pub(super) server: ast::EntityType,
    pub(super) tool: ast::EntityType,
    pub(super) prompt: ast::EntityType,
    pub(super) resource: ast::EntityType,
}

/// Builds the request and its entity store: the principal, the resource
/// (unless it is the principal itself) and, when the schema has action
/// groups, the action entity.
pub(super) fn build(
    types: &EntityTypes,
    input: &PolicyInput<'_>,
    action_uid: &EntityUid,
    action_entity: Option<&ast::Entity>,
) -> Result<(Request, Entities), String> {
    let principal = workload(types, input.principal)?;
    let principal_uid = principal.uid().clone();
    let resource = match input.target {
        Target::Workload(id) if id == input.principal => None,
        _ => Some(resource(types, input)?),
    };
    let resource_uid = resource
        .as_ref()
        .map_or_else(|| principal_uid.clone(), |r| r.uid().clone());
    let entities = [Some(principal), resource, action_entity.cloned()];
    let entities = core_entities::Entities::from_entities(
        entities.into_iter().flatten(),
        None::<&NoEntitiesSchema>,
        // Closed by construction, see the module doc.
        TCComputation::AssumeAlreadyComputed,
        Extensions::all_available(),
    )
    .map_err(|e| e.to_string())?;
    let request = Request::new(
        EntityUid::from(principal_uid),
        action_uid.clone(),
        EntityUid::from(resource_uid),
        context(input)?,
        None,
    )
    .map_err(|e| e.to_string())?;
    Ok((request, Entities::from(entities)))
}

/// `Mcp::Workload::"<id>"` with `trust_domain` and `path`.
fn workload(types: &EntityTypes, spiffe_id: &str) -> Result<ast::Entity, String> {
    let (trust_domain, path) =
        split_spiffe_id(spiffe_id).ok_or_else(|| format!("not a SPIFFE ID: {spiffe_id:?}"))?;
    let attrs = [("trust_domain", trust_domain), ("path", path)];
    Ok(entity(&types.workload, spiffe_id, attrs, None))
}

/// The resource entity; tools, prompts and resources are children of their
/// server (`<server>/<name>`).
fn resource(types: &EntityTypes, input: &PolicyInput<'_>) -> Result<ast::Entity, String> {
    let (entity_type, attr, value) = match input.target {
        Target::Server => {
            let attrs = [("spiffe_id", input.server_spiffe_id)];
            return Ok(entity(&types.server, input.server, attrs, None));
        }
        Target::Workload(id) => return workload(types, id),
        Target::Tool(name) => (&types.tool, "name", name),
        Target::Prompt(name) => (&types.prompt, "name", name),
        Target::Resource(uri) => (&types.resource, "uri", uri),
    };
    let mut id = String::with_capacity(input.server.len() + 1 + value.len());
    id.push_str(input.server);
    id.push('/');
    id.push_str(value);
    let server = EntityUID::from_components(types.server.clone(), Eid::new(input.server), None);
    Ok(entity(entity_type, &id, [(attr, value)], Some(server)))
}

/// An entity with string attributes and at most one parent (which has no
/// ancestors, so the closure is the parent itself).
fn entity<const N: usize>(
    entity_type: &ast::EntityType,
    id: &str,
    attrs: [(&'static str, &str); N],
    parent: Option<EntityUID>,
) -> ast::Entity {
    let uid = EntityUID::from_components(entity_type.clone(), Eid::new(id), None);
    let attrs = attrs.map(|(k, v)| (SmolStr::new_static(k), PartialValue::Value(Value::from(v))));
    ast::Entity::new_with_attr_partial_value(
        uid,
        attrs,
        HashSet::new(),
        parent.into_iter().collect(),
        [],
    )
}

/// `time`, `upstream_spiffe_id`, `session_id?`, `protocol_version?`,
/// `user?`, `arguments?`, `arguments_representable`.
fn context(input: &PolicyInput<'_>) -> Result<Context, String> {
    let mut record = BTreeMap::new();
    record.insert(SmolStr::new_static("time"), datetime(input.now_unix_ms)?);
    record.insert(
        SmolStr::new_static("upstream_spiffe_id"),
        Value::from(input.server_spiffe_id),
    );
    if let Some(user) = input.user {
        record.insert(SmolStr::new_static("user"), user.value().clone());
    }
    if let Some(session_id) = input.session_id {
        record.insert(SmolStr::new_static("session_id"), Value::from(session_id));
    }
    if let Some(version) = input.protocol_version {
        record.insert(
            SmolStr::new_static("protocol_version"),
            Value::from(version),
        );
    }
    let mut representable = true;
    if let Some(raw) = input.arguments {
        match args::to_cedar_record(raw) {
            Some(arguments) => {
                record.insert(SmolStr::new_static("arguments"), arguments);
            }
            None => representable = false,
        }
    }
    record.insert(
        SmolStr::new_static("arguments_representable"),
        Value::from(representable),
    );
    Ok(Context::from(ast::Context::Value(Arc::new(record))))
}

/// A Cedar `datetime` for a Unix time in milliseconds, made by Cedar's own
/// `datetime` constructor (its value type is private) from the RFC 3339 text.
fn datetime(unix_ms: i64) -> Result<Value, String> {
    static CONSTRUCTOR: std::sync::LazyLock<Option<&'static ExtensionFunction>> =
        std::sync::LazyLock::new(|| {
            let name: Name = "datetime".parse().ok()?;
            Extensions::all_available().func(&name).ok()
        });
    let constructor =
        CONSTRUCTOR.ok_or_else(|| "Cedar's datetime extension is not available".to_owned())?;
    let at = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_ms) * 1_000_000)
        .map_err(|e| e.to_string())?;
    let text = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second(),
        at.millisecond()
    );
    match constructor.call(&[Value::from(text.as_str())]) {
        Ok(PartialValue::Value(v)) => Ok(v),
        Ok(PartialValue::Residual(_)) => Err("datetime is not concrete".to_owned()),
        Err(e) => Err(e.to_string()),
    }
}

/// Splits `spiffe://<trust domain><path>`; the path is empty or starts with
/// `/`. The identity layer has validated the ID already; this only refuses
/// what is not a SPIFFE ID at all.
fn split_spiffe_id(id: &str) -> Option<(&str, &str)> {
    let rest = id.strip_prefix("spiffe://")?;
    let (trust_domain, path) = rest.find('/').map_or((rest, ""), |at| rest.split_at(at));
    (!trust_domain.is_empty()).then_some((trust_domain, path))
}

//! Per-message Cedar inputs: the principal and resource entities, the
//! context, and the request, built from plain values.
//!
//! Built with `cedar-policy-core` (pinned to the exact version
//! `cedar-policy` uses) rather than `cedar-policy`'s public API, and handed
//! to Cedar's evaluator as they are. The public constructors evaluate every
//! attribute as a restricted expression and recompute the transitive
//! closure of the entity store on every call: that was ~8 of the ~14 us of
//! a decision. The entities built here have a hierarchy known in advance (a
//! workload has no parents; a tool, prompt or resource has exactly its
//! server, which has none; an action entity comes from the schema with its
//! closure computed), so the closure is asserted, not recomputed, and
//! attributes are stored as values. The context holds only the attributes
//! the policies at hand may read ([`ContextReads`]): parsing the tool
//! arguments and making a `datetime` are the costly ones.
//!
//! Must never build an entity whose ancestors are not closed, nor two
//! entities with the same uid.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use cedar_policy_core::ast::{
    self, Eid, EntityUID, EntityUIDEntry, ExtensionFunction, Literal, Name, PartialValue, Value,
    ValueKind,
};
use cedar_policy_core::entities::{Entities, NoEntitiesSchema, TCComputation};
use cedar_policy_core::extensions::Extensions;
use smol_str::SmolStr;

use super::index::{ContextReads, EntityRef, Reads};
use super::{PolicyInput, ResourceKinds, Target, args};

/// The entity types the gateway builds, parsed once at load.
pub(super) struct EntityTypes {
    pub(super) workload: ast::EntityType,
    pub(super) server: ast::EntityType,
    pub(super) tool: ast::EntityType,
    pub(super) prompt: ast::EntityType,
    pub(super) resource: ast::EntityType,
}

/// A message's resource entity id and the server it belongs to, computed
/// once for the index lookup and the entity.
pub(super) struct Resource<'a> {
    kind: ResourceKinds,
    /// `<server>/<name>` for tools, prompts and resources.
    id: Cow<'a, str>,
    server: Option<&'a str>,
}

/// The decision time, in Unix milliseconds and as the RFC 3339 text
/// Cedar's `datetime` reads, `YYYY-MM-DDTHH:MM:SS.mmmZ`.
#[derive(Clone, Copy)]
pub(super) struct Time {
    unix_ms: i64,
    text: [u8; 24],
}

thread_local! {
    /// The last `datetime` made on this thread and its Unix millisecond:
    /// Cedar's constructor parses the text with regular expressions, and
    /// decisions within the same millisecond need the same (immutable)
    /// value.
    static LAST_TIME: RefCell<Option<(i64, Value)>> = const { RefCell::new(None) };

    /// The principal and the resource entity this thread built last: a
    /// caller sends many messages in a row, and each decision would build
    /// the same entities again.
    static LAST_ENTITIES: RefCell<[Option<Arc<ast::Entity>>; 2]> = const { RefCell::new([None, None]) };
}

/// Which entity of [`LAST_ENTITIES`].
#[derive(Clone, Copy)]
enum Slot {
    Principal = 0,
    Resource = 1,
}

impl EntityTypes {
    /// The entity type the gateway builds for `target`.
    pub(super) fn of(&self, target: Target<'_>) -> &ast::EntityType {
        match target {
            Target::Server => &self.server,
            Target::Tool(_) => &self.tool,
            Target::Prompt(_) => &self.prompt,
            Target::Resource(_) => &self.resource,
            Target::Workload(_) => &self.workload,
        }
    }

    /// The target kind built with entity type `name`, if any.
    pub(super) fn kind(&self, name: &ast::EntityType) -> Option<ResourceKinds> {
        let kinds = [
            (&self.server, Target::Server),
            (&self.tool, Target::Tool("")),
            (&self.prompt, Target::Prompt("")),
            (&self.resource, Target::Resource("")),
            (&self.workload, Target::Workload("")),
        ];
        kinds
            .into_iter()
            .find(|(type_name, _)| *type_name == name)
            .map(|(_, target)| target.kind())
    }
}

impl<'a> Resource<'a> {
    pub(super) fn of(input: &PolicyInput<'a>) -> Resource<'a> {
        let (id, server) = match input.target {
            Target::Server => (Cow::Borrowed(input.server), None),
            Target::Workload(id) => (Cow::Borrowed(id), None),
            Target::Tool(name) | Target::Prompt(name) | Target::Resource(name) => {
                let mut id = String::with_capacity(input.server.len() + 1 + name.len());
                id.push_str(input.server);
                id.push('/');
                id.push_str(name);
                (Cow::Owned(id), Some(input.server))
            }
        };
        Resource {
            kind: input.target.kind(),
            id,
            server,
        }
    }

    pub(super) fn entity(&self) -> EntityRef<'_> {
        EntityRef {
            kind: self.kind,
            id: &self.id,
            server: self.server,
        }
    }
}

/// Refuses what no request can be built from (an ID that is not a SPIFFE
/// ID, a time Cedar cannot represent), before the index is consulted, so
/// that the refusal does not depend on which policies exist.
pub(super) fn check(input: &PolicyInput<'_>) -> Result<Time, String> {
    let not_spiffe = |id: &str| format!("not a SPIFFE ID: {id:?}");
    split_spiffe_id(input.principal).ok_or_else(|| not_spiffe(input.principal))?;
    if let Target::Workload(id) = input.target {
        split_spiffe_id(id).ok_or_else(|| not_spiffe(id))?;
    }
    Time::at(input.now_unix_ms)
}

/// Builds the request and its entity store: the principal and the
/// resource (one entity when the resource is the principal) when the
/// policies at hand may read them (see [`Reads`]), and, when the schema has
/// action groups, the action entity. The context holds the attributes the
/// policies may read.
pub(super) fn build(
    types: &EntityTypes,
    input: &PolicyInput<'_>,
    resource: &Resource<'_>,
    action: (&EntityUIDEntry, Option<&Arc<ast::Entity>>),
    time: Time,
    reads: Reads,
) -> Result<(ast::Request, Entities), String> {
    let principal_uid = uid(&types.workload, input.principal);
    let itself = matches!(input.target, Target::Workload(id) if id == input.principal);
    let resource_uid = if itself {
        principal_uid.clone()
    } else {
        uid(types.of(input.target), &resource.id)
    };
    let principal = if reads.principal || (itself && reads.resource) {
        Some(workload(
            Slot::Principal,
            principal_uid.clone(),
            input.principal,
        )?)
    } else {
        None
    };
    let resource = if reads.resource && !itself {
        Some(resource_entity(types, input, resource_uid.clone())?)
    } else {
        None
    };
    let (action_uid, action_entity) = action;
    let entities = [principal, resource, action_entity.cloned()];
    let entities = Entities::new()
        .add_entities(
            entities.into_iter().flatten(),
            None::<&NoEntitiesSchema>,
            // Closed by construction, see the module doc.
            TCComputation::AssumeAlreadyComputed,
            Extensions::all_available(),
        )
        .map_err(|e| e.to_string())?;
    let request = ast::Request::new_unchecked(
        EntityUIDEntry::known(principal_uid, None),
        action_uid.clone(),
        EntityUIDEntry::known(resource_uid, None),
        Some(context(input, time, reads.context)?),
    );
    Ok((request, entities))
}

fn uid(entity_type: &ast::EntityType, id: &str) -> EntityUID {
    EntityUID::from_components(entity_type.clone(), Eid::new(id), None)
}

/// `Mcp::Workload::"<id>"` with `trust_domain` and `path`.
fn workload(slot: Slot, uid: EntityUID, spiffe_id: &str) -> Result<Arc<ast::Entity>, String> {
    let (trust_domain, path) =
        split_spiffe_id(spiffe_id).ok_or_else(|| format!("not a SPIFFE ID: {spiffe_id:?}"))?;
    Ok(entity(
        slot,
        uid,
        [("trust_domain", trust_domain), ("path", path)],
        None,
    ))
}

/// The resource entity; tools, prompts and resources are children of their
/// server (`<server>/<name>`).
fn resource_entity(
    types: &EntityTypes,
    input: &PolicyInput<'_>,
    uid: EntityUID,
) -> Result<Arc<ast::Entity>, String> {
    let (attr, value) = match input.target {
        Target::Server => {
            let attrs = [("spiffe_id", input.server_spiffe_id)];
            return Ok(entity(Slot::Resource, uid, attrs, None));
        }
        Target::Workload(id) => return workload(Slot::Resource, uid, id),
        Target::Tool(name) | Target::Prompt(name) => ("name", name),
        Target::Resource(uri) => ("uri", uri),
    };
    let server = self::uid(&types.server, input.server);
    Ok(entity(Slot::Resource, uid, [(attr, value)], Some(server)))
}

/// An entity with string attributes and at most one parent (which has no
/// ancestors, so the closure is the parent itself): the one this thread
/// built last in `slot` when it has the same uid, attributes and parent,
/// else a new one.
fn entity<const N: usize>(
    slot: Slot,
    uid: EntityUID,
    attrs: [(&'static str, &str); N],
    parent: Option<EntityUID>,
) -> Arc<ast::Entity> {
    let is_string = |value: Option<&PartialValue>, want: &str| matches!(value, Some(PartialValue::Value(Value { value: ValueKind::Lit(Literal::String(s)), .. })) if s == want);
    let same = |built: &ast::Entity| {
        *built.uid() == uid
            && built.attrs_len() == N
            && attrs.iter().all(|(k, v)| is_string(built.get(k), v))
            && built.ancestors().eq(parent.iter())
    };
    let last = LAST_ENTITIES.with(|last| {
        let last = last.try_borrow().ok()?;
        let built = last[slot as usize].as_ref()?;
        same(built).then(|| Arc::clone(built))
    });
    if let Some(entity) = last {
        return entity;
    }
    let values = attrs.map(|(k, v)| (SmolStr::new_static(k), PartialValue::Value(Value::from(v))));
    let entity = Arc::new(ast::Entity::new_with_attr_partial_value(
        uid,
        values,
        HashSet::new(),
        parent.into_iter().collect(),
        [],
    ));
    LAST_ENTITIES.with(|last| {
        if let Ok(mut last) = last.try_borrow_mut() {
            last[slot as usize] = Some(Arc::clone(&entity));
        }
    });
    entity
}

/// `time`, `upstream_spiffe_id`, `session_id?`, `protocol_version?`,
/// Tool arguments longer than this (as JSON text) are not converted: they
/// are left out of the context and `arguments_representable` is false, so
/// one huge call cannot make every policy evaluation slow.
pub(super) const MAX_ARGUMENTS_BYTES: usize = 64 * 1024;

/// `user?`, `arguments?`, `arguments_representable`: those a candidate
/// policy may read (see [`ContextReads`]); no policy can tell the others
/// absent.
fn context(
    input: &PolicyInput<'_>,
    time: Time,
    reads: ContextReads,
) -> Result<ast::Context, String> {
    let mut record = BTreeMap::new();
    let mut put = |name: &'static str, value: Value| {
        record.insert(SmolStr::new_static(name), value);
    };
    if reads.reads("time") {
        put("time", time.value()?);
    }
    if reads.reads("upstream_spiffe_id") {
        put("upstream_spiffe_id", Value::from(input.server_spiffe_id));
    }
    if let Some(user) = input.user.filter(|_| reads.reads("user")) {
        put("user", user.value().clone());
    }
    if let Some(session_id) = input.session_id.filter(|_| reads.reads("session_id")) {
        put("session_id", Value::from(session_id));
    }
    if let Some(version) = input
        .protocol_version
        .filter(|_| reads.reads("protocol_version"))
    {
        put("protocol_version", Value::from(version));
    }
    if let Some(pin) = input.pin.filter(|_| reads.reads("pin")) {
        put("pin", Value::from(pin));
    }
    let mut representable = true;
    if let Some(raw) = input.arguments {
        if raw.len() > MAX_ARGUMENTS_BYTES {
            // Too large to give to policies: left out, as unrepresentable.
            representable = false;
        } else if reads.reads("arguments") {
            match args::to_cedar_record(raw) {
                Some(arguments) => put("arguments", arguments),
                None => representable = false,
            }
        } else if reads.reads("arguments_representable") {
            representable = args::is_representable(raw);
        }
    }
    if reads.reads("arguments_representable") {
        put("arguments_representable", Value::from(representable));
    }
    Ok(ast::Context::Value(Arc::new(record)))
}

impl Time {
    /// The text for a Unix time in milliseconds; Cedar reads years 0000 to
    /// 9999 only.
    fn at(unix_ms: i64) -> Result<Time, String> {
        let at = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_ms) * 1_000_000)
            .map_err(|e| e.to_string())?;
        let year = u32::try_from(at.year())
            .ok()
            .filter(|year| *year <= 9999)
            .ok_or_else(|| format!("time out of range: {unix_ms} ms"))?;
        let mut text = *b"0000-00-00T00:00:00.000Z";
        let fields = [
            (0, 4, year),
            (5, 2, u32::from(u8::from(at.month()))),
            (8, 2, u32::from(at.day())),
            (11, 2, u32::from(at.hour())),
            (14, 2, u32::from(at.minute())),
            (17, 2, u32::from(at.second())),
            (20, 3, u32::from(at.millisecond())),
        ];
        for (start, width, mut value) in fields {
            for digit in text[start..start + width].iter_mut().rev() {
                // value % 10 < 10: the cast cannot truncate.
                *digit = b'0' + (value % 10) as u8;
                value /= 10;
            }
        }
        Ok(Time { unix_ms, text })
    }

    fn as_str(&self) -> &str {
        // Only ASCII digits and separators are ever written.
        std::str::from_utf8(&self.text).unwrap_or_default()
    }

    /// A Cedar `datetime`, made by Cedar's own `datetime` constructor (its
    /// value type is private) from the text, or the one this thread made
    /// last for the same millisecond.
    fn value(self) -> Result<Value, String> {
        let cached = |last: &RefCell<Option<(i64, Value)>>| match &*last.try_borrow().ok()? {
            Some((ms, value)) if *ms == self.unix_ms => Some(value.clone()),
            _ => None,
        };
        if let Some(value) = LAST_TIME.with(cached) {
            return Ok(value);
        }
        let value = self.construct()?;
        LAST_TIME.with(|last| {
            if let Ok(mut last) = last.try_borrow_mut() {
                *last = Some((self.unix_ms, value.clone()));
            }
        });
        Ok(value)
    }

    fn construct(self) -> Result<Value, String> {
        static CONSTRUCTOR: std::sync::LazyLock<Option<&'static ExtensionFunction>> =
            std::sync::LazyLock::new(|| {
                let name: Name = "datetime".parse().ok()?;
                Extensions::all_available().func(&name).ok()
            });
        let constructor =
            CONSTRUCTOR.ok_or_else(|| "Cedar's datetime extension is not available".to_owned())?;
        match constructor.call(&[Value::from(self.as_str())]) {
            Ok(PartialValue::Value(v)) => Ok(v),
            Ok(PartialValue::Residual(_)) => Err("datetime is not concrete".to_owned()),
            Err(e) => Err(e.to_string()),
        }
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

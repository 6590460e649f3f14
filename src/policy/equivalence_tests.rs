//! Property test: the engine's decision (index, scopes matched here, the
//! context built as far as policies read it) equals Cedar's decision over
//! the whole policy set, for generated policy sets and requests.
//!
//! The reference builds the request with `cedar-policy`'s public API from
//! the same input (entities with their closure computed by Cedar, the full
//! context) and asks `cedar_policy::Authorizer` about every policy, mapping
//! its response as the gateway does: any error denies with the erroring
//! ids, else the determining ids, sorted.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;

use cedar_policy::{
    AuthorizationError, Authorizer, Context, Decision as CedarDecision, Entities, Entity, EntityId,
    EntityUid, PolicyId, PolicySet, Request, Response, RestrictedExpression,
};
use proptest::prelude::*;
use proptest::sample::Index;

use super::{Decision, DecisionReason, PolicyEngine, PolicyInput, Target, User};

const AGENT_A: &str = "spiffe://example.org/ns/demo/sa/agent-a";
const AGENT_B: &str = "spiffe://example.org/ns/demo/sa/agent-b";
const SERVER: &str = "spiffe://example.org/ns/demo/sa/mcp-server";
const STRANGER: &str = "spiffe://other.org/ns/x/sa/y";
const PRINCIPALS: [&str; 4] = [AGENT_A, AGENT_B, SERVER, STRANGER];

/// Principal scopes; `W(a)` and friends are spelled out.
const PRINCIPAL_SCOPES: [&str; 7] = [
    "principal",
    r#"principal == Mcp::Workload::"spiffe://example.org/ns/demo/sa/agent-a""#,
    r#"principal == Mcp::Workload::"spiffe://example.org/ns/demo/sa/mcp-server""#,
    r#"principal in Mcp::Workload::"spiffe://example.org/ns/demo/sa/agent-b""#,
    "principal is Mcp::Workload",
    r#"principal is Mcp::Workload in Mcp::Workload::"spiffe://example.org/ns/demo/sa/agent-a""#,
    r#"principal in Mcp::Workload::"spiffe://example.org/ns/other/sa/nobody""#,
];

/// Conditions every action's context and principal can take.
/// (No literal `true`: `unless { true }` is impossible, a load error.)
/// The last one fails at run time (datetime overflow) in session `s2`.
const COMMON: [&str; 16] = [
    r#"context has session_id && context.session_id == "never""#,
    r#"principal.path like "/ns/demo/*""#,
    r#"principal.trust_domain == "example.org""#,
    r#"principal == Mcp::Workload::"spiffe://example.org/ns/demo/sa/agent-b""#,
    r#"principal in Mcp::Workload::"spiffe://example.org/ns/demo/sa/agent-a""#,
    r#"context has session_id && context.session_id == "s1""#,
    r#"context.upstream_spiffe_id like "*mcp-server""#,
    r#"context.time < datetime("2028-01-01")"#,
    r#"context.time.toTime() < duration("12h")"#,
    r#"context has user && context.user.sub == "alice""#,
    r#"context has user && context.user.claims has groups && context.user.claims.groups.contains("eng")"#,
    "context has protocol_version",
    r#"(if context has user then context else context).upstream_spiffe_id like "*mcp-server""#,
    "resource == resource",
    r#"Mcp::Workload::"spiffe://example.org/ns/demo/sa/agent-a" has path"#,
    r#"context has session_id && context.session_id == "s2" && context.time.offset(duration("106751991167d")) > context.time"#,
];

/// Policies for one kind of action: action scopes, resource scopes and
/// conditions that validate together (strict mode rejects the others).
struct Family {
    actions: &'static [&'static str],
    resources: &'static [&'static str],
    conditions: &'static [&'static str],
}

const TOOL_CALLS: Family = Family {
    actions: &[
        r#"action == Mcp::Action::"tools/call""#,
        r#"action in [Mcp::Action::"tools/call"]"#,
    ],
    resources: &[
        "resource",
        r#"resource == Mcp::Tool::"demo/get_x""#,
        r#"resource == Mcp::Tool::"other/echo""#,
        r#"resource in Mcp::Server::"demo""#,
        r#"resource in Mcp::Tool::"demo/echo""#,
        "resource is Mcp::Tool",
        r#"resource is Mcp::Tool in Mcp::Server::"other""#,
    ],
    conditions: &[
        r#"resource.name like "get_*""#,
        r#"resource.name == "echo""#,
        r#"resource in Mcp::Server::"demo""#,
        "context.arguments_representable",
        r#"context has arguments && context.arguments has repo && context.arguments.repo == "public""#,
        r#"context has arguments.repo && context.arguments.repo like "p*""#,
        "context has arguments && context.arguments has limit && context.arguments.limit * 4611686018427387904 > 0",
    ],
};

/// Tool calls, the common case, come up three times as often.
const FAMILIES: [Family; 10] = [
    TOOL_CALLS,
    TOOL_CALLS,
    TOOL_CALLS,
    Family {
        actions: &[
            r#"action == Mcp::Action::"tools/list""#,
            r#"action in [Mcp::Action::"tools/list", Mcp::Action::"initialize"]"#,
        ],
        resources: &[
            "resource",
            r#"resource == Mcp::Server::"demo""#,
            r#"resource in Mcp::Server::"other""#,
            "resource is Mcp::Server",
            r#"resource is Mcp::Server in Mcp::Server::"demo""#,
        ],
        conditions: &[r#"resource.spiffe_id like "*mcp-server""#],
    },
    Family {
        actions: &[
            r#"action == Mcp::Action::"ping""#,
            r#"action in [Mcp::Action::"ping", Mcp::Action::"notifications/cancelled"]"#,
        ],
        resources: &[
            "resource",
            r#"resource == Mcp::Server::"demo""#,
            r#"resource == Mcp::Workload::"spiffe://example.org/ns/demo/sa/agent-a""#,
            r#"resource in Mcp::Server::"demo""#,
            "resource is Mcp::Workload",
            "resource is Mcp::Server",
            r#"resource is Mcp::Workload in Mcp::Workload::"spiffe://example.org/ns/demo/sa/agent-b""#,
        ],
        conditions: &[],
    },
    Family {
        actions: &[
            r#"action == Mcp::Action::"elicitation/create""#,
            r#"action in [Mcp::Action::"elicitation/create", Mcp::Action::"roots/list"]"#,
        ],
        resources: &[
            "resource",
            r#"resource == Mcp::Workload::"spiffe://example.org/ns/demo/sa/agent-a""#,
            r#"resource in Mcp::Workload::"spiffe://example.org/ns/demo/sa/agent-b""#,
            "resource is Mcp::Workload",
        ],
        conditions: &[
            r#"resource.path like "/ns/demo/*""#,
            "resource == principal",
            "resource has trust_domain",
        ],
    },
    Family {
        actions: &[r#"action == Mcp::Action::"prompts/get""#],
        resources: &[
            "resource",
            r#"resource == Mcp::Prompt::"demo/p""#,
            r#"resource in Mcp::Server::"demo""#,
            "resource is Mcp::Prompt",
        ],
        conditions: &[
            r#"resource.name like "p*""#,
            "context.arguments_representable",
        ],
    },
    Family {
        actions: &[
            r#"action == Mcp::Action::"resources/read""#,
            r#"action in [Mcp::Action::"resources/read", Mcp::Action::"resources/subscribe"]"#,
        ],
        resources: &[
            "resource",
            r#"resource == Mcp::Resource::"demo/file:a""#,
            r#"resource in Mcp::Server::"other""#,
            r#"resource is Mcp::Resource in Mcp::Server::"demo""#,
        ],
        conditions: &[r#"resource.uri like "file:*""#],
    },
    Family {
        actions: &[r#"action == Mcp::Action::"completion/complete""#],
        resources: &[
            "resource",
            r#"resource is Mcp::Prompt in Mcp::Server::"demo""#,
            r#"resource in Mcp::Server::"demo""#,
            "resource is Mcp::Resource",
        ],
        conditions: &[],
    },
    Family {
        actions: &[
            "action",
            r#"action in [Mcp::Action::"tools/call", Mcp::Action::"tools/list", Mcp::Action::"ping"]"#,
        ],
        resources: &["resource", r#"resource in Mcp::Server::"demo""#],
        conditions: &[],
    },
];

/// Methods and the targets a request may name for them; tools/call more
/// often.
const METHODS: [(&str, &[Target<'static>]); 15] = [
    ("tools/call", TOOLS),
    ("tools/call", TOOLS),
    ("tools/call", TOOLS),
    ("tools/call", TOOLS),
    ("tools/list", SERVERS),
    ("initialize", SERVERS),
    ("ping", SERVERS_AND_WORKLOADS),
    ("notifications/cancelled", SERVERS_AND_WORKLOADS),
    ("prompts/get", &[Target::Prompt("p"), Target::Prompt("q")]),
    (
        "completion/complete",
        &[
            Target::Server,
            Target::Prompt("p"),
            Target::Resource("file:a"),
        ],
    ),
    ("resources/read", RESOURCES),
    ("resources/subscribe", RESOURCES),
    ("elicitation/create", WORKLOADS),
    ("roots/list", WORKLOADS),
    ("sampling/createMessage", WORKLOADS),
];
const TOOLS: &[Target<'static>] = &[
    Target::Tool("get_x"),
    Target::Tool("echo"),
    Target::Tool("delete_repository"),
];
const SERVERS: &[Target<'static>] = &[Target::Server];
const RESOURCES: &[Target<'static>] = &[Target::Resource("file:a"), Target::Resource("http:b")];
/// [`ITSELF`] stands for the caller's own identity.
const WORKLOADS: &[Target<'static>] = &[
    Target::Workload(AGENT_A),
    Target::Workload(AGENT_B),
    Target::Workload(SERVER),
    Target::Workload(ITSELF),
];
const ITSELF: &str = "itself";
const SERVERS_AND_WORKLOADS: &[Target<'static>] = &[
    Target::Server,
    Target::Workload(AGENT_A),
    Target::Workload(ITSELF),
];
const SERVER_NAMES: [&str; 2] = ["demo", "other"];

/// Tool arguments: representable or not, of the declared types or not.
const ARGUMENTS: [&str; 7] = [
    "{}",
    r#"{"repo":"public"}"#,
    r#"{"repo":"private","limit":1}"#,
    r#"{"repo":7,"limit":"x"}"#,
    r#"{"limit":5}"#,
    r#"{"repo":"public","n":null}"#,
    r#"{"x":[1,{"y":true}],"f":1.5}"#,
];
const CLAIMS: [&str; 2] = [
    r#"{"sub":"alice","iss":"https://idp.example","groups":["eng"]}"#,
    r#"{"sub":"bob","iss":"https://idp.example","groups":["ops"],"n":null}"#,
];
/// 2025-11-24T16:00:00.000Z, 2029-03-01T03:04:05.678Z, 2027-06-30T23:59:59.999Z.
const TIMES: [i64; 3] = [1_764_000_000_000, 1_867_633_445_678, 1_814_399_999_999];

#[derive(Debug, Clone)]
struct PolicySpec {
    forbid: bool,
    principal: Index,
    family: Index,
    action: Index,
    resource: Index,
    /// `(unless, condition)`; a condition index picks from the family's
    /// conditions and then [`COMMON`].
    conditions: Vec<(bool, Index)>,
}

#[derive(Debug, Clone)]
struct RequestSpec {
    principal: Index,
    method: Index,
    target: Index,
    server: Index,
    arguments: Option<Index>,
    session: Option<&'static str>,
    protocol: bool,
    user: Option<Index>,
    time: Index,
}

/// An engine input with the values it borrows.
struct Owned {
    principal: &'static str,
    method: &'static str,
    target: Target<'static>,
    server: &'static str,
    arguments: Option<&'static str>,
    session: Option<&'static str>,
    protocol: Option<&'static str>,
    user: Option<(&'static str, User)>,
    now: i64,
}

impl PolicySpec {
    fn text(&self, n: usize) -> String {
        let family = self.family.get(&FAMILIES);
        let mut text = format!(
            "@id(\"p{n}\") {} ({}, {}, {})",
            if self.forbid { "forbid" } else { "permit" },
            self.principal.get(&PRINCIPAL_SCOPES),
            self.action.get(family.actions),
            self.resource.get(family.resources),
        );
        // The family's own conditions, about the resource, as likely as
        // the common ones.
        let own = family.conditions.iter().cycle().take(COMMON.len());
        let own = if family.conditions.is_empty() {
            None
        } else {
            Some(own)
        };
        let all: Vec<&str> = own.into_iter().flatten().chain(&COMMON).copied().collect();
        let mut used = Vec::new();
        for (unless, condition) in &self.conditions {
            // `when { c } unless { c }` is impossible, a load error.
            let condition = *condition.get(&all);
            if used.contains(&condition) {
                continue;
            }
            used.push(condition);
            let clause = if *unless { "unless" } else { "when" };
            text.push_str(&format!(" {clause} {{ {condition} }}"));
        }
        text.push_str(";\n");
        text
    }
}

impl RequestSpec {
    fn input(&self) -> Owned {
        let (method, targets) = *self.method.get(&METHODS);
        let principal = *self.principal.get(&PRINCIPALS);
        let target = match *self.target.get(targets) {
            Target::Workload(ITSELF) => Target::Workload(principal),
            target => target,
        };
        let user = self.user.map(|claims| {
            let json = *claims.get(&CLAIMS);
            (
                json,
                User::from_claims_json(json, None).expect("test claims"),
            )
        });
        Owned {
            principal,
            method,
            target,
            server: SERVER_NAMES[self.server.index(SERVER_NAMES.len())],
            arguments: self.arguments.map(|a| *a.get(&ARGUMENTS)),
            session: self.session,
            protocol: self.protocol.then_some("2025-11-25"),
            user,
            now: *self.time.get(&TIMES),
        }
    }
}

impl Owned {
    fn input(&self) -> PolicyInput<'_> {
        PolicyInput {
            principal: self.principal,
            action: self.method,
            server: self.server,
            server_spiffe_id: SERVER,
            target: self.target,
            arguments: self.arguments,
            session_id: self.session,
            protocol_version: self.protocol,
            user: self.user.as_ref().map(|(_, user)| user),
            now_unix_ms: self.now,
            pin: None,
        }
    }
}

fn policy_spec() -> impl Strategy<Value = PolicySpec> {
    (
        any::<bool>(),
        any::<Index>(),
        any::<Index>(),
        any::<Index>(),
        any::<Index>(),
        prop::collection::vec((any::<bool>(), any::<Index>()), 0..3),
    )
        .prop_map(
            |(forbid, principal, family, action, resource, conditions)| PolicySpec {
                forbid,
                principal,
                family,
                action,
                resource,
                conditions,
            },
        )
}

fn request_spec() -> impl Strategy<Value = RequestSpec> {
    (
        (
            any::<Index>(),
            any::<Index>(),
            any::<Index>(),
            any::<Index>(),
        ),
        prop::option::of(any::<Index>()),
        prop::option::of(prop::sample::select(vec!["s1", "s2"])),
        any::<bool>(),
        prop::option::of(any::<Index>()),
        any::<Index>(),
    )
        .prop_map(
            |((principal, method, target, server), arguments, session, protocol, user, time)| {
                RequestSpec {
                    principal,
                    method,
                    target,
                    server,
                    arguments,
                    session,
                    protocol,
                    user,
                    time,
                }
            },
        )
}

fn uid(type_name: &str, id: &str) -> EntityUid {
    EntityUid::from_type_name_and_id(type_name.parse().expect("type name"), EntityId::new(id))
}

fn workload(id: &str) -> Entity {
    let rest = id.strip_prefix("spiffe://").expect("a SPIFFE ID");
    let (trust_domain, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let attrs = [
        (
            "trust_domain",
            RestrictedExpression::new_string(trust_domain.into()),
        ),
        ("path", RestrictedExpression::new_string(path.into())),
    ];
    let attrs = attrs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
    Entity::new(uid("Mcp::Workload", id), attrs, HashSet::new()).expect("workload entity")
}

/// The resource entity: a server, a workload, or a child of its server.
fn resource(input: &Owned) -> Entity {
    let (type_name, attr, value) = match input.target {
        Target::Server => {
            let attrs = HashMap::from([(
                "spiffe_id".to_owned(),
                RestrictedExpression::new_string(SERVER.into()),
            )]);
            return Entity::new(uid("Mcp::Server", input.server), attrs, HashSet::new())
                .expect("server entity");
        }
        Target::Workload(id) => return workload(id),
        Target::Tool(name) => ("Mcp::Tool", "name", name),
        Target::Prompt(name) => ("Mcp::Prompt", "name", name),
        Target::Resource(uri) => ("Mcp::Resource", "uri", uri),
    };
    let id = format!("{}/{value}", input.server);
    let attrs = HashMap::from([(
        attr.to_owned(),
        RestrictedExpression::new_string(value.into()),
    )]);
    let parents = HashSet::from([uid("Mcp::Server", input.server)]);
    Entity::new(uid(type_name, &id), attrs, parents).expect("resource entity")
}

/// A JSON value as Cedar holds it, or `None` (null, fraction, too large).
fn json_value(value: &serde_json::Value) -> Option<RestrictedExpression> {
    use serde_json::Value as J;
    Some(match value {
        J::Null => return None,
        J::Bool(b) => RestrictedExpression::new_bool(*b),
        J::Number(n) => RestrictedExpression::new_long(n.as_i64()?),
        J::String(s) => RestrictedExpression::new_string(s.clone()),
        J::Array(items) => {
            RestrictedExpression::new_set(items.iter().map(json_value).collect::<Option<Vec<_>>>()?)
        }
        J::Object(fields) => RestrictedExpression::new_record(
            fields
                .iter()
                .map(|(k, v)| Some((k.clone(), json_value(v)?)))
                .collect::<Option<Vec<_>>>()?,
        )
        .ok()?,
    })
}

/// The full context, every attribute the gateway documents.
fn context(input: &Owned) -> Context {
    let ms = input.now;
    let at = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .expect("test time");
    let text = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second(),
        ms.rem_euclid(1000)
    );
    let mut pairs = vec![
        ("time".to_owned(), RestrictedExpression::new_datetime(text)),
        (
            "upstream_spiffe_id".to_owned(),
            RestrictedExpression::new_string(SERVER.into()),
        ),
    ];
    let string = |s: &str| RestrictedExpression::new_string(s.into());
    if let Some(session) = input.session {
        pairs.push(("session_id".to_owned(), string(session)));
    }
    if let Some(version) = input.protocol {
        pairs.push(("protocol_version".to_owned(), string(version)));
    }
    if let Some((json, _)) = &input.user {
        let serde_json::Value::Object(claims) = serde_json::from_str(json).expect("claims") else {
            panic!("claims are an object");
        };
        let kept = claims
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), json_value(v)?)));
        let record = [
            (
                "sub".to_owned(),
                string(claims["sub"].as_str().expect("sub")),
            ),
            (
                "iss".to_owned(),
                string(claims["iss"].as_str().expect("iss")),
            ),
            (
                "claims".to_owned(),
                RestrictedExpression::new_record(kept).expect("claims record"),
            ),
        ];
        let user = RestrictedExpression::new_record(record).expect("user record");
        pairs.push(("user".to_owned(), user));
    }
    let mut representable = true;
    if let Some(json) = input.arguments {
        match json_value(&serde_json::from_str(json).expect("arguments")) {
            Some(arguments) => pairs.push(("arguments".to_owned(), arguments)),
            None => representable = false,
        }
    }
    pairs.push((
        "arguments_representable".to_owned(),
        RestrictedExpression::new_bool(representable),
    ));
    Context::from_pairs(pairs).expect("context")
}

/// Cedar's answer over the whole set, labelled as the gateway labels it.
fn reference(policies: &PolicySet, input: &Owned) -> Decision {
    let principal = workload(input.principal);
    let resource = match input.target {
        Target::Workload(id) if id == input.principal => None,
        _ => Some(resource(input)),
    };
    let resource_uid = resource.as_ref().unwrap_or(&principal).uid();
    let request = Request::new(
        principal.uid(),
        uid("Mcp::Action", input.method),
        resource_uid,
        context(input),
        None,
    )
    .expect("request");
    let entities = Entities::from_entities([Some(principal), resource].into_iter().flatten(), None)
        .expect("entities");
    decision(&Authorizer::new().is_authorized(&request, policies, &entities))
}

fn decision(response: &Response) -> Decision {
    let id = |id: &PolicyId| AsRef::<str>::as_ref(id).to_owned();
    let mut errors: Vec<String> = response
        .diagnostics()
        .errors()
        .map(|AuthorizationError::PolicyEvaluationError(e)| id(e.policy_id()))
        .collect();
    errors.sort();
    let mut ids: Vec<String> = response.diagnostics().reason().map(id).collect();
    ids.sort();
    let (allowed, reason, policy_ids) = match response.decision() {
        _ if !errors.is_empty() => (false, DecisionReason::Error, errors),
        CedarDecision::Allow => (true, DecisionReason::Permitted, ids),
        CedarDecision::Deny if ids.is_empty() => (false, DecisionReason::NoPermit, ids),
        CedarDecision::Deny => (false, DecisionReason::Forbidden, ids),
    };
    Decision {
        allowed,
        policy_ids,
        reason,
    }
}

/// The shipped schema, declaring the tool arguments and token claims the
/// policies read.
fn schema() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/policies/mcp.cedarschema");
    let mut schema = std::fs::read_to_string(path).expect("shipped schema");
    for (empty, declared) in [
        ("type ToolArguments = {};", "repo?: String, limit?: Long"),
        ("type UserClaims = {};", "groups?: Set<String>"),
    ] {
        assert!(schema.contains(empty), "shipped schema changed: {empty}");
        schema = schema.replace(empty, &empty.replace("{}", &format!("{{ {declared} }}")));
    }
    schema
}

/// The policy set as Cedar parses it, each policy under its `@id`.
fn reference_set(text: &str) -> PolicySet {
    let parsed = PolicySet::from_str(text).expect("generated policies parse");
    let policies = parsed.policies().map(|p| {
        let id = p.annotation("id").expect("@id");
        p.new_id(PolicyId::new(id))
    });
    PolicySet::from_policies(policies).expect("unique ids")
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn indexed_decision_equals_cedar_over_the_whole_set(
        specs in prop::collection::vec(policy_spec(), 1..16),
        requests in prop::collection::vec(request_spec(), 1..24),
    ) {
        let text: String = specs.iter().enumerate().map(|(n, s)| s.text(n)).collect();
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("mcp.cedarschema"), schema()).expect("write schema");
        std::fs::write(dir.path().join("p.cedar"), &text).expect("write policies");
        let engine = PolicyEngine::load_dir(dir.path())
            .unwrap_or_else(|e| panic!("generated policies must load: {e}\n{text}"));
        let policies = reference_set(&text);
        for spec in &requests {
            let owned = spec.input();
            let input = owned.input();
            let got = engine.decide(&input);
            let want = reference(&policies, &owned);
            prop_assert_eq!(got, want, "\npolicies:\n{}\ninput: {:?}", text, input);
        }
    }
}

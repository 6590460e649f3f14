//! Decision tables over the shipped policies and small policy directories
//! written to temporary folders.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{Decision, DecisionReason, PolicyEngine, PolicyError, PolicyInput, Target};

const SHIPPED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/policies");
const AGENT: &str = "spiffe://example.org/ns/demo/sa/agent";
const AGENT_B: &str = "spiffe://example.org/ns/demo/sa/agent-b";
const MCP_SERVER: &str = "spiffe://example.org/ns/demo/sa/mcp-server";
/// A fixed decision time (2025-11-24T16:00:00Z).
const NOW_MS: i64 = 1_764_000_000_000;

/// File name and contents of a policy directory.
type Files<'a> = Vec<(&'a str, &'a str)>;

/// A policy directory under the system temp dir, removed on drop.
pub(super) struct TempDir(PathBuf);

/// One row of a decision table.
struct Case {
    name: &'static str,
    principal: &'static str,
    action: &'static str,
    server: &'static str,
    target: Target<'static>,
    arguments: Option<&'static str>,
    session_id: Option<&'static str>,
    protocol_version: Option<&'static str>,
    want: (bool, DecisionReason, &'static [&'static str]),
}

impl TempDir {
    pub(super) fn new(files: &[(&str, &str)]) -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("policy-test-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for (name, text) in files {
            let path = dir.join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        TempDir(dir)
    }

    pub(super) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Case {
    /// A message from `principal` to the `demo` server.
    const fn new(
        name: &'static str,
        principal: &'static str,
        action: &'static str,
        target: Target<'static>,
    ) -> Case {
        Case {
            name,
            principal,
            action,
            server: "demo",
            target,
            arguments: None,
            session_id: None,
            protocol_version: None,
            want: (false, DecisionReason::NoPermit, &[]),
        }
    }

    const fn args(mut self, json: &'static str) -> Case {
        self.arguments = Some(json);
        self
    }

    const fn server(mut self, server: &'static str) -> Case {
        self.server = server;
        self
    }

    const fn session(mut self, session_id: &'static str, version: &'static str) -> Case {
        self.session_id = Some(session_id);
        self.protocol_version = Some(version);
        self
    }

    const fn permit(mut self, ids: &'static [&'static str]) -> Case {
        self.want = (true, DecisionReason::Permitted, ids);
        self
    }

    const fn forbid(mut self, ids: &'static [&'static str]) -> Case {
        self.want = (false, DecisionReason::Forbidden, ids);
        self
    }

    const fn error(mut self, ids: &'static [&'static str]) -> Case {
        self.want = (false, DecisionReason::Error, ids);
        self
    }
}

pub(super) fn shipped_schema() -> String {
    std::fs::read_to_string(Path::new(SHIPPED).join("mcp.cedarschema")).unwrap()
}

/// The shipped schema with `ToolArguments` declaring `fields`.
fn schema_with_tool_arguments(fields: &str) -> String {
    let schema = shipped_schema();
    let empty = "type ToolArguments = {};";
    assert!(
        schema.contains(empty),
        "shipped schema no longer declares `{empty}`"
    );
    schema.replace(empty, &format!("type ToolArguments = {{ {fields} }};"))
}

pub(super) fn load(files: &[(&str, &str)]) -> PolicyEngine {
    let dir = TempDir::new(files);
    PolicyEngine::load_dir(dir.path()).unwrap_or_else(|e| panic!("load failed: {e}"))
}

pub(super) fn load_err(files: &[(&str, &str)]) -> PolicyError {
    let dir = TempDir::new(files);
    match PolicyEngine::load_dir(dir.path()) {
        Ok(_) => panic!("load of {files:?} should fail"),
        Err(e) => e,
    }
}

fn run_table(engine: &PolicyEngine, cases: &[Case]) {
    let mut failures = Vec::new();
    for case in cases {
        let input = PolicyInput {
            principal: case.principal,
            action: case.action,
            server: case.server,
            server_spiffe_id: MCP_SERVER,
            target: case.target,
            arguments: case.arguments,
            session_id: case.session_id,
            protocol_version: case.protocol_version,
            user: None,
            now_unix_ms: NOW_MS,
            pin: None,
        };
        let got = engine.decide(&input);
        let (allowed, reason, ids) = case.want;
        let want = Decision {
            allowed,
            reason,
            policy_ids: ids.iter().map(|s| s.to_string()).collect(),
        };
        if got != want {
            failures.push(format!("{}: got {got:?}, want {want:?}", case.name));
        }
    }
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn shipped_demo_policies_decide_as_documented() {
    use Target::{Server, Tool, Workload};
    let engine = PolicyEngine::load_dir(Path::new(SHIPPED)).unwrap();
    const LIFE: &[&str] = &["agent-lifecycle"];
    const LIFE_B: &[&str] = &["agent-b-lifecycle"];
    const CALLS: &[&str] = &["agent-calls-echo-and-getters"];
    const NO_DELETE: &[&str] = &["nobody-deletes-repos"];
    let cases = [
        Case::new("agent initialize", AGENT, "initialize", Server).permit(LIFE),
        Case::new(
            "agent initialized",
            AGENT,
            "notifications/initialized",
            Server,
        )
        .permit(LIFE),
        Case::new("agent ping", AGENT, "ping", Server).permit(LIFE),
        Case::new("agent tools/list", AGENT, "tools/list", Server).permit(LIFE),
        Case::new("agent cancelled", AGENT, "notifications/cancelled", Server).permit(LIFE),
        Case::new("agent server/discover", AGENT, "server/discover", Server).permit(LIFE),
        Case::new("agent echo", AGENT, "tools/call", Tool("echo"))
            .args(r#"{"message":"hi"}"#)
            .permit(CALLS),
        Case::new("agent get_*", AGENT, "tools/call", Tool("get_weather")).permit(CALLS),
        Case::new("agent get_ exactly", AGENT, "tools/call", Tool("get_")).permit(CALLS),
        Case::new(
            "agent delete",
            AGENT,
            "tools/call",
            Tool("delete_repository"),
        )
        .forbid(NO_DELETE),
        Case::new(
            "agent delete elsewhere",
            AGENT,
            "tools/call",
            Tool("delete_repository"),
        )
        .server("github")
        .forbid(NO_DELETE),
        Case::new("agent other tool", AGENT, "tools/call", Tool("add")),
        Case::new("agent echo prefix", AGENT, "tools/call", Tool("echo2")),
        Case::new(
            "agent echo on other server",
            AGENT,
            "tools/call",
            Tool("echo"),
        )
        .server("other"),
        Case::new(
            "agent tools/list on other server",
            AGENT,
            "tools/list",
            Server,
        )
        .server("other"),
        Case::new("agent resources/list", AGENT, "resources/list", Server),
        Case::new("agent ping to a workload", AGENT, "ping", Workload(AGENT_B)),
        Case::new(
            "unknown principal",
            "spiffe://example.org/ns/demo/sa/mallory",
            "tools/list",
            Server,
        ),
        Case::new(
            "agent of other trust domain",
            "spiffe://evil.org/ns/demo/sa/agent",
            "tools/list",
            Server,
        ),
        Case::new("unknown method", AGENT, "tools/destroy", Server),
        Case::new(
            "unknown method, tool target",
            AGENT,
            "tools/execute",
            Tool("echo"),
        ),
        Case::new("method case differs", AGENT, "Tools/List", Server),
        Case::new("agent-b initialize", AGENT_B, "initialize", Server).permit(LIFE_B),
        Case::new("agent-b tools/list", AGENT_B, "tools/list", Server).permit(LIFE_B),
        Case::new("agent-b echo", AGENT_B, "tools/call", Tool("echo")),
        Case::new("agent-b get_*", AGENT_B, "tools/call", Tool("get_weather")),
        Case::new(
            "agent-b delete",
            AGENT_B,
            "tools/call",
            Tool("delete_repository"),
        )
        .forbid(NO_DELETE),
        Case::new("not a SPIFFE ID", "alice", "tools/list", Server).error(&[]),
        Case::new(
            "empty trust domain",
            "spiffe:///ns/demo",
            "tools/list",
            Server,
        )
        .error(&[]),
        Case::new("tools/call without tool", AGENT, "tools/call", Server).error(&[]),
        Case::new("tools/list on a tool", AGENT, "tools/list", Tool("echo")).error(&[]),
        Case::new(
            "sampling on a server",
            MCP_SERVER,
            "sampling/createMessage",
            Server,
        )
        .error(&[]),
    ];
    run_table(&engine, &cases);
}

#[test]
fn shipped_policy_set_reports_count_and_version() {
    let engine = PolicyEngine::load_dir(Path::new(SHIPPED)).unwrap();
    assert_eq!(engine.policy_count(), 5);
    let version = engine.version();
    let hex = version.strip_prefix("sha256:").unwrap();
    assert_eq!(hex.len(), 16, "{version}");
    assert!(
        hex.chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()),
        "{version}"
    );
    assert_eq!(
        PolicyEngine::load_dir(Path::new(SHIPPED))
            .unwrap()
            .version(),
        version
    );
}

#[test]
fn determining_names_every_loaded_policy_with_its_effect() {
    let engine = PolicyEngine::load_dir(Path::new(SHIPPED)).unwrap();
    let mut determining: Vec<_> = engine.determining().collect();
    determining.sort_unstable_by_key(|(id, _)| *id);
    assert_eq!(
        determining,
        [
            ("agent-b-lifecycle", DecisionReason::Permitted),
            ("agent-calls-echo-and-getters", DecisionReason::Permitted),
            ("agent-lifecycle", DecisionReason::Permitted),
            (
                "mcp-server-may-elicit-from-agent",
                DecisionReason::Permitted
            ),
            ("nobody-deletes-repos", DecisionReason::Forbidden),
        ]
    );
}

#[test]
fn every_shipped_policy_file_loads_alone_with_the_schema() {
    let schema = shipped_schema();
    let mut count = 0;
    for entry in std::fs::read_dir(SHIPPED).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("cedar") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let engine = load(&[("mcp.cedarschema", &schema), ("p.cedar", &text)]);
        assert!(
            engine.policy_count() > 0,
            "{} has no policy",
            path.display()
        );
        count += 1;
    }
    assert!(count >= 1, "no *.cedar file in policies/");
}

#[test]
fn version_changes_with_any_file_and_ignores_others() {
    let schema = shipped_schema();
    let permit = r#"@id("a") permit (principal, action == Mcp::Action::"ping", resource);"#;
    let base = load(&[("mcp.cedarschema", &schema), ("a.cedar", permit)]);
    let renamed = load(&[("mcp.cedarschema", &schema), ("b.cedar", permit)]);
    let edited = load(&[
        ("mcp.cedarschema", &schema),
        ("a.cedar", &permit.replace("\"a\"", "\"b\"")),
    ]);
    let with_readme = load(&[
        ("mcp.cedarschema", &schema),
        ("a.cedar", permit),
        ("README.md", "notes"),
    ]);
    assert_ne!(base.version(), renamed.version());
    assert_ne!(base.version(), edited.version());
    assert_eq!(base.version(), with_readme.version());
}

#[test]
fn arguments_and_context_decide() {
    use Target::{Server, Tool, Workload};
    let schema = schema_with_tool_arguments("repo?: String, limit?: Long");
    let policies = r#"
        @id("public-repos-only")
        permit (principal, action == Mcp::Action::"tools/call", resource == Mcp::Tool::"demo/get_repo")
        when { context has arguments.repo && context.arguments.repo == "public" };

        @id("no-unreadable-arguments")
        forbid (principal, action == Mcp::Action::"tools/call", resource)
        unless { context.arguments_representable };

        @id("limit-cap")
        forbid (principal, action == Mcp::Action::"tools/call", resource)
        when { context has arguments.limit && context.arguments.limit > 100 };

        @id("ping-in-session")
        permit (principal, action == Mcp::Action::"ping", resource)
        when { context has session_id && context has protocol_version
               && context.protocol_version == "2025-11-25" };

        @id("server-samples-agent")
        permit (
          principal == Mcp::Workload::"spiffe://example.org/ns/demo/sa/mcp-server",
          action == Mcp::Action::"sampling/createMessage",
          resource is Mcp::Workload
        )
        when { resource.trust_domain == principal.trust_domain && resource.path like "/ns/demo/*" };
    "#;
    let engine = load(&[("mcp.cedarschema", &schema), ("args.cedar", policies)]);
    const PUBLIC: &[&str] = &["public-repos-only"];
    const UNREADABLE: &[&str] = &["no-unreadable-arguments"];
    const CAP: &[&str] = &["limit-cap"];
    let repo = Tool("get_repo");
    let cases = [
        Case::new("public", AGENT, "tools/call", repo)
            .args(r#"{"repo":"public"}"#)
            .permit(PUBLIC),
        Case::new("private", AGENT, "tools/call", repo).args(r#"{"repo":"private"}"#),
        Case::new("no arguments", AGENT, "tools/call", repo),
        Case::new("empty arguments", AGENT, "tools/call", repo).args("{}"),
        Case::new("other tool", AGENT, "tools/call", Tool("get_other"))
            .args(r#"{"repo":"public"}"#),
        Case::new("undeclared extras", AGENT, "tools/call", repo)
            .args(r#"{"repo":"public","deep":{"list":[1,"x",true,{"k":-3}]},"e":"\u00e9\n"}"#)
            .permit(PUBLIC),
        Case::new("repo of wrong type", AGENT, "tools/call", repo).args(r#"{"repo":5}"#),
        Case::new("forged entity", AGENT, "tools/call", repo)
            .args(r#"{"repo":{"__entity":{"type":"Mcp::Workload","id":"x"}}}"#),
        Case::new("forged extension", AGENT, "tools/call", repo)
            .args(r#"{"repo":{"__extn":{"fn":"decimal","arg":"1.0"}}}"#),
        Case::new("null inside", AGENT, "tools/call", repo)
            .args(r#"{"repo":"public","x":null}"#)
            .forbid(UNREADABLE),
        Case::new("fraction inside", AGENT, "tools/call", repo)
            .args(r#"{"repo":"public","x":[1.5]}"#)
            .forbid(UNREADABLE),
        Case::new("u64 above i64", AGENT, "tools/call", repo)
            .args(r#"{"repo":"public","x":18446744073709551615}"#)
            .forbid(UNREADABLE),
        Case::new("duplicate key", AGENT, "tools/call", repo)
            .args(r#"{"repo":"public","repo":"private"}"#)
            .forbid(UNREADABLE),
        Case::new("array arguments", AGENT, "tools/call", repo)
            .args(r#"["public"]"#)
            .forbid(UNREADABLE),
        Case::new("null arguments", AGENT, "tools/call", repo)
            .args("null")
            .forbid(UNREADABLE),
        Case::new("limit ok", AGENT, "tools/call", repo)
            .args(r#"{"repo":"public","limit":100}"#)
            .permit(PUBLIC),
        Case::new("limit i64 min", AGENT, "tools/call", repo)
            .args(r#"{"repo":"public","limit":-9223372036854775808}"#)
            .permit(PUBLIC),
        Case::new("limit over cap", AGENT, "tools/call", repo)
            .args(r#"{"repo":"public","limit":500}"#)
            .forbid(CAP),
        Case::new("limit of wrong type errs", AGENT, "tools/call", repo)
            .args(r#"{"repo":"public","limit":"many"}"#)
            .error(CAP),
        Case::new("ping in session", AGENT, "ping", Server)
            .session("s-1", "2025-11-25")
            .permit(&["ping-in-session"]),
        Case::new("ping other version", AGENT, "ping", Server).session("s-1", "2025-06-18"),
        Case::new("ping without session", AGENT, "ping", Server),
        Case::new(
            "sampling an agent",
            MCP_SERVER,
            "sampling/createMessage",
            Workload(AGENT),
        )
        .permit(&["server-samples-agent"]),
        Case::new(
            "sampling by an agent",
            AGENT,
            "sampling/createMessage",
            Workload(AGENT_B),
        ),
        Case::new(
            "sampling other domain",
            MCP_SERVER,
            "sampling/createMessage",
            Workload("spiffe://evil.org/ns/demo/sa/a"),
        ),
        Case::new(
            "sampling itself, one entity",
            MCP_SERVER,
            "sampling/createMessage",
            Workload(MCP_SERVER),
        )
        .permit(&["server-samples-agent"]),
    ];
    run_table(&engine, &cases);
}

#[test]
fn unknown_methods_are_denied_even_by_a_permit_all() {
    let all = r#"@id("everything") permit (principal, action, resource);"#;
    let engine = load(&[("mcp.cedarschema", &shipped_schema()), ("all.cedar", all)]);
    let cases = [
        Case::new("known", AGENT, "tools/call", Target::Tool("x")).permit(&["everything"]),
        Case::new("unknown", AGENT, "admin/shutdown", Target::Server),
        Case::new("empty", AGENT, "", Target::Server),
        Case::new("type name as method", AGENT, "Mcp::Action", Target::Server),
    ];
    run_table(&engine, &cases);
}

#[test]
fn action_groups_in_the_schema_work() {
    let schema = r#"
        namespace Mcp {
          entity Workload = { trust_domain: String, path: String };
          entity Server = { spiffe_id: String };
          entity Tool in [Server] = { name: String };
          entity Prompt in [Server] = { name: String };
          entity Resource in [Server] = { uri: String };
          action "lifecycle";
          action "session" in ["lifecycle"];
          action "ping", "initialize" in ["session"] appliesTo { principal: Workload, resource: Server };
          action "tools/list" appliesTo { principal: Workload, resource: Server };
        }
    "#;
    let policy =
        r#"@id("lifecycle") permit (principal, action in Mcp::Action::"lifecycle", resource);"#;
    let engine = load(&[("s.cedarschema", schema), ("p.cedar", policy)]);
    let cases = [
        Case::new("ping", AGENT, "ping", Target::Server).permit(&["lifecycle"]),
        Case::new("initialize", AGENT, "initialize", Target::Server).permit(&["lifecycle"]),
        Case::new("tools/list", AGENT, "tools/list", Target::Server),
        Case::new(
            "the group itself is no method",
            AGENT,
            "lifecycle",
            Target::Server,
        ),
    ];
    run_table(&engine, &cases);
}

#[test]
fn entities_are_built_for_what_conditions_read() {
    let policies = r#"
        @id("own-path") permit (principal, action == Mcp::Action::"elicitation/create", resource)
            when { resource.path like "/ns/demo/*" };
        @id("demo-getters") permit (principal, action == Mcp::Action::"tools/call", resource)
            when { resource.name like "get_*" && principal.path like "/ns/demo/*" };
        @id("literal") permit (principal, action == Mcp::Action::"tools/list", resource)
            when { Mcp::Workload::"spiffe://example.org/ns/demo/sa/agent" has path };
    "#;
    let engine = load(&[
        ("mcp.cedarschema", &shipped_schema()),
        ("p.cedar", policies),
    ]);
    let cases = [
        // The resource is the caller itself: one entity, read as the resource.
        Case::new(
            "to itself",
            MCP_SERVER,
            "elicitation/create",
            Target::Workload(MCP_SERVER),
        )
        .permit(&["own-path"]),
        Case::new(
            "to the agent",
            MCP_SERVER,
            "elicitation/create",
            Target::Workload(AGENT),
        )
        .permit(&["own-path"]),
        Case::new("both read", AGENT, "tools/call", Target::Tool("get_x"))
            .permit(&["demo-getters"]),
        // An entity named by a literal is in the store when it is the principal.
        Case::new("literal is the caller", AGENT, "tools/list", Target::Server)
            .permit(&["literal"]),
        Case::new(
            "literal is not the caller",
            AGENT_B,
            "tools/list",
            Target::Server,
        ),
    ];
    run_table(&engine, &cases);
}

/// A thread reuses the principal and resource entities of its last
/// decision only when they are built from the same values: decisions that
/// alternate callers, tools and servers (tool `a/get_y` of server `x` and
/// `get_y` of server `x/a` share an entity id) each see their own.
#[test]
fn entities_reused_from_the_last_decision_are_the_same_entities() {
    const OTHER: &str = "spiffe://example.org/ns/other/sa/agent";
    let policies = r#"
        @id("demo-getters") permit (principal, action == Mcp::Action::"tools/call", resource)
            when { resource.name like "get_*" && principal.path like "/ns/demo/*" };
        @id("servers-by-id") permit (principal, action == Mcp::Action::"tools/list", resource)
            when { resource.spiffe_id == "spiffe://example.org/ns/demo/sa/mcp-server" };
    "#;
    let engine = load(&[
        ("mcp.cedarschema", &shipped_schema()),
        ("p.cedar", policies),
    ]);
    let call = |name, principal, tool| Case::new(name, principal, "tools/call", Target::Tool(tool));
    let cases = [
        call("agent get", AGENT, "get_x").permit(&["demo-getters"]),
        call("agent get again", AGENT, "get_x").permit(&["demo-getters"]),
        call("other get", OTHER, "get_x"),
        call("agent get after other", AGENT, "get_x").permit(&["demo-getters"]),
        call("agent put", AGENT, "put_x"),
        call("agent get after put", AGENT, "get_x").permit(&["demo-getters"]),
        // The same entity id `x/a/get_y`, another name and server.
        call("get_y of x/a", AGENT, "get_y")
            .server("x/a")
            .permit(&["demo-getters"]),
        call("a/get_y of x", AGENT, "a/get_y").server("x"),
        call("get_y of x/a again", AGENT, "get_y")
            .server("x/a")
            .permit(&["demo-getters"]),
        Case::new("server", AGENT, "tools/list", Target::Server).permit(&["servers-by-id"]),
    ];
    run_table(&engine, &cases);
    // Cases of other threads do not meet this thread's entities.
    std::thread::scope(|scope| {
        scope.spawn(|| run_table(&engine, &cases[2..]));
        scope.spawn(|| run_table(&engine, &cases[..5]));
    });
}

#[test]
fn principal_index_keeps_general_policies() {
    let policies = r#"
        @id("agent-pings") permit (principal == Mcp::Workload::"spiffe://example.org/ns/demo/sa/agent",
                                   action == Mcp::Action::"ping", resource);
        @id("anyone-in-demo-pings") permit (principal is Mcp::Workload, action == Mcp::Action::"ping", resource)
            when { principal.path like "/ns/demo/*" };
        @id("no-b") forbid (principal, action, resource)
            when { principal == Mcp::Workload::"spiffe://example.org/ns/demo/sa/agent-b" };
    "#;
    let engine = load(&[
        ("mcp.cedarschema", &shipped_schema()),
        ("p.cedar", policies),
    ]);
    let cases = [
        Case::new("agent: own and general", AGENT, "ping", Target::Server)
            .permit(&["agent-pings", "anyone-in-demo-pings"]),
        Case::new(
            "other demo workload",
            "spiffe://example.org/ns/demo/sa/c",
            "ping",
            Target::Server,
        )
        .permit(&["anyone-in-demo-pings"]),
        Case::new(
            "outside demo",
            "spiffe://example.org/ns/prod/sa/c",
            "ping",
            Target::Server,
        ),
        Case::new("agent-b forbidden", AGENT_B, "ping", Target::Server).forbid(&["no-b"]),
    ];
    run_table(&engine, &cases);
}

#[test]
fn hidden_entries_and_directories_are_skipped() {
    let permit = r#"@id("a") permit (principal, action == Mcp::Action::"ping", resource);"#;
    let engine = load(&[
        ("mcp.cedarschema", &shipped_schema()),
        ("a.cedar", permit),
        (".hidden.cedar", "not cedar at all"),
        ("..data/other.cedarschema", "not a schema"),
        ("sub.cedar/x.cedar", "not cedar either"),
    ]);
    assert_eq!(engine.policy_count(), 1);
}

#[test]
fn load_errors_name_the_file_and_policy() {
    let schema = shipped_schema();
    let ok = r#"@id("ok") permit (principal, action == Mcp::Action::"ping", resource);"#;
    let forbid_ok = ok.replace("permit", "forbid");
    let cases: Vec<(&str, Files<'_>, &str)> = vec![
        (
            "missing schema",
            vec![("a.cedar", ok)],
            "no *.cedarschema file in policy directory",
        ),
        (
            "two schemas",
            vec![
                ("a.cedarschema", &schema),
                ("b.cedarschema", &schema),
                ("a.cedar", ok),
            ],
            "more than one *.cedarschema file in policy directory",
        ),
        (
            "schema syntax",
            vec![("bad.cedarschema", "namespace Mcp { entity }")],
            "bad.cedarschema: invalid Cedar schema",
        ),
        (
            "schema without Tool",
            vec![(
                "s.cedarschema",
                "namespace Mcp { entity Workload; entity Server; }",
            )],
            "s.cedarschema: the schema lacks entity type Mcp::Tool,",
        ),
        (
            "syntax",
            vec![
                ("mcp.cedarschema", &schema),
                ("bad.cedar", "\n\npermit (principal, action resource);"),
            ],
            "bad.cedar:3:",
        ),
        (
            "missing id",
            vec![
                ("mcp.cedarschema", &schema),
                ("a.cedar", ok),
                (
                    "b.cedar",
                    "\n@id(\"x\") permit (principal, action, resource);\npermit (principal, action, resource);",
                ),
            ],
            "b.cedar:3: policy #2 in the file has no @id",
        ),
        (
            "empty id",
            vec![
                ("mcp.cedarschema", &schema),
                (
                    "b.cedar",
                    "@id(\"  \") permit (principal, action, resource);",
                ),
            ],
            "b.cedar:1: policy #1 in the file has no @id",
        ),
        (
            "duplicate id",
            vec![
                ("mcp.cedarschema", &schema),
                ("a.cedar", ok),
                ("b.cedar", &forbid_ok),
            ],
            "b.cedar:1: policy @id(\"ok\") is already used in a.cedar",
        ),
        (
            "validation",
            vec![
                ("mcp.cedarschema", &schema),
                ("a.cedar", ok),
                (
                    "v.cedar",
                    "@id(\"typo\")\npermit (principal, action == Mcp::Action::\"tools/call\", resource)\nwhen { resource.nmae == \"echo\" };",
                ),
            ],
            "v.cedar:3:8: for policy `typo`",
        ),
        (
            "undeclared argument",
            vec![
                ("mcp.cedarschema", &schema),
                (
                    "v.cedar",
                    "@id(\"arg\") permit (principal, action == Mcp::Action::\"tools/call\", resource)\nwhen { context has arguments.repo && context.arguments.repo == \"x\" };",
                ),
            ],
            "v.cedar:1:1: for policy `arg`, policy is impossible: the policy expression evaluates to false for all valid requests (a policy that can never apply is rejected; if it reads tool arguments, declare them in ToolArguments)",
        ),
        (
            "no applicable action",
            vec![
                ("mcp.cedarschema", &schema),
                (
                    "v.cedar",
                    "@id(\"tl\") permit (principal, action == Mcp::Action::\"tools/list\", resource is Mcp::Tool);",
                ),
            ],
            "v.cedar:1:",
        ),
        (
            "bidi control",
            vec![
                ("mcp.cedarschema", &schema),
                (
                    "v.cedar",
                    "@id(\"bidi\") permit (principal, action == Mcp::Action::\"tools/call\", resource) when { resource.name == \"a\u{202e}b\" };",
                ),
            ],
            "for policy `bidi`",
        ),
        (
            "unknown action in policy",
            vec![
                ("mcp.cedarschema", &schema),
                (
                    "v.cedar",
                    "@id(\"na\") permit (principal, action == Mcp::Action::\"tools/nope\", resource);",
                ),
            ],
            "for policy `na`",
        ),
        (
            "template",
            vec![
                ("mcp.cedarschema", &schema),
                (
                    "t.cedar",
                    "@id(\"tpl\") permit (principal == ?principal, action, resource);",
                ),
            ],
            "t.cedar:1: template @id(\"tpl\") has slots",
        ),
    ];
    let mut failures = Vec::new();
    for (name, files, want) in cases {
        let message = load_err(&files).to_string();
        if !message.contains(want) {
            failures.push(format!("{name}: {message:?} lacks {want:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn load_errors_are_typed() {
    let schema = shipped_schema();
    assert!(matches!(
        load_err(&[("a.cedar", "")]),
        PolicyError::NoSchema { .. }
    ));
    let dup = load_err(&[
        ("mcp.cedarschema", &schema),
        (
            "a.cedar",
            r#"@id("x") permit (principal, action, resource);"#,
        ),
        (
            "b.cedar",
            r#"@id("x") permit (principal, action, resource);"#,
        ),
    ]);
    assert!(
        matches!(&dup, PolicyError::DuplicateId { file, id, first_file, .. } if file == "b.cedar" && id == "x" && first_file == "a.cedar"),
        "{dup:?}"
    );
    let dir = TempDir::new(&[]);
    let missing = PolicyEngine::load_dir(&dir.path().join("missing"))
        .err()
        .unwrap();
    assert!(
        matches!(missing, PolicyError::ReadDir { .. }),
        "{missing:?}"
    );
}

/// A policy naming a workload by an ID the gateway would never see (not
/// canonical, or not a workload's) is refused at load with its file, line
/// and @id: it would otherwise silently never apply.
#[test]
fn workload_ids_in_policies_must_be_canonical() {
    let schema = shipped_schema();
    let policy = |principal: &str| {
        format!(
            "@id(\"p\")\npermit (principal == Mcp::Workload::\"{principal}\", action, resource);"
        )
    };
    let in_condition = |id: &str| {
        format!(
            "@id(\"p\")\npermit (principal, action, resource) when {{ principal == Mcp::Workload::\"{id}\" }};"
        )
    };
    for text in [
        policy("SPIFFE://example.org/agent-a"),
        policy("spiffe://EXAMPLE.ORG/agent-a"),
        policy("spiffe://example.org/agent-a/"),
        policy("spiffe://example.org"),
        in_condition("spiffe://Example.org/agent-a"),
    ] {
        let err = load_err(&[("mcp.cedarschema", &schema), ("a.cedar", &text)]);
        assert!(
            matches!(&err, PolicyError::WorkloadId { file, line: 1, id, .. } if file == "a.cedar" && id == "p"),
            "{text}: {err:?}"
        );
    }
    load(&[
        ("mcp.cedarschema", &schema),
        ("a.cedar", &policy("spiffe://example.org/agent-a")),
    ]);
}

#[test]
fn reason_labels_are_stable() {
    let labels = [
        DecisionReason::Permitted,
        DecisionReason::Forbidden,
        DecisionReason::NoPermit,
        DecisionReason::Error,
    ]
    .map(|r| r.as_str());
    assert_eq!(labels, ["permit", "forbid", "default_deny", "error"]);
}

#[test]
fn engine_is_shareable() {
    fn assert_send_sync<T: Send + Sync + 'static>() {}
    assert_send_sync::<PolicyEngine>();
}

#[test]
fn user_time_and_upstream_identity_decide() {
    let schema = shipped_schema().replace(
        "type UserClaims = {};",
        "type UserClaims = { groups?: Set<String> };",
    );
    let policies = r#"
@id("alice-before-2030")
permit (principal, action == Mcp::Action::"tools/call", resource)
when {
  context has user && context.user.sub == "alice" &&
  context.user.claims has groups && context.user.claims.groups.contains("eng") &&
  context.time < datetime("2030-01-01T00:00:00Z") &&
  context.upstream_spiffe_id == "spiffe://example.org/ns/demo/sa/mcp-server"
};
@id("no-tools-at-night")
forbid (principal, action == Mcp::Action::"tools/call", resource)
when { context.time.toTime() < duration("6h") };
"#;
    let engine = load(&[("mcp.cedarschema", &schema), ("p.cedar", policies)]);
    let alice = super::User::from_claims_json(
        r#"{"sub":"alice","iss":"https://idp.example","groups":["eng"]}"#,
        None,
    )
    .unwrap();
    let bob = super::User::from_claims_json(
        r#"{"sub":"bob","iss":"https://idp.example","groups":["eng"]}"#,
        None,
    )
    .unwrap();
    let decide = |user: Option<&super::User>, now: i64, server_id: &str| {
        engine.decide(&PolicyInput {
            principal: AGENT,
            action: "tools/call",
            server: "demo",
            server_spiffe_id: server_id,
            target: Target::Tool("echo"),
            arguments: None,
            session_id: None,
            protocol_version: None,
            user,
            now_unix_ms: now,
            pin: None,
        })
    };
    let ok = decide(Some(&alice), NOW_MS, MCP_SERVER);
    assert!(ok.allowed, "{ok:?}");
    assert_eq!(ok.policy_ids, ["alice-before-2030"]);
    // Same agent, another user: denied by default.
    assert_eq!(
        decide(Some(&bob), NOW_MS, MCP_SERVER).reason,
        DecisionReason::NoPermit
    );
    // No token: no user.
    assert_eq!(
        decide(None, NOW_MS, MCP_SERVER).reason,
        DecisionReason::NoPermit
    );
    // After 2030.
    assert!(!decide(Some(&alice), 1_900_000_000_000, MCP_SERVER).allowed);
    // Another upstream identity.
    assert!(!decide(Some(&alice), NOW_MS, "spiffe://example.org/other").allowed);
    // 02:00 UTC: the forbid wins.
    let night = NOW_MS - 14 * 3_600_000;
    let got = decide(Some(&alice), night, MCP_SERVER);
    assert_eq!(got.reason, DecisionReason::Forbidden, "{got:?}");
    assert_eq!(got.policy_ids, ["no-tools-at-night"]);
}

#[test]
fn large_sets_are_validated_in_parts_with_the_same_errors() {
    // Two parts on any machine with two threads; one part otherwise.
    let mut text = String::new();
    for i in 0..2_100 {
        text.push_str(&format!(
            "@id(\"p{i}\") permit (principal, action == Mcp::Action::\"ping\", resource);\n"
        ));
    }
    text.push_str(
        "@id(\"late\") permit (principal, action == Mcp::Action::\"ping\", resource)\n\
         when { resource.name == \"x\" };\n",
    );
    let schema = shipped_schema();
    let PolicyError::Validation { errors, .. } =
        load_err(&[("mcp.cedarschema", &schema), ("many.cedar", &text)])
    else {
        panic!("a validation error");
    };
    assert!(!errors.is_empty());
    for error in &errors {
        assert!(error.starts_with("many.cedar:2102:"), "{errors:?}");
        assert!(error.contains("policy `late`"), "{errors:?}");
    }
    text.truncate(text.find("@id(\"late\")").unwrap());
    let engine = load(&[("mcp.cedarschema", &schema), ("many.cedar", &text)]);
    assert_eq!(engine.policy_count(), 2_100);
}

#[test]
fn oversized_arguments_are_left_out_as_unrepresentable() {
    let schema = schema_with_tool_arguments("text?: String");
    let policies = r#"
@id("echo")
permit (principal, action == Mcp::Action::"tools/call", resource == Mcp::Tool::"demo/echo");
@id("no-opaque-arguments")
forbid (principal, action == Mcp::Action::"tools/call", resource)
unless { context.arguments_representable };
@id("no-secret-text")
forbid (principal, action == Mcp::Action::"tools/call", resource)
when { context has arguments && context.arguments has text && context.arguments.text like "*secret*" };
"#;
    let engine = load(&[("mcp.cedarschema", &schema), ("p.cedar", policies)]);
    let decide = |args: &str| {
        engine.decide(&PolicyInput {
            principal: AGENT,
            action: "tools/call",
            server: "demo",
            server_spiffe_id: MCP_SERVER,
            target: Target::Tool("echo"),
            arguments: Some(args),
            session_id: None,
            protocol_version: None,
            user: None,
            now_unix_ms: NOW_MS,
            pin: None,
        })
    };
    assert!(decide(r#"{"text":"hi"}"#).allowed);
    assert_eq!(
        decide(r#"{"text":"a secret"}"#).policy_ids,
        ["no-secret-text"]
    );
    let pad = "x".repeat(super::request::MAX_ARGUMENTS_BYTES);
    let big = format!(r#"{{"text":"secret {pad}"}}"#);
    let got = decide(&big);
    assert!(!got.allowed);
    assert_eq!(got.policy_ids, ["no-opaque-arguments"], "{got:?}");
}

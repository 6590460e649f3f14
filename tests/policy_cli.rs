//! The policy tooling on the command line: `policy test` runs the shipped
//! cases and reports failures, `explain` decides one request and says why,
//! `policy matrix` tabulates who may call what and diffs two policy sets.
//! Exit codes: 0 ok, 1 a check failed, 2 unusable input.

use std::path::{Path, PathBuf};
use std::process::Command;

const AGENT: &str = "spiffe://example.org/ns/demo/sa/agent";
const AGENT_B: &str = "spiffe://example.org/ns/demo/sa/agent-b";
const MCP_SERVER: &str = "spiffe://example.org/ns/demo/sa/mcp-server";

/// Exit code, stdout, stderr.
struct Run {
    code: i32,
    out: String,
    err: String,
}

fn gateway(args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_spiffe-mcp-gateway"))
        .args(args)
        .env_remove("SPIFFE_ENDPOINT_SOCKET")
        .env_remove("RUST_LOG")
        .output()
        .expect("run the gateway binary");
    Run {
        code: out.status.code().expect("exit code"),
        out: String::from_utf8_lossy(&out.stdout).into_owned(),
        err: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn shipped(name: &str) -> String {
    std::fs::read_to_string(repo("policies").join(name)).unwrap()
}

/// A policy directory: the shipped schema with `edit` applied, and `files`.
fn policy_dir(schema_edit: &[(&str, &str)], files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut schema = shipped("mcp.cedarschema");
    for (from, to) in schema_edit {
        assert!(schema.contains(from), "shipped schema lacks {from}");
        schema = schema.replace(from, to);
    }
    std::fs::write(dir.path().join("mcp.cedarschema"), schema).unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    dir
}

fn path(dir: &tempfile::TempDir) -> &str {
    dir.path().to_str().unwrap()
}

const CASE_HEADER: &str =
    "server: demo\nserver_spiffe_id: spiffe://example.org/ns/demo/sa/mcp-server\ncases:\n";

#[test]
fn policy_test_passes_on_the_shipped_policies() {
    let run = gateway(&["policy", "test", repo("policies").to_str().unwrap()]);
    assert_eq!(run.code, 0, "{}{}", run.out, run.err);
    assert!(run.out.contains(" passed, 0 failed"), "{}", run.out);
    assert!(!run.out.contains("FAIL"), "{}", run.out);
    // Every shipped policy is exercised by at least one case that names it.
    let cases = shipped("demo.test.yaml");
    for line in shipped("demo.cedar").lines() {
        if let Some(id) = line
            .strip_prefix("@id(\"")
            .and_then(|l| l.strip_suffix("\")"))
        {
            assert!(
                cases.contains(&format!("policies: [{id}]")),
                "no case names {id}"
            );
        }
    }
}

#[test]
fn policy_test_names_the_failing_case_and_why() {
    let cases = format!(
        "{CASE_HEADER}
  - name: agent-b may echo
    principal: {AGENT_B}
    action: tools/call
    tool: echo
    expect: allow
  - name: agent echoes
    principal: {AGENT}
    action: tools/call
    tool: echo
    arguments: {{text: hi}}
    expect: allow
    policies: [agent-calls-echo-and-getters]
"
    );
    let dir = policy_dir(
        &[],
        &[
            ("demo.cedar", &shipped("demo.cedar")),
            ("a.test.yaml", &cases),
        ],
    );
    let run = gateway(&["policy", "test", path(&dir)]);
    assert_eq!(run.code, 1, "{}{}", run.out, run.err);
    let fail = run
        .out
        .lines()
        .find(|l| l.starts_with("FAIL"))
        .expect("a FAIL line");
    assert!(
        fail.contains("a.test.yaml: agent-b may echo: expected allow; got deny, reason default_deny, policies []"),
        "{fail}"
    );
    assert_eq!(run.out.matches("FAIL").count(), 1, "{}", run.out);
    assert!(run.out.contains("1 passed, 1 failed"), "{}", run.out);
}

#[test]
fn policy_test_refuses_bad_test_files_and_empty_runs() {
    let demo = shipped("demo.cedar");
    let typo = format!(
        "{CASE_HEADER}  - name: typo\n    principal: {AGENT}\n    action: ping\n    expct: allow\n"
    );
    let dir = policy_dir(&[], &[("demo.cedar", &demo), ("bad.test.yaml", &typo)]);
    let run = gateway(&["policy", "test", path(&dir)]);
    assert_eq!(run.code, 2, "{}{}", run.out, run.err);
    assert!(
        run.err.contains("bad.test.yaml")
            && run.err.contains("case #1 \"typo\"")
            && run.err.contains("unknown field `expct`"),
        "{}",
        run.err
    );
    // YAML that JSON cannot carry is refused, naming the case.
    let args = format!(
        "{CASE_HEADER}  - name: odd args\n    principal: {AGENT}\n    action: tools/call\n    tool: echo\n    arguments: {{1: x}}\n    expect: allow\n"
    );
    let dir = policy_dir(&[], &[("demo.cedar", &demo), ("args.test.yaml", &args)]);
    let run = gateway(&["policy", "test", path(&dir)]);
    assert_eq!(run.code, 2, "{}{}", run.out, run.err);
    assert!(
        run.err
            .contains("args.test.yaml: case #1 \"odd args\": arguments:"),
        "{}",
        run.err
    );
    // No case ran: not a success.
    let dir = policy_dir(&[], &[("demo.cedar", &demo)]);
    let run = gateway(&["policy", "test", path(&dir)]);
    assert_eq!(run.code, 1, "{}{}", run.out, run.err);
    assert!(run.out.contains("no test cases"), "{}", run.out);
    // Policies that do not load: the error names file, line and column.
    let dir = policy_dir(
        &[],
        &[(
            "broken.cedar",
            "@id(\"x\")\npermit (principal, action, resource) when { foo };",
        )],
    );
    let run = gateway(&["policy", "test", path(&dir)]);
    assert_eq!(run.code, 2, "{}{}", run.out, run.err);
    assert!(run.err.contains("broken.cedar:2:"), "{}", run.err);
}

/// `explain` against `dir` with the demo upstream, plus `args`.
fn explain(dir: &str, args: &[&str]) -> Run {
    let mut all = vec![
        "explain",
        "--policies",
        dir,
        "--server",
        "demo",
        "--server-spiffe-id",
        MCP_SERVER,
    ];
    all.extend_from_slice(args);
    gateway(&all)
}

fn json(run: &Run) -> serde_json::Value {
    assert_eq!(run.code, 0, "{}{}", run.out, run.err);
    serde_json::from_str(&run.out).unwrap_or_else(|e| panic!("{e}: {}", run.out))
}

#[test]
fn explain_says_allow_forbid_and_default_deny() {
    let policies = repo("policies");
    let policies = policies.to_str().unwrap();
    let run = explain(
        policies,
        &[
            "--principal",
            AGENT,
            "--method",
            "tools/call",
            "--tool",
            "echo",
        ],
    );
    assert_eq!(run.code, 0, "{}{}", run.out, run.err);
    for line in [
        "decision:",
        "allow",
        "reason:",
        "permit",
        "[agent-calls-echo-and-getters]",
        "resource:",
        "Mcp::Tool::\"demo/echo\"",
        "policy set:",
        "sha256:",
    ] {
        assert!(run.out.contains(line), "{line}: {}", run.out);
    }
    let forbid = json(&explain(
        policies,
        &[
            "--principal",
            AGENT,
            "--action",
            "tools/call",
            "--tool",
            "delete_repository",
            "--arguments",
            r#"{"repo":"acme/site"}"#,
            "--time",
            "2026-01-01T10:00:00Z",
            "--format",
            "json",
        ],
    ));
    assert_eq!(forbid["allowed"], false);
    assert_eq!(forbid["reason"], "forbid");
    assert_eq!(
        forbid["policy_ids"],
        serde_json::json!(["nobody-deletes-repos"])
    );
    assert_eq!(forbid["errors"], serde_json::Value::Null);
    assert_eq!(forbid["request"]["arguments"]["repo"], "acme/site");
    assert_eq!(forbid["request"]["time"], "2026-01-01T10:00:00Z");
    assert!(
        forbid["policy_set"]["version"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );
    let deny = json(&explain(
        policies,
        &[
            "--caller",
            AGENT_B,
            "--action",
            "tools/call",
            "--tool",
            "echo",
            "--format",
            "json",
        ],
    ));
    assert_eq!(
        (&deny["decision"], &deny["reason"], &deny["policy_ids"]),
        (
            &serde_json::json!("deny"),
            &serde_json::json!("default_deny"),
            &serde_json::json!([])
        )
    );
    let elicit = json(&explain(
        policies,
        &[
            "--principal",
            MCP_SERVER,
            "--action",
            "elicitation/create",
            "--workload",
            AGENT,
            "--format",
            "json",
        ],
    ));
    assert_eq!(elicit["reason"], "permit");
    assert_eq!(
        elicit["request"]["resource"],
        format!("Mcp::Workload::\"{AGENT}\"")
    );
}

#[test]
fn explain_reports_evaluation_errors_and_users() {
    let dir = policy_dir(
        &[
            (
                "type ToolArguments = {};",
                "type ToolArguments = { limit?: Long };",
            ),
            (
                "type UserClaims = {};",
                "type UserClaims = { groups?: Set<String> };",
            ),
        ],
        &[(
            "p.cedar",
            r#"
@id("eng-may-search")
permit (principal, action == Mcp::Action::"tools/call", resource == Mcp::Tool::"demo/search")
when { context has user && context.user.claims has groups && context.user.claims.groups.contains("eng") };

@id("limit-cap")
forbid (principal, action == Mcp::Action::"tools/call", resource)
when { context has arguments && context.arguments has limit && context.arguments.limit > 100 };
"#,
        )],
    );
    let search = [
        "--principal",
        AGENT,
        "--action",
        "tools/call",
        "--tool",
        "search",
    ];
    let with = |extra: &[&str]| {
        let mut args = search.to_vec();
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--format", "json"]);
        json(&explain(path(&dir), &args))
    };
    let eng = r#"{"sub":"alice","iss":"https://idp.example","groups":["eng"]}"#;
    let sales = r#"{"sub":"bob","iss":"https://idp.example","groups":["sales"]}"#;
    assert_eq!(with(&[])["reason"], "default_deny");
    let alice = with(&["--user-claims", eng]);
    assert_eq!(alice["allowed"], true, "{alice}");
    assert_eq!(alice["policy_ids"], serde_json::json!(["eng-may-search"]));
    assert_eq!(alice["request"]["user"]["sub"], "alice");
    assert_eq!(with(&["--user-claims", sales])["reason"], "default_deny");
    // A forbid that errors at run time denies, naming the erring policy.
    let error = with(&["--user-claims", eng, "--arguments", r#"{"limit":"many"}"#]);
    assert_eq!(error["allowed"], false, "{error}");
    assert_eq!(error["reason"], "error");
    assert_eq!(error["policy_ids"], serde_json::json!(["limit-cap"]));
    assert_eq!(
        error["errors"]["policy_ids"],
        serde_json::json!(["limit-cap"])
    );
    let mut args = search.to_vec();
    args.extend_from_slice(&["--user-claims", eng, "--arguments", r#"{"limit":"many"}"#]);
    let text = explain(path(&dir), &args);
    assert_eq!(text.code, 0, "{}{}", text.out, text.err);
    assert!(
        text.out.contains("error") && text.out.contains("[limit-cap]"),
        "{}",
        text.out
    );
    assert_eq!(
        with(&["--user-claims", eng, "--arguments", r#"{"limit":500}"#])["reason"],
        "forbid"
    );
}

#[test]
fn explain_takes_the_upstream_from_the_config_and_refuses_bad_input() {
    let config = repo("examples/gateway.yaml");
    let run = gateway(&[
        "explain",
        "--config",
        config.to_str().unwrap(),
        "--principal",
        AGENT,
        "--action",
        "tools/list",
        "--format",
        "json",
    ]);
    let report = json(&run);
    assert_eq!(report["reason"], "permit");
    assert_eq!(report["request"]["server"], "demo");
    assert_eq!(report["request"]["server_spiffe_id"], MCP_SERVER);
    let policies = repo("policies");
    let policies = policies.to_str().unwrap();
    for (args, says) in [
        (
            vec![
                "--principal",
                AGENT,
                "--action",
                "tools/call",
                "--tool",
                "echo",
                "--arguments",
                "{",
            ],
            "--arguments",
        ),
        (
            vec!["--principal", "agent", "--action", "ping"],
            "--principal",
        ),
        (
            vec![
                "--principal",
                AGENT,
                "--action",
                "ping",
                "--user-claims",
                r#"{"sub":"a"}"#,
            ],
            "--user-claims",
        ),
        (
            vec!["--principal", AGENT, "--action", "ping", "--time", "noon"],
            "--time",
        ),
    ] {
        let run = explain(policies, &args);
        assert_eq!(run.code, 2, "{args:?}: {}{}", run.out, run.err);
        assert!(run.err.contains(says), "{args:?}: {}", run.err);
    }
}

fn matrix(args: &[&str]) -> Run {
    let inventory = repo("examples/matrix/inventory.yaml");
    let mut all = vec![
        "policy",
        "matrix",
        "--inventory",
        inventory.to_str().unwrap(),
        "--time",
        "2026-01-01T10:00:00Z",
    ];
    all.extend_from_slice(args);
    gateway(&all)
}

#[test]
fn matrix_tabulates_the_shipped_policies() {
    let policies = repo("policies");
    let run = matrix(&["--policies", policies.to_str().unwrap()]);
    assert_eq!(run.code, 0, "{}{}", run.out, run.err);
    let rows: Vec<Vec<&str>> = run
        .out
        .lines()
        .take(3)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows,
        [
            vec![
                "identity",
                "demo/echo",
                "demo/get_weather",
                "demo/delete_repository",
                "demo/count_roots",
                "demo/confirm",
                "demo/ask_roots",
                "demo/ask_confirm"
            ],
            vec![
                "agent", "allow", "allow", "deny", "allow", "allow", "allow", "allow"
            ],
            vec![
                "agent-b", "deny", "deny", "deny", "deny", "deny", "deny", "deny"
            ],
        ]
    );
    assert!(
        run.out.contains(&format!("agent-b = {AGENT_B}")),
        "{}",
        run.out
    );
    // Columns line up.
    let header = run.out.lines().next().unwrap();
    let agent = run.out.lines().nth(1).unwrap();
    assert_eq!(header.find("demo/echo"), agent.find("allow"), "{}", run.out);

    // The same tools, read from a saved tools/list response.
    let dir = tempfile::tempdir().unwrap();
    let inline = std::fs::read_to_string(repo("examples/matrix/inventory.yaml")).unwrap();
    let tools = inline
        .lines()
        .find(|l| l.trim_start().starts_with("tools: ["))
        .unwrap();
    let saved = repo("examples/matrix/demo-tools.json");
    let from = inline.replace(
        tools,
        &format!("    tools_from: {:?}", saved.display().to_string()),
    );
    std::fs::write(dir.path().join("inv.yaml"), from).unwrap();
    let run_from = gateway(&[
        "policy",
        "matrix",
        "--inventory",
        dir.path().join("inv.yaml").to_str().unwrap(),
        "--policies",
        policies.to_str().unwrap(),
    ]);
    assert_eq!(run_from.code, 0, "{}{}", run_from.out, run_from.err);
    let table = |text: &str| text.lines().take(3).map(str::to_owned).collect::<Vec<_>>();
    assert_eq!(table(&run_from.out), table(&run.out));

    let json = matrix(&["--policies", policies.to_str().unwrap(), "--format", "json"]);
    let report: serde_json::Value = serde_json::from_str(&json.out).unwrap();
    let decisions = report["decisions"].as_array().unwrap();
    assert_eq!(decisions.len(), 14);
    let delete = decisions
        .iter()
        .find(|d| d["identity"] == AGENT && d["name"] == "delete_repository")
        .unwrap();
    assert_eq!(delete["kind"], "tool");
    assert_eq!(delete["server"], "demo");
    assert_eq!(delete["allowed"], false);
    assert_eq!(
        delete["policy_ids"],
        serde_json::json!(["nobody-deletes-repos"])
    );
}

#[test]
fn matrix_against_an_older_set_prints_exactly_what_changes() {
    // Copy of the shipped policies that lets agent-b delete repositories:
    // a permit, and an exception in the forbid (which would beat it).
    let demo = shipped("demo.cedar");
    let forbid = "when { resource.name == \"delete_repository\" };";
    assert!(demo.contains(forbid), "demo.cedar changed its forbid");
    let new = demo.replace(
        forbid,
        &format!("when {{ resource.name == \"delete_repository\" && principal != Mcp::Workload::\"{AGENT_B}\" }};"),
    ) + &format!(
        "\n@id(\"agent-b-deletes-repos\")\npermit (principal == Mcp::Workload::\"{AGENT_B}\", \
         action == Mcp::Action::\"tools/call\", resource == Mcp::Tool::\"demo/delete_repository\");\n"
    );
    let dir = policy_dir(&[], &[("demo.cedar", &new)]);
    let old = repo("policies");
    let old = old.to_str().unwrap();
    let run = matrix(&["--policies", path(&dir), "--against", old]);
    assert_eq!(run.code, 0, "{}{}", run.out, run.err);
    let changes: Vec<&str> = run
        .out
        .lines()
        .filter(|l| l.starts_with('+') || l.starts_with('-'))
        .collect();
    assert_eq!(
        changes,
        [format!(
            "+ agent-b ({AGENT_B}) may now call demo/delete_repository (by [agent-b-deletes-repos])"
        )],
        "{}",
        run.out
    );
    assert!(
        run.out.contains("1 change: 1 gained, 0 lost"),
        "{}",
        run.out
    );

    let gate = matrix(&[
        "--policies",
        path(&dir),
        "--against",
        old,
        "--fail-on-change",
    ]);
    assert_eq!(gate.code, 1, "{}{}", gate.out, gate.err);
    let json = matrix(&[
        "--policies",
        old,
        "--against",
        path(&dir),
        "--format",
        "json",
    ]);
    let report: serde_json::Value = serde_json::from_str(&json.out).unwrap();
    let changes = report["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 1, "{report}");
    assert_eq!(changes[0]["change"], "lost");
    assert_eq!(changes[0]["identity"], AGENT_B);
    assert_eq!(changes[0]["new"]["reason"], "forbid");
    let same = matrix(&["--policies", old, "--against", old, "--fail-on-change"]);
    assert_eq!(same.code, 0, "{}{}", same.out, same.err);
    assert!(same.out.contains("no changes"), "{}", same.out);
}

#[test]
fn explain_with_an_upstreams_config_takes_the_named_entry() {
    let dir = tempfile::tempdir().unwrap();
    let config = std::fs::read_to_string(repo("examples/upstreams.yaml"))
        .unwrap()
        .replace(
            "\"../policies\"",
            &format!("{:?}", repo("policies").display().to_string()),
        );
    let path = dir.path().join("upstreams.yaml");
    std::fs::write(&path, config).unwrap();
    let path = path.to_str().unwrap();
    let base = [
        "explain",
        "--config",
        path,
        "--principal",
        AGENT,
        "--action",
        "tools/call",
        "--tool",
        "echo",
        "--format",
        "json",
    ];
    let jira = json(&gateway(&[&base[..], &["--server", "jira"]].concat()));
    assert_eq!(jira["request"]["server"], "jira");
    assert_eq!(
        jira["request"]["server_spiffe_id"],
        "spiffe://example.org/ns/tools/sa/jira-mcp"
    );
    assert_eq!(jira["request"]["resource"], "Mcp::Tool::\"jira/echo\"");
    // A name the config does not have is refused, not replaced by the
    // first entry's identity.
    let unknown = gateway(&[&base[..], &["--server", "jria"]].concat());
    assert_eq!(unknown.code, 2, "{}{}", unknown.out, unknown.err);
    assert!(
        unknown
            .err
            .contains("--server: \"jria\" is not an upstream"),
        "{}",
        unknown.err
    );
    // Without --server: the first entry.
    let first = json(&gateway(&base));
    assert_eq!(first["request"]["server"], "github");
    assert_eq!(
        first["request"]["server_spiffe_id"],
        "spiffe://example.org/ns/tools/sa/github-mcp"
    );
}

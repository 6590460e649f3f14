//! The policy tooling on the command line: `policy test` runs the shipped
//! cases and reports failures. Exit codes: 0 ok, 1 a check failed, 2
//! unusable input.

use std::path::{Path, PathBuf};
use std::process::Command;

const AGENT: &str = "spiffe://example.org/ns/demo/sa/agent";
const AGENT_B: &str = "spiffe://example.org/ns/demo/sa/agent-b";

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

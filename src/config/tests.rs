use std::collections::HashMap;
use std::path::Path;

use super::*;

struct FakeEnv(HashMap<&'static str, &'static str>);

impl Env for FakeEnv {
    fn var(&self, name: &str) -> Option<String> {
        self.0.get(name).map(|v| (*v).to_owned())
    }
}

fn no_env() -> FakeEnv {
    FakeEnv(HashMap::new())
}

const GOOD: &str = r#"
listener: { address: "127.0.0.1:8443" }
admin: { address: "127.0.0.1:9090" }
workload_api: { socket: "unix:///tmp/agent.sock", svid_hint: gateway }
policy: { dir: policies }
upstream:
  name: demo
  url: "https://127.0.0.1:9443/mcp"
  spiffe_id: "spiffe://example.org/ns/demo/sa/mcp-server"
audit: { sink: file, path: audit.jsonl }
limits: { max_body_bytes: 4096 }
"#;

fn parse(text: &str) -> anyhow::Result<Config> {
    Config::parse(text, Path::new("/etc/gw"), &no_env())
}

#[test]
fn good_config_parses_and_resolves_paths() {
    let c = parse(GOOD).unwrap();
    assert_eq!(c.listener.address.port(), 8443);
    assert_eq!(c.listener.path, "/mcp");
    assert_eq!(c.workload_api.endpoint, "unix:///tmp/agent.sock");
    assert_eq!(c.workload_api.svid_hint.as_deref(), Some("gateway"));
    assert_eq!(c.policy_dir, Path::new("/etc/gw/policies"));
    assert_eq!(c.audit.sink, AuditSink::File("/etc/gw/audit.jsonl".into()));
    assert_eq!(c.limits.max_body_bytes, 4096);
    assert_eq!(
        c.upstreams[0].spiffe_id.to_string(),
        "spiffe://example.org/ns/demo/sa/mcp-server"
    );
    assert!(!c.upstreams[0].plaintext);
}

#[test]
fn socket_falls_back_to_the_environment() {
    let text = GOOD.replace(
        r#"workload_api: { socket: "unix:///tmp/agent.sock", svid_hint: gateway }"#,
        "",
    );
    let env = FakeEnv(HashMap::from([(
        SPIFFE_ENDPOINT_SOCKET,
        "unix:///run/agent.sock",
    )]));
    let c = Config::parse(&text, Path::new("."), &env).unwrap();
    assert_eq!(c.workload_api.endpoint, "unix:///run/agent.sock");
    let err = Config::parse(&text, Path::new("."), &no_env()).unwrap_err();
    assert!(
        format!("{err:#}").contains("workload_api.socket"),
        "{err:#}"
    );
}

/// Each bad value is refused with a message naming its field.
#[test]
fn bad_values_name_the_field() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "unknown top-level field",
            "listener:",
            "extra: 1\nlistener:",
        ),
        (
            "unknown nested field",
            "name: demo",
            "name: demo\n  weight: 3",
        ),
        ("listener address", "127.0.0.1:8443", "localhost"),
        ("admin address", "127.0.0.1:9090", "nope"),
        ("same ports", "127.0.0.1:9090", "127.0.0.1:8443"),
        (
            "bad upstream id",
            "spiffe://example.org/ns/demo/sa/mcp-server",
            "spiffe://Example.org/x",
        ),
        (
            "id with trailing slash",
            "spiffe://example.org/ns/demo/sa/mcp-server",
            "spiffe://example.org/a/",
        ),
        (
            "plain http not declared",
            "https://127.0.0.1:9443/mcp",
            "http://127.0.0.1:9443/mcp",
        ),
        (
            "user info",
            "https://127.0.0.1:9443/mcp",
            "https://u:p@127.0.0.1:9443/mcp",
        ),
        (
            "zero body limit",
            "max_body_bytes: 4096",
            "max_body_bytes: 0",
        ),
        (
            "negative body limit",
            "max_body_bytes: 4096",
            "max_body_bytes: -1",
        ),
        (
            "audit path without file sink",
            "sink: file,",
            "sink: stdout,",
        ),
        ("unknown audit sink", "sink: file,", "sink: syslog,"),
        ("relative socket", "unix:///tmp/agent.sock", "agent.sock"),
        ("empty hint", "svid_hint: gateway", "svid_hint: \"\""),
        ("upstream name with slash", "name: demo", "name: a/b"),
    ];
    let fields = [
        "extra",
        "weight",
        "listener.address",
        "admin.address",
        "admin.address",
        "upstream.spiffe_id",
        "upstream.spiffe_id",
        "upstream.url",
        "upstream.url",
        "limits.max_body_bytes",
        "max_body_bytes",
        "audit.path",
        "sink",
        "workload_api.socket",
        "workload_api.svid_hint",
        "upstream.name",
    ];
    for ((name, from, to), field) in cases.iter().zip(fields) {
        assert!(GOOD.contains(from), "{name}: fixture lacks {from:?}");
        let err = parse(&GOOD.replacen(from, to, 1)).expect_err(name);
        let msg = format!("{err:#}");
        assert!(msg.contains(field), "{name}: {msg:?} does not name {field}");
    }
}

#[test]
fn plain_http_only_to_declared_loopback() {
    let plain = GOOD
        .replace("https://127.0.0.1:9443/mcp", "http://127.0.0.1:9443/mcp")
        .replace(
            "spiffe_id: \"spiffe://example.org/ns/demo/sa/mcp-server\"",
            "spiffe_id: \"spiffe://example.org/ns/demo/sa/mcp-server\"\n  plaintext_loopback: true",
        );
    assert!(parse(&plain).unwrap().upstreams[0].plaintext);
    let remote = plain.replace("127.0.0.1:9443", "10.0.0.5:9443");
    assert!(format!("{:#}", parse(&remote).unwrap_err()).contains("loopback"));
    let by_name = plain.replace("127.0.0.1:9443", "localhost:9443");
    assert!(format!("{:#}", parse(&by_name).unwrap_err()).contains("loopback"));
}

/// Every example config in the repository parses.
#[test]
fn example_configs_parse() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            Config::load(&path, &no_env()).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
            n += 1;
        }
    }
    assert!(n >= 2, "expected the example configs in {}", dir.display());
}

#[test]
fn policy_watch_shadow_and_user_auth() {
    let c = parse(GOOD).unwrap();
    assert_eq!(c.policy.watch_interval, Some(Duration::from_secs(1)));
    assert!(c.policy.shadow_dir.is_none() && c.user_auth.is_none());

    let text = GOOD.replace(
        "policy: { dir: policies }",
        "policy: { dir: policies, shadow_dir: candidate, watch_interval_ms: 0 }\n\
         user_auth: { jwks_file: jwks.json, issuer: \"https://idp\", audience: gw, required: true }",
    );
    let c = parse(&text).unwrap();
    assert_eq!(
        c.policy.shadow_dir.as_deref(),
        Some(Path::new("/etc/gw/candidate"))
    );
    assert_eq!(c.policy.watch_interval, None);
    let u = c.user_auth.unwrap();
    assert_eq!(u.keys, UserKeys::JwksFile("/etc/gw/jwks.json".into()));
    assert!(u.required && u.audience == "gw" && u.issuer.as_deref() == Some("https://idp"));

    let bad = [
        (
            "policy: { dir: policies, shadow_dir: policies }",
            "policy.shadow_dir",
        ),
        (
            "policy: { dir: policies, watch_interval_ms: 5 }",
            "policy.watch_interval_ms",
        ),
        ("policy: { dir: policies, reload: yes }", "reload"),
        (
            "policy: { dir: policies }\nuser_auth: { jwks_file: j.json, audience: gw }",
            "user_auth.issuer",
        ),
        (
            "policy: { dir: policies }\nuser_auth: { jwks_file: j.json, jwt_svid: true, audience: gw }",
            "user_auth",
        ),
        (
            "policy: { dir: policies }\nuser_auth: { jwt_svid: true }",
            "user_auth.audience",
        ),
        (
            "policy: { dir: policies }\nuser_auth: { jwt_svid: true, audience: gw, issuer: x }",
            "user_auth.issuer",
        ),
        (
            "policy: { dir: policies }\nuser_auth: { audience: gw, issuer: x }",
            "user_auth",
        ),
    ];
    for (replacement, field) in bad {
        let err = parse(&GOOD.replace("policy: { dir: policies }", replacement))
            .err()
            .unwrap_or_else(|| panic!("{replacement} should fail"));
        assert!(format!("{err:#}").contains(field), "{replacement}: {err:#}");
    }
}

/// The client-sidecar listener: plain HTTP only on a loopback IP, off by
/// default, and never with a plain upstream too (no identity on either side).
#[test]
fn plaintext_listener_only_on_a_loopback_ip() {
    assert!(!parse(GOOD).unwrap().listener.plaintext_loopback);
    let plain = |addr: &str| {
        GOOD.replace(
            r#"listener: { address: "127.0.0.1:8443" }"#,
            &format!(r#"listener: {{ address: "{addr}", plaintext_loopback: true }}"#),
        )
    };
    for addr in ["127.0.0.1:8080", "127.0.0.2:0", "[::1]:8080"] {
        let c = parse(&plain(addr)).unwrap_or_else(|e| panic!("{addr}: {e:#}"));
        assert!(c.listener.plaintext_loopback, "{addr}");
    }
    for addr in [
        "0.0.0.0:8080",
        "[::]:8080",
        "10.0.0.5:8080",
        "192.168.1.2:8080",
        "[::ffff:127.0.0.1]:8080",
    ] {
        let msg = format!("{:#}", parse(&plain(addr)).unwrap_err());
        assert!(
            msg.contains("listener.address") && msg.contains("loopback"),
            "{addr}: {msg}"
        );
    }
    let by_name = format!("{:#}", parse(&plain("localhost:8080")).unwrap_err());
    assert!(by_name.contains("listener.address"), "{by_name}");
    // The same addresses stay valid for the mTLS listener.
    let mtls = GOOD.replace("127.0.0.1:8443", "0.0.0.0:8443");
    assert!(!parse(&mtls).unwrap().listener.plaintext_loopback);
}

#[test]
fn plaintext_listener_needs_an_mtls_upstream() {
    let both = GOOD
        .replace(
            r#"listener: { address: "127.0.0.1:8443" }"#,
            r#"listener: { address: "127.0.0.1:8443", plaintext_loopback: true }"#,
        )
        .replace("https://127.0.0.1:9443/mcp", "http://127.0.0.1:9443/mcp")
        .replace(
            "spiffe_id: \"spiffe://example.org/ns/demo/sa/mcp-server\"",
            "spiffe_id: \"spiffe://example.org/ns/demo/sa/mcp-server\"\n  plaintext_loopback: true",
        );
    let msg = format!("{:#}", parse(&both).unwrap_err());
    assert!(msg.contains("listener.plaintext_loopback"), "{msg}");
}

#[test]
fn plaintext_listener_must_be_a_boolean() {
    let text = GOOD.replace(
        r#"listener: { address: "127.0.0.1:8443" }"#,
        r#"listener: { address: "127.0.0.1:8443", plaintext_loopback: "yes" }"#,
    );
    assert!(parse(&text).is_err());
}

#[test]
fn jwt_svid_callers_is_off_by_default_and_opt_in_per_listener() {
    assert_eq!(parse(GOOD).unwrap().listener.jwt_svid_callers, None);
    let with = |block: &str| {
        GOOD.replace(
            r#"listener: { address: "127.0.0.1:8443" }"#,
            &format!(r#"listener: {{ address: "127.0.0.1:8443", jwt_svid_callers: {block} }}"#),
        )
    };
    let on = parse(&with("{}")).unwrap().listener.jwt_svid_callers;
    assert_eq!(on, Some(JwtSvidCallersConfig { audience: None }));
    let aud = parse(&with("{ audience: \"spiffe://example.org/gw\" }")).unwrap();
    assert_eq!(
        aud.listener.jwt_svid_callers.unwrap().audience.as_deref(),
        Some("spiffe://example.org/gw")
    );
    for (bad, names) in [
        ("{ audience: \"\" }", "listener.jwt_svid_callers.audience"),
        (
            "{ audience: \" gw\" }",
            "listener.jwt_svid_callers.audience",
        ),
        ("{ audiences: [gw] }", "audiences"),
    ] {
        let err = format!("{:#}", parse(&with(bad)).unwrap_err());
        assert!(err.contains(names), "{bad}: {err}");
    }
}

#[test]
fn jwt_svid_callers_and_user_auth_are_refused_together() {
    let text = GOOD.replace(
        r#"listener: { address: "127.0.0.1:8443" }"#,
        r#"listener: { address: "127.0.0.1:8443", jwt_svid_callers: {} }"#,
    ) + "user_auth: { jwt_svid: true, audience: gw }\n";
    let err = format!("{:#}", parse(&text).unwrap_err());
    assert!(
        err.contains("listener.jwt_svid_callers") && err.contains("user_auth"),
        "{err}"
    );
}

/// The gateway configs in docs/federation.md and docs/jwt-svid.md parse.
#[test]
fn federation_and_jwt_svid_doc_examples_parse() {
    for (doc, text) in [
        ("federation.md", include_str!("../../docs/federation.md")),
        ("jwt-svid.md", include_str!("../../docs/jwt-svid.md")),
    ] {
        let yaml = text
            .split("```yaml\n")
            .nth(1)
            .and_then(|rest| rest.split("```").next())
            .unwrap_or_else(|| panic!("{doc}: no yaml block"));
        let config = parse(yaml).unwrap_or_else(|e| panic!("{doc}: {e:#}"));
        assert_eq!(
            config.listener.jwt_svid_callers.is_some(),
            doc == "jwt-svid.md",
            "{doc}"
        );
    }
}

/// A plain loopback listener's caller is the process's own SVID: a caller
/// token there would be a second, contradictory identity source.
#[test]
fn plaintext_listener_refuses_jwt_svid_callers() {
    let text = GOOD.replace(
        r#"listener: { address: "127.0.0.1:8443" }"#,
        r#"listener: { address: "127.0.0.1:8443", plaintext_loopback: true, jwt_svid_callers: {} }"#,
    );
    let msg = format!("{:#}", parse(&text).unwrap_err());
    assert!(
        msg.contains("listener.jwt_svid_callers") && msg.contains("plaintext_loopback"),
        "{msg}"
    );
}

#[test]
fn upstream_connection_defaults_are_sane() {
    let c = parse(GOOD).unwrap().upstreams[0].connection.clone();
    assert_eq!(c, UpstreamConnection::default());
    assert_eq!(c.connect_timeout, Duration::from_secs(10));
    assert_eq!(c.request_timeout, Duration::from_secs(60));
    assert_eq!(c.stream_idle_timeout, Duration::from_secs(300));
    assert_eq!(c.health_check_interval, Some(Duration::from_secs(10)));
}

#[test]
fn upstream_connection_settings_parse() {
    let text = GOOD.replace(
        "  spiffe_id: \"spiffe://example.org/ns/demo/sa/mcp-server\"\n",
        "  spiffe_id: \"spiffe://example.org/ns/demo/sa/mcp-server\"
  connect_timeout_seconds: 2
  request_timeout_seconds: 5
  stream_idle_timeout_seconds: 7
  pool_idle_timeout_seconds: 30
  pool_max_idle_connections: 0
  health_check_interval_seconds: 0
",
    );
    let c = parse(&text).unwrap().upstreams[0].connection.clone();
    assert_eq!(c.connect_timeout, Duration::from_secs(2));
    assert_eq!(c.request_timeout, Duration::from_secs(5));
    assert_eq!(c.stream_idle_timeout, Duration::from_secs(7));
    assert_eq!(c.pool_idle_timeout, Duration::from_secs(30));
    assert_eq!(c.pool_max_idle, 0);
    assert_eq!(c.health_check_interval, None, "0 turns the probe off");
}

#[test]
fn bad_upstream_connection_settings_are_refused_by_name() {
    let cases = [
        (
            "connect_timeout_seconds: 0",
            "upstream.connect_timeout_seconds",
        ),
        (
            "connect_timeout_seconds: 301",
            "upstream.connect_timeout_seconds",
        ),
        (
            "request_timeout_seconds: 0",
            "upstream.request_timeout_seconds",
        ),
        (
            "request_timeout_seconds: 3601",
            "upstream.request_timeout_seconds",
        ),
        // Shorter than the default 10 s connect timeout it includes.
        (
            "request_timeout_seconds: 5",
            "upstream.request_timeout_seconds",
        ),
        (
            "stream_idle_timeout_seconds: 0",
            "upstream.stream_idle_timeout_seconds",
        ),
        (
            "stream_idle_timeout_seconds: 86401",
            "upstream.stream_idle_timeout_seconds",
        ),
        (
            "pool_idle_timeout_seconds: 0",
            "upstream.pool_idle_timeout_seconds",
        ),
        (
            "pool_max_idle_connections: 10001",
            "upstream.pool_max_idle_connections",
        ),
        (
            "health_check_interval_seconds: 3601",
            "upstream.health_check_interval_seconds",
        ),
        ("request_timeout_seconds: -1", "request_timeout_seconds"),
        ("request_timeout_seconds: 1.5", "request_timeout_seconds"),
    ];
    for (line, field) in cases {
        let text = GOOD.replace(
            "  spiffe_id: \"spiffe://example.org/ns/demo/sa/mcp-server\"\n",
            &format!("  spiffe_id: \"spiffe://example.org/ns/demo/sa/mcp-server\"\n  {line}\n"),
        );
        let err = parse(&text).expect_err(line);
        let msg = format!("{err:#}");
        assert!(msg.contains(field), "{line}: {msg:?} does not name {field}");
    }
}

const LIST: &str = r#"
listener: { address: "127.0.0.1:8443" }
admin: { address: "127.0.0.1:9090" }
workload_api: { socket: "unix:///tmp/agent.sock" }
policy: { dir: policies }
upstreams:
  - name: github
    url: "https://10.0.0.1:9443/mcp"
    spiffe_id: "spiffe://example.org/ns/tools/sa/github"
    request_timeout_seconds: 30
  - name: jira
    url: "https://10.0.0.2:9443/mcp"
    spiffe_id: "spiffe://example.org/ns/tools/sa/jira"
    caller_id_header: x-caller
"#;

#[test]
fn an_upstream_list_routes_by_name() {
    let c = parse(LIST).unwrap();
    assert_eq!(c.routing, Routing::ByName);
    let names: Vec<_> = c.upstreams.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(names, ["github", "jira"]);
    assert_eq!(
        c.upstreams[0].connection.request_timeout,
        Duration::from_secs(30)
    );
    assert_eq!(
        c.upstreams[1].connection.request_timeout,
        Duration::from_secs(60)
    );
    assert_eq!(
        c.upstreams[1].caller_id_header.as_ref().map(|h| h.as_str()),
        Some("x-caller")
    );
    let single = parse(GOOD).unwrap();
    assert_eq!(single.routing, Routing::OnePath);
    assert_eq!(single.upstreams.len(), 1);
}

#[test]
fn bad_upstream_lists_are_refused_by_name() {
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "both forms",
            LIST.replace(
                "upstreams:",
                "upstream: { name: a, url: \"https://10.0.0.3/mcp\", spiffe_id: \"spiffe://example.org/a\" }\nupstreams:",
            ),
            "not both",
        ),
        (
            "neither",
            LIST[..LIST.find("upstreams:").unwrap()].to_owned(),
            "upstreams: required",
        ),
        ("empty", LIST[..LIST.find("upstreams:").unwrap()].to_owned() + "upstreams: []\n", "must not be empty"),
        ("duplicate name", LIST.replace("name: jira", "name: github"), "upstreams[1] (\"github\").name: another upstream has this name"),
        (
            "duplicate SPIFFE ID",
            LIST.replace("sa/jira", "sa/github"),
            "upstreams[1] (\"jira\").spiffe_id: another upstream has this SPIFFE ID",
        ),
        ("name with a slash", LIST.replace("name: jira", "name: \"ji/ra\""), "upstreams[1] (\"ji/ra\").name"),
        ("name with a quote", LIST.replace("name: jira", "name: 'ji\"ra'"), ".name"),
        ("name with a space", LIST.replace("name: jira", "name: \"ji ra\""), ".name"),
        ("dot-dot name", LIST.replace("name: jira", "name: \"..\""), ".name"),
        ("empty name", LIST.replace("name: jira", "name: \"\""), ".name"),
        ("long name", LIST.replace("name: jira", &format!("name: {}", "a".repeat(65))), ".name"),
        ("entry error names the entry", LIST.replace("https://10.0.0.2", "ftp://10.0.0.2"), "upstreams[1] (\"jira\")"),
        ("unknown field in an entry", LIST.replace("caller_id_header", "weight: 1\n    caller_id_header"), "weight"),
        (
            "two plaintext upstreams",
            LIST.replace("https://10.0.0.1:9443", "http://127.0.0.1:9443")
                .replace("https://10.0.0.2:9443", "http://127.0.0.1:9444")
                .replace("request_timeout_seconds: 30", "plaintext_loopback: true")
                .replace("caller_id_header: x-caller", "plaintext_loopback: true"),
            "at most one plain-HTTP upstream",
        ),
    ];
    for (name, text, expected) in cases {
        let err = parse(&text).expect_err(name);
        let msg = format!("{err:#}");
        assert!(msg.contains(expected), "{name}: {msg:?} lacks {expected:?}");
    }
}

#[test]
fn an_aggregate_names_upstreams_of_the_list() {
    let c = parse(&format!(
        "{LIST}aggregate: {{ name: all, upstreams: [github, jira] }}\n"
    ))
    .unwrap();
    let agg = c.aggregate.expect("aggregate");
    assert_eq!(agg.name, "all");
    assert_eq!(agg.upstreams, ["github", "jira"]);
    assert!(parse(LIST).unwrap().aggregate.is_none());
}

#[test]
fn a_bad_aggregate_is_refused_naming_the_field() {
    let cases = [
        ("{ name: github, upstreams: [github] }", "aggregate.name"),
        ("{ name: \"a/b\", upstreams: [github] }", "aggregate.name"),
        ("{ name: all, upstreams: [] }", "aggregate.upstreams"),
        (
            "{ name: all, upstreams: [github, gitlab] }",
            "aggregate.upstreams[1]",
        ),
        (
            "{ name: all, upstreams: [jira, jira] }",
            "aggregate.upstreams[1]",
        ),
        ("{ name: all, upstreams: [github], extra: 1 }", "extra"),
    ];
    for (agg, field) in cases {
        let err = parse(&format!("{LIST}aggregate: {agg}\n")).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains(field), "{agg}: {msg}");
    }
    // The one-upstream form has no names to aggregate.
    let err = parse(&format!(
        "{GOOD}aggregate: {{ name: all, upstreams: [x] }}\n"
    ))
    .unwrap_err();
    assert!(
        format!("{err:#}").contains("aggregate: only with the `upstreams:` list"),
        "{err:#}"
    );
    // `__` separates upstream and tool: an aggregated upstream may not contain it.
    let dunder = LIST.replace("name: jira", "name: my__jira");
    let err = parse(&format!(
        "{dunder}aggregate: {{ name: all, upstreams: [my__jira] }}\n"
    ))
    .unwrap_err();
    assert!(
        format!("{err:#}").contains("aggregate.upstreams[0]"),
        "{err:#}"
    );
    assert!(format!("{err:#}").contains("__"), "{err:#}");
    // Without aggregation such a name is fine.
    assert!(parse(&dunder).is_ok());
}

#[test]
fn audit_on_failure_defaults_to_refuse_and_names_the_field() {
    assert_eq!(
        parse(GOOD).unwrap().audit.on_failure,
        AuditOnFailure::Refuse
    );
    let stdout = GOOD.replace("audit: { sink: file, path: audit.jsonl }", "");
    assert_eq!(
        parse(&stdout).unwrap().audit.on_failure,
        AuditOnFailure::Refuse
    );
    let cont = GOOD.replace(
        "path: audit.jsonl }",
        "path: audit.jsonl, on_failure: continue }",
    );
    assert_eq!(
        parse(&cont).unwrap().audit.on_failure,
        AuditOnFailure::Continue
    );
    let bad = GOOD.replace(
        "path: audit.jsonl }",
        "path: audit.jsonl, on_failure: drop }",
    );
    let msg = format!("{:#}", parse(&bad).expect_err("unknown on_failure"));
    assert!(msg.contains("on_failure"), "{msg}");
}

#[test]
fn audit_fsync_is_off_unless_asked_and_takes_only_a_boolean() {
    assert!(!parse(GOOD).unwrap().audit.fsync);
    let on = GOOD.replace("path: audit.jsonl }", "path: audit.jsonl, fsync: true }");
    assert!(parse(&on).unwrap().audit.fsync);
    let bad = GOOD.replace("path: audit.jsonl }", "path: audit.jsonl, fsync: always }");
    let msg = format!("{:#}", parse(&bad).expect_err("fsync must be a boolean"));
    assert!(msg.contains("fsync"), "{msg}");
}

#[test]
fn audit_checkpoints_default_to_1000_records_or_5_seconds_and_are_bounded() {
    let audit = parse(GOOD).unwrap().audit;
    assert_eq!(audit.checkpoints.every_records, 1000);
    assert_eq!(audit.checkpoints.interval, Duration::from_secs(5));
    let set = GOOD.replace(
        "path: audit.jsonl }",
        "path: audit.jsonl, checkpoint_every_records: 10, checkpoint_interval_seconds: 2 }",
    );
    let audit = parse(&set).unwrap().audit;
    assert_eq!(audit.checkpoints.every_records, 10);
    assert_eq!(audit.checkpoints.interval, Duration::from_secs(2));
    for (field, value) in [
        ("checkpoint_every_records", "0"),
        ("checkpoint_every_records", "1000001"),
        ("checkpoint_interval_seconds", "0"),
        ("checkpoint_interval_seconds", "3601"),
    ] {
        let bad = GOOD.replace(
            "path: audit.jsonl }",
            &format!("path: audit.jsonl, {field}: {value} }}"),
        );
        let err = format!("{:#}", parse(&bad).unwrap_err());
        assert!(err.contains(&format!("audit.{field}")), "{err}");
    }
}

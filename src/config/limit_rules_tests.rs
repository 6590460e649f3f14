use super::*;

fn parse(yaml: &str) -> anyhow::Result<PerIdentityLimits> {
    let raw: RawPerIdentity = serde_yaml_ng::from_str(yaml).map_err(|e| anyhow!("{e}"))?;
    raw.validate(&["github", "demo"])
}

#[test]
fn absent_means_no_limits() {
    let limits = parse("{}").unwrap();
    assert_eq!(limits, PerIdentityLimits::default());
    assert_eq!(limits.max_identities, 100_000);
}

#[test]
fn rules_parse_with_their_selectors() {
    let limits = parse(
        r#"
max_identities: 500
default: {requests_per_second: 10, max_in_flight: 8, max_streams: 2}
rules:
  - {spiffe_id: "spiffe://example.org/ns/ci/sa/indexer", requests_per_second: 0.5, burst: 3}
  - {trust_domain: example.org, path_prefix: /ns/prod, max_in_flight: 64}
  - {trust_domain: partner.org, max_streams: 1}
  - {tool: delete_repository, upstream: github, requests_per_second: 0.1}
  - {trust_domain: example.org, tool: search, requests_per_second: 5, burst: 10}
"#,
    )
    .unwrap();
    assert_eq!(limits.max_identities, 500);
    let default = limits.default.unwrap();
    assert_eq!(
        default.rate,
        Some(RateSpec {
            per_second: 10.0,
            burst: 10
        })
    );
    assert_eq!(default.max_in_flight, Some(8));
    assert_eq!(limits.rules.len(), 3);
    assert_eq!(
        limits.rules[0].selector,
        Selector::SpiffeId("spiffe://example.org/ns/ci/sa/indexer".into())
    );
    // A fractional rate's default burst is one request.
    assert_eq!(limits.rules[0].spec.rate.unwrap().burst, 3);
    assert_eq!(
        limits.rules[1].selector,
        Selector::PathPrefix {
            trust_domain: "example.org".into(),
            prefix: "/ns/prod".into()
        }
    );
    assert_eq!(limits.tool_rules.len(), 2);
    assert_eq!(limits.tool_rules[0].selector, Selector::Any);
    assert_eq!(limits.tool_rules[0].upstream.as_deref(), Some("github"));
    assert_eq!(limits.tool_rules[0].rate.burst, 1);
    assert_eq!(
        limits.tool_rules[1].selector,
        Selector::TrustDomain("example.org".into())
    );
}

#[test]
fn limits_that_cannot_work_are_refused_naming_the_field() {
    let cases = [
        (
            "default: {requests_per_second: 0}",
            "limits.per_identity.default.requests_per_second:",
        ),
        (
            "default: {requests_per_second: -5}",
            "limits.per_identity.default.requests_per_second:",
        ),
        (
            "default: {requests_per_second: .nan}",
            "limits.per_identity.default.requests_per_second:",
        ),
        (
            "default: {requests_per_second: .inf}",
            "limits.per_identity.default.requests_per_second:",
        ),
        (
            "default: {requests_per_second: 1e12}",
            "limits.per_identity.default.requests_per_second:",
        ),
        (
            "default: {requests_per_second: 5, burst: 0}",
            "limits.per_identity.default.burst:",
        ),
        (
            "default: {requests_per_second: 5, burst: 99999999999}",
            "limits.per_identity.default.burst:",
        ),
        ("default: {burst: 5}", "limits.per_identity.default.burst:"),
        (
            "default: {max_in_flight: 0}",
            "limits.per_identity.default.max_in_flight:",
        ),
        (
            "default: {max_in_flight: -1}",
            "limits.per_identity.default.max_in_flight:",
        ),
        (
            "default: {max_streams: 100001}",
            "limits.per_identity.default.max_streams:",
        ),
        (
            "default: {max_sessions: 0}",
            "limits.per_identity.default.max_sessions:",
        ),
        (
            "rules: [{spiffe_id: \"spiffe://example.org/a\", max_sessions: 1000001}]",
            "limits.per_identity.rules[0].max_sessions:",
        ),
        (
            "rules: [{tool: echo, requests_per_second: 1, max_sessions: 1}]",
            "limits.per_identity.rules[0].max_sessions: a tool rule",
        ),
        ("default: {}", "limits.per_identity.default: sets no limit"),
        ("max_identities: 0", "limits.per_identity.max_identities:"),
        (
            "max_identities: 100000000000",
            "limits.per_identity.max_identities:",
        ),
        (
            "rules: [{trust_domain: example.org, max_streams: 0}]",
            "limits.per_identity.rules[0].max_streams:",
        ),
        (
            "rules: [{trust_domain: example.org}]",
            "limits.per_identity.rules[0]: sets no limit",
        ),
    ];
    for (yaml, field) in cases {
        let error = format!("{:#}", parse(yaml).unwrap_err());
        assert!(error.starts_with(field), "{yaml}: {error}");
    }
}

#[test]
fn bad_selectors_are_refused_naming_the_field() {
    let cases = [
        (
            "rules: [{max_in_flight: 1}]",
            "limits.per_identity.rules[0]: names no identity",
        ),
        (
            "rules: [{spiffe_id: \"spiffe://EXAMPLE.org/a\", max_in_flight: 1}]",
            "limits.per_identity.rules[0].spiffe_id:",
        ),
        (
            "rules: [{spiffe_id: \"spiffe://example.org\", max_in_flight: 1}]",
            "limits.per_identity.rules[0].spiffe_id:",
        ),
        (
            "rules: [{spiffe_id: \"spiffe://example.org/a\", trust_domain: example.org, max_in_flight: 1}]",
            "limits.per_identity.rules[0].spiffe_id:",
        ),
        (
            "rules: [{trust_domain: Example.org, max_in_flight: 1}]",
            "limits.per_identity.rules[0].trust_domain:",
        ),
        (
            "rules: [{trust_domain: \"example.org/ns\", max_in_flight: 1}]",
            "limits.per_identity.rules[0].trust_domain:",
        ),
        (
            "rules: [{path_prefix: /ns/prod, max_in_flight: 1}]",
            "limits.per_identity.rules[0].path_prefix: needs trust_domain",
        ),
        (
            "rules: [{trust_domain: example.org, path_prefix: /ns/prod/, max_in_flight: 1}]",
            "limits.per_identity.rules[0].path_prefix:",
        ),
        (
            "rules: [{trust_domain: example.org, path_prefix: ns/prod, max_in_flight: 1}]",
            "limits.per_identity.rules[0].path_prefix:",
        ),
        (
            "rules: [{trust_domain: example.org, path_prefix: /ns/../x, max_in_flight: 1}]",
            "limits.per_identity.rules[0].path_prefix:",
        ),
        (
            "rules: [{trust_domain: a.org, max_in_flight: 1}, {trust_domain: a.org, max_streams: 1}]",
            "limits.per_identity.rules[1]: a rule for the same identities",
        ),
        (
            "rules: [{trust_domain: a.org, upstream: demo, max_in_flight: 1}]",
            "limits.per_identity.rules[0].upstream:",
        ),
        (
            "rules: [{spiffe_id: \"spiffe://a.org/x\", bogus: 1, max_in_flight: 1}]",
            "rules[0]: unknown field `bogus`",
        ),
    ];
    for (yaml, field) in cases {
        let error = format!("{:#}", parse(yaml).unwrap_err());
        assert!(error.contains(field), "{yaml}: {error}");
    }
}

#[test]
fn bad_tool_rules_are_refused_naming_the_field() {
    let cases = [
        (
            "rules: [{tool: search}]",
            "limits.per_identity.rules[0]: sets no limit",
        ),
        (
            "rules: [{tool: search, max_in_flight: 2}]",
            "limits.per_identity.rules[0].max_in_flight: a tool rule",
        ),
        (
            "rules: [{tool: search, max_streams: 2, requests_per_second: 1}]",
            "limits.per_identity.rules[0].max_streams: a tool rule",
        ),
        (
            "rules: [{tool: \"\", requests_per_second: 1}]",
            "limits.per_identity.rules[0].tool:",
        ),
        (
            "rules: [{tool: search, upstream: nowhere, requests_per_second: 1}]",
            "limits.per_identity.rules[0].upstream: \"nowhere\" is not a configured upstream",
        ),
        (
            "rules: [{tool: a, requests_per_second: 1}, {tool: a, requests_per_second: 2}]",
            "limits.per_identity.rules[1]: a rule for the same identities and tool",
        ),
    ];
    for (yaml, field) in cases {
        let error = format!("{:#}", parse(yaml).unwrap_err());
        assert!(error.starts_with(field), "{yaml}: {error}");
    }
    // The same tool on two upstreams, or for two selectors, is two rules.
    parse(
        "rules: [{tool: a, upstream: demo, requests_per_second: 1}, \
         {tool: a, upstream: github, requests_per_second: 1}, \
         {tool: a, trust_domain: x.org, requests_per_second: 1}]",
    )
    .unwrap();
}

/// The example in docs/limits.md is a valid `limits.per_identity`.
#[test]
fn the_documented_example_parses() {
    let doc = include_str!("../../docs/limits.md");
    let start = doc.find("```yaml\n").unwrap() + "```yaml\n".len();
    let block = &doc[start..start + doc[start..].find("```").unwrap()];
    let value: serde_yaml_ng::Value = serde_yaml_ng::from_str(block).unwrap();
    let raw: RawPerIdentity =
        serde_yaml_ng::from_value(value["limits"]["per_identity"].clone()).unwrap();
    let limits = raw.validate(&["github"]).unwrap();
    assert_eq!(limits.rules.len(), 3);
    assert_eq!(limits.tool_rules.len(), 1);
}

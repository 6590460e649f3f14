use super::*;
use crate::config::IdentityRule;

fn in_flight(n: u32) -> LimitSpec {
    LimitSpec {
        max_in_flight: Some(n),
        ..LimitSpec::default()
    }
}

fn rule(selector: Selector, spec: LimitSpec) -> IdentityRule {
    IdentityRule { selector, spec }
}

fn prefix(td: &str, prefix: &str) -> Selector {
    Selector::PathPrefix {
        trust_domain: td.into(),
        prefix: prefix.into(),
    }
}

fn per_second(n: f64) -> RateSpec {
    RateSpec {
        per_second: n,
        burst: 1,
    }
}

fn config() -> PerIdentityLimits {
    PerIdentityLimits {
        default: Some(LimitSpec {
            rate: Some(per_second(1.0)),
            max_in_flight: Some(1),
            max_streams: Some(1),
            max_sessions: None,
        }),
        // Deliberately least specific first: order does not matter.
        rules: vec![
            rule(Selector::TrustDomain("example.org".into()), in_flight(10)),
            rule(prefix("example.org", "/ns"), in_flight(20)),
            rule(prefix("example.org", "/ns/prod"), in_flight(30)),
            rule(
                Selector::SpiffeId("spiffe://example.org/ns/prod/sa/special".into()),
                in_flight(40),
            ),
            rule(prefix("other.org", "/ns/prod"), in_flight(50)),
        ],
        ..PerIdentityLimits::default()
    }
}

#[test]
fn the_most_specific_rule_wins_whatever_the_order() {
    let rules = Rules::new(&config(), 1);
    let cases = [
        ("spiffe://example.org/ns/prod/sa/special", 40),
        ("spiffe://example.org/ns/prod/sa/other", 30),
        ("spiffe://example.org/ns/prod", 30),
        ("spiffe://example.org/ns/dev/sa/x", 20),
        ("spiffe://example.org/agent", 10),
        ("spiffe://other.org/ns/prod/sa/x", 50),
        // No rule: the default.
        ("spiffe://other.org/ns/dev/sa/x", 1),
        ("spiffe://third.org/ns/prod/sa/x", 1),
    ];
    for (id, expected) in cases {
        assert_eq!(rules.for_identity(id).max_in_flight, Some(expected), "{id}");
    }
}

#[test]
fn a_path_prefix_matches_whole_segments_only() {
    let rules = Rules::new(&config(), 1);
    // `/ns/prod` must not take `/ns/production` or `/ns/prod-x`: those
    // fall back to the `/ns` rule.
    for id in [
        "spiffe://example.org/ns/production/sa/x",
        "spiffe://example.org/ns/prod-x",
        "spiffe://example.org/ns/prod.x/sa/y",
    ] {
        assert_eq!(rules.for_identity(id).max_in_flight, Some(20), "{id}");
    }
    // `/ns` does not take `/nsx`.
    assert_eq!(
        rules
            .for_identity("spiffe://example.org/nsx/a")
            .max_in_flight,
        Some(10)
    );
    assert!(segment_prefix("/ns/prod", "/ns/prod"));
    assert!(segment_prefix("/ns/prod/sa", "/ns/prod"));
    assert!(!segment_prefix("/ns/production", "/ns/prod"));
    assert!(!segment_prefix("/ns", "/ns/prod"));
}

#[test]
fn unset_fields_of_a_rule_take_the_default() {
    let rules = Rules::new(&config(), 1);
    let applied = rules.for_identity("spiffe://example.org/agent");
    assert_eq!(applied.max_in_flight, Some(10));
    assert_eq!(applied.max_streams, Some(1));
    assert_eq!(applied.rate, Some(Rate::new(1.0, 1)));
    assert!(!rules.identities_unlimited());
    assert!(Rules::new(&PerIdentityLimits::default(), 1).identities_unlimited());
}

#[test]
fn tool_rules_pick_the_most_specific_for_the_caller_and_upstream() {
    let tool = |selector: Selector, upstream: Option<&str>, n: f64| ToolRule {
        selector,
        upstream: upstream.map(str::to_owned),
        tool: "search".into(),
        rate: per_second(n),
    };
    let config = PerIdentityLimits {
        tool_rules: vec![
            tool(Selector::Any, None, 1.0),
            tool(Selector::Any, Some("github"), 2.0),
            tool(Selector::TrustDomain("example.org".into()), None, 3.0),
            tool(
                Selector::SpiffeId("spiffe://example.org/vip".into()),
                Some("github"),
                4.0,
            ),
        ],
        ..PerIdentityLimits::default()
    };
    let rules = Rules::new(&config, 1);
    assert!(rules.limits_tool("search"));
    assert!(!rules.limits_tool("other"));
    let cases = [
        ("spiffe://x.org/a", "demo", "*/search", 1.0),
        ("spiffe://x.org/a", "github", "github/search", 2.0),
        ("spiffe://example.org/a", "github", "*/search", 3.0),
        ("spiffe://example.org/vip", "github", "github/search", 4.0),
        ("spiffe://example.org/vip", "demo", "*/search", 3.0),
    ];
    for (id, upstream, key, n) in cases {
        assert_eq!(
            rules.for_tool(id, upstream, "search"),
            Some((key, Rate::new(n, 1))),
            "{id} on {upstream}"
        );
    }
    assert_eq!(rules.for_tool("spiffe://x.org/a", "demo", "echo"), None);
}

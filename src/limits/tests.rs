use super::*;
use crate::config::{LimitSpec, RateSpec, Selector, ToolRule};

const SECOND: u64 = 1_000_000_000;

fn config(spec: LimitSpec) -> PerIdentityLimits {
    PerIdentityLimits {
        default: Some(spec),
        ..PerIdentityLimits::default()
    }
}

fn rate(per_second: f64, burst: u32) -> Option<RateSpec> {
    Some(RateSpec { per_second, burst })
}

fn limits(config: &PerIdentityLimits) -> Limits {
    Limits::new(config, IntGauge::new("g", "g").unwrap())
}

fn id(s: &str) -> Arc<str> {
    Arc::from(s)
}

impl Limits {
    fn rules(&self) -> Arc<Rules> {
        self.rules.load_full()
    }
}

#[test]
fn one_identity_is_rate_limited_while_another_passes() {
    let limits = limits(&config(LimitSpec {
        rate: rate(2.0, 2),
        ..LimitSpec::default()
    }));
    let rules = limits.rules();
    let (a, b) = (id("spiffe://t/a"), id("spiffe://t/b"));
    assert!(limits.admit_at(&rules, &a, Hold::Request, 0).is_ok());
    assert!(limits.admit_at(&rules, &a, Hold::Request, 0).is_ok());
    assert_eq!(
        limits.admit_at(&rules, &a, Hold::Request, 0).unwrap_err(),
        Limited::Rate { retry_after: 1 }
    );
    // `b` has a bucket of its own.
    assert!(limits.admit_at(&rules, &b, Hold::Request, 0).is_ok());
    assert!(limits.admit_at(&rules, &b, Hold::Request, 0).is_ok());
    // Half a second later `a` has one token back.
    assert!(
        limits
            .admit_at(&rules, &a, Hold::Request, SECOND / 2)
            .is_ok()
    );
}

#[test]
fn slots_cap_requests_and_streams_apart_and_come_back_when_dropped() {
    let limits = limits(&config(LimitSpec {
        max_in_flight: Some(2),
        max_streams: Some(1),
        ..LimitSpec::default()
    }));
    let rules = limits.rules();
    let a = id("spiffe://t/a");
    let one = limits.admit_at(&rules, &a, Hold::Request, 0).unwrap();
    let two = limits.admit_at(&rules, &a, Hold::Request, 0).unwrap();
    assert!(one.is_some() && two.is_some());
    assert_eq!(
        limits.admit_at(&rules, &a, Hold::Request, 0).unwrap_err(),
        Limited::InFlight
    );
    // Requests in flight do not take the stream's place.
    let stream = limits.admit_at(&rules, &a, Hold::Stream, 0).unwrap();
    assert_eq!(
        limits.admit_at(&rules, &a, Hold::Stream, 0).unwrap_err(),
        Limited::Streams
    );
    drop(one);
    assert!(
        limits
            .admit_at(&rules, &a, Hold::Request, 0)
            .unwrap()
            .is_some()
    );
    drop(stream);
    assert!(
        limits
            .admit_at(&rules, &a, Hold::Stream, 0)
            .unwrap()
            .is_some()
    );
}

#[test]
fn a_refusal_for_concurrency_takes_no_token() {
    let limits = limits(&config(LimitSpec {
        rate: rate(1.0, 2),
        max_in_flight: Some(1),
        ..LimitSpec::default()
    }));
    let rules = limits.rules();
    let a = id("spiffe://t/a");
    let held = limits.admit_at(&rules, &a, Hold::Request, 0).unwrap();
    for _ in 0..5 {
        assert_eq!(
            limits.admit_at(&rules, &a, Hold::Request, 0).unwrap_err(),
            Limited::InFlight
        );
    }
    drop(held);
    // The second token is still there.
    assert!(limits.admit_at(&rules, &a, Hold::Request, 0).is_ok());
}

#[test]
fn idle_identities_are_forgotten_and_the_map_is_bounded() {
    let mut config = config(LimitSpec {
        rate: rate(1.0, 1),
        max_in_flight: Some(5),
        ..LimitSpec::default()
    });
    config.max_identities = 2;
    let limits = limits(&config);
    let rules = limits.rules();
    let (a, b, c) = (id("spiffe://t/a"), id("spiffe://t/b"), id("spiffe://t/c"));
    let held = limits.admit_at(&rules, &a, Hold::Request, 0).unwrap();
    let _b = limits.admit_at(&rules, &b, Hold::Request, 0).unwrap();
    assert_eq!(limits.tracked(), 2);
    // Full, and nobody is idle: a new identity is refused (fail closed).
    assert_eq!(
        limits.admit_at(&rules, &c, Hold::Request, 0).unwrap_err(),
        Limited::Identities
    );
    // `a` is done and its bucket refills: its entry carries nothing.
    drop(held);
    let later = 2 * SECOND;
    for shard in limits.shards.iter() {
        limits.sweep_shard(&mut lock(shard), later);
    }
    assert_eq!(limits.tracked(), 1, "b still holds a slot");
    assert!(limits.admit_at(&rules, &c, Hold::Request, later).is_ok());
    assert_eq!(limits.tracked(), 2);
}

#[test]
fn a_full_map_sweeps_before_refusing() {
    let mut config = config(LimitSpec {
        rate: rate(1000.0, 1),
        ..LimitSpec::default()
    });
    config.max_identities = 1;
    let limits = limits(&config);
    let rules = limits.rules();
    assert!(
        limits
            .admit_at(&rules, &id("spiffe://t/a"), Hold::Request, 0)
            .is_ok()
    );
    // One millisecond later `a`'s bucket is full again: its entry is idle.
    // Whether it shares the new identity's shard decides if this sweep
    // finds it (one shard swept per admission, 16 shards): 400 identities
    // miss it with a chance of (15/16)^400, about 6e-12.
    let admitted = (0..400)
        .filter(|i| {
            let other = id(&format!("spiffe://t/{i}"));
            limits
                .admit_at(&rules, &other, Hold::Request, SECOND)
                .is_ok()
        })
        .count();
    assert!(admitted >= 1);
    assert_eq!(limits.tracked(), 1);
}

#[test]
fn tool_buckets_are_per_identity_and_survive_a_reload() {
    let tool_rule = |n: f64| ToolRule {
        selector: Selector::Any,
        upstream: None,
        tool: "search".into(),
        rate: RateSpec {
            per_second: n,
            burst: 1,
        },
    };
    let mut config = PerIdentityLimits {
        tool_rules: vec![tool_rule(1.0)],
        ..PerIdentityLimits::default()
    };
    let limits = limits(&config);
    let (a, b) = (id("spiffe://t/a"), id("spiffe://t/b"));
    let rules = limits.rules();
    assert!(
        limits
            .admit_tool_at(&rules, &a, "demo", "search", 0)
            .is_ok()
    );
    assert_eq!(
        limits.admit_tool_at(&rules, &a, "demo", "search", 0),
        Err(Limited::Rate { retry_after: 1 })
    );
    // Another tool, another identity: not limited.
    assert!(limits.admit_tool_at(&rules, &a, "demo", "echo", 0).is_ok());
    assert!(
        limits
            .admit_tool_at(&rules, &b, "demo", "search", 0)
            .is_ok()
    );
    // A reload with a slower rate keeps `a`'s empty bucket.
    config.tool_rules = vec![tool_rule(0.1)];
    limits.replace(&config);
    let rules = limits.rules();
    assert_eq!(rules.generation, 2);
    assert!(
        limits
            .admit_tool_at(&rules, &a, "demo", "search", 0)
            .is_err()
    );
}

#[test]
fn a_reload_changes_the_limits_and_keeps_the_counts() {
    let mut config = config(LimitSpec {
        max_in_flight: Some(3),
        ..LimitSpec::default()
    });
    let limits = limits(&config);
    let a = id("spiffe://t/a");
    let rules = limits.rules();
    let held: Vec<_> = (0..3)
        .map(|_| limits.admit_at(&rules, &a, Hold::Request, 0).unwrap())
        .collect();
    config.default = Some(LimitSpec {
        max_in_flight: Some(4),
        ..LimitSpec::default()
    });
    limits.replace(&config);
    let rules = limits.rules();
    // Three are still in flight: one more fits under the new cap of 4.
    let fourth = limits.admit_at(&rules, &a, Hold::Request, 0).unwrap();
    assert!(fourth.is_some());
    assert_eq!(
        limits.admit_at(&rules, &a, Hold::Request, 0).unwrap_err(),
        Limited::InFlight
    );
    drop(held);
    // No rules at all: nothing is limited, and nothing is tracked anew.
    limits.replace(&PerIdentityLimits::default());
    assert!(
        limits
            .admit(&id("spiffe://t/new"), Hold::Request)
            .unwrap()
            .is_none()
    );
}

use super::*;
use crate::metrics::Metrics;

const PERMIT: DecisionReason = DecisionReason::Permitted;
const FORBID: DecisionReason = DecisionReason::Forbidden;

fn ids(ids: &[&str]) -> Vec<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

fn render(m: &Metrics) -> String {
    String::from_utf8(m.render()).unwrap()
}

/// The exposition line of one series.
fn line(policy_id: &str, effect: &str, count: u64) -> String {
    format!(
        "mcp_gateway_policy_decisions_total{{effect=\"{effect}\",policy_id=\"{policy_id}\"}} {count}"
    )
}

fn assert_lines(m: &Metrics, lines: &[String]) {
    let text = render(m);
    for line in lines {
        assert!(text.contains(line.as_str()), "{line} missing:\n{text}");
    }
}

/// Every `policy_id` value exported.
fn labels(m: &Metrics) -> HashSet<String> {
    render(m)
        .lines()
        .filter_map(|l| l.strip_prefix("mcp_gateway_policy_decisions_total{"))
        .filter_map(|l| l.split("policy_id=\"").nth(1)?.split('"').next())
        .map(str::to_owned)
        .collect()
}

fn set<const N: usize>(ids: [&str; N]) -> HashSet<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

#[test]
fn each_loaded_id_counts_under_its_own_series_and_effect() {
    let m = Metrics::new();
    let counts = m.policy_counts([("echo", PERMIT), ("no-deletes", FORBID)]);
    counts.count(Reason::Permit, &ids(&["echo"]));
    counts.count(Reason::Permit, &ids(&["echo"]));
    counts.count(Reason::Forbid, &ids(&["no-deletes"]));
    counts.count(Reason::PolicyError, &ids(&["echo", "no-deletes"]));
    // Decisions without a determining policy count nothing here.
    counts.count(Reason::DefaultDeny, &[]);
    counts.count(Reason::CallerResponse, &[]);
    assert_lines(
        &m,
        &[
            line("echo", "permit", 2),
            line("no-deletes", "forbid", 1),
            line("echo", "error", 1),
            line("no-deletes", "error", 1),
            line("other", "permit", 0),
            line("other", "forbid", 0),
            line("other", "error", 0),
        ],
    );
    let text = render(&m);
    assert!(!text.contains(&line("echo", "forbid", 0)), "{text}");
    assert!(!text.contains(&line("no-deletes", "permit", 0)), "{text}");
}

#[test]
fn a_loaded_policy_is_exported_at_zero_before_it_fires() {
    let m = Metrics::new();
    m.policy_counts([("never-fires", FORBID)]);
    assert_lines(&m, &[line("never-fires", "forbid", 0)]);
}

#[test]
fn an_id_outside_the_loaded_set_counts_as_other_and_names_nothing() {
    let m = Metrics::new();
    let counts = m.policy_counts([("echo", PERMIT)]);
    counts.count(Reason::Permit, &ids(&["caller-made-this-up"]));
    counts.count(Reason::PolicyError, &ids(&["ghost"]));
    // A permit determining a forbid cannot happen; it still mints nothing.
    counts.count(Reason::Forbid, &ids(&["echo"]));
    assert_lines(
        &m,
        &[
            line("other", "permit", 1),
            line("other", "error", 1),
            line("other", "forbid", 1),
            line("echo", "permit", 0),
        ],
    );
    assert_eq!(labels(&m), set(["echo", "other"]));
}

#[test]
fn ids_past_the_cap_count_as_other() {
    let m = Metrics::new();
    let counts = m
        .policy_decisions
        .resolve([("a", PERMIT), ("b", FORBID), ("c", PERMIT)], 2);
    counts.count(Reason::Permit, &ids(&["a", "c"]));
    counts.count(Reason::Forbid, &ids(&["b"]));
    counts.count(Reason::PolicyError, &ids(&["c"]));
    assert_lines(
        &m,
        &[
            line("a", "permit", 1),
            line("b", "forbid", 1),
            line("other", "permit", 1),
            line("other", "error", 1),
        ],
    );
    assert_eq!(labels(&m), set(["a", "b", "other"]));
}

#[test]
fn the_cap_holds_across_reloads_that_rename_every_policy() {
    let m = Metrics::new();
    let cap = 4;
    let first = m
        .policy_decisions
        .resolve([("kept", PERMIT), ("x", PERMIT), ("y", FORBID)], cap);
    for reload in 0..50 {
        let renamed: Vec<String> = (0..10).map(|i| format!("r{reload}-{i}")).collect();
        let set = renamed.iter().map(|n| (n.as_str(), PERMIT));
        let counts = m
            .policy_decisions
            .resolve(set.chain([("kept", PERMIT)]), cap);
        counts.count(Reason::Permit, &renamed);
        counts.count(Reason::Permit, &ids(&["kept"]));
    }
    // The first reload's first new id took the last place; every other
    // renamed id counted as other.
    assert_eq!(labels(&m), set(["kept", "x", "y", "r0-0", "other"]));
    // A request still on the first snapshot counts into the same series.
    first.count(Reason::Permit, &ids(&["kept"]));
    assert_lines(
        &m,
        &[
            line("kept", "permit", 51),
            line("r0-0", "permit", 1),
            line("other", "permit", 9 + 49 * 10),
        ],
    );
}

#[test]
fn the_process_cap_gives_at_most_500_ids_a_series() {
    assert_eq!(POLICY_ID_SERIES_CAP, 500);
    let m = Metrics::new();
    let names: Vec<String> = (0..=POLICY_ID_SERIES_CAP)
        .map(|i| format!("p{i}"))
        .collect();
    let counts = m.policy_counts(names.iter().map(|n| (n.as_str(), PERMIT)));
    counts.count(Reason::Permit, &names);
    assert_eq!(labels(&m).len(), POLICY_ID_SERIES_CAP + 1, "ids and other");
    assert_lines(&m, &[line("p499", "permit", 1), line("other", "permit", 1)]);
    assert!(!render(&m).contains("\"p500\""));
}

#[test]
fn a_policy_named_other_counts_as_other() {
    let m = Metrics::new();
    let counts = m.policy_decisions.resolve([("other", FORBID)], 1);
    counts.count(Reason::Forbid, &ids(&["other"]));
    // It took no place: the next id still gets its own series.
    m.policy_decisions.resolve([("next", PERMIT)], 1);
    assert_lines(&m, &[line("other", "forbid", 1), line("next", "permit", 0)]);
}

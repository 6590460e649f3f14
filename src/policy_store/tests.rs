use super::*;

const SCHEMA: &str = include_str!("../../policies/mcp.cedarschema");
const ECHO: &str = r#"@id("echo")
permit (principal, action == Mcp::Action::"tools/call", resource == Mcp::Tool::"demo/echo");"#;
const DELETE: &str = r#"@id("delete")
permit (principal, action == Mcp::Action::"tools/call", resource == Mcp::Tool::"demo/delete");"#;

fn allows(store: &PolicyStore, tool: &str) -> bool {
    let input = crate::policy::PolicyInput {
        principal: "spiffe://example.org/ns/demo/sa/agent",
        action: "tools/call",
        server: "demo",
        server_spiffe_id: "spiffe://example.org/ns/demo/sa/mcp-server",
        target: crate::policy::Target::Tool(tool),
        arguments: None,
        session_id: None,
        protocol_version: None,
        user: None,
        now_unix_ms: 0,
        pin: None,
    };
    store.current().enforced.decide(&input).allowed
}

fn config(dir: &Path, shadow: Option<&Path>) -> PolicyConfig {
    PolicyConfig {
        dir: dir.to_owned(),
        shadow_dir: shadow.map(Path::to_owned),
        watch_interval: None,
        pins_dir: None,
        pin_upstreams: Vec::new(),
    }
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

#[tokio::test]
async fn a_valid_change_replaces_the_set_and_an_invalid_one_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "mcp.cedarschema", SCHEMA);
    write(dir.path(), "p.cedar", ECHO);
    let metrics = Metrics::new();
    let store = PolicyStore::load(&config(dir.path(), None), metrics.clone()).unwrap();
    let first = store.current().enforced.version().to_owned();
    assert!(allows(&store, "echo") && !allows(&store, "delete"));

    // Nothing changed: nothing reloaded, same snapshot.
    let before = store.current();
    assert!(store.reload(Trigger::Changed).await);
    assert!(Arc::ptr_eq(&before, &store.current()));

    write(dir.path(), "p.cedar", &format!("{ECHO}\n{DELETE}"));
    assert!(store.reload(Trigger::Changed).await);
    let second = store.current().enforced.version().to_owned();
    assert_ne!(first, second);
    assert!(allows(&store, "delete"));
    assert_eq!(metrics.policy_count.get(), 2);
    // The new set's ids have their series, counted through its snapshot.
    let ids = ["delete".to_owned()];
    store
        .current()
        .counts
        .count(crate::audit::Reason::Permit, &ids);
    let text = String::from_utf8(metrics.render()).unwrap();
    for line in [
        r#"mcp_gateway_policy_decisions_total{effect="permit",policy_id="delete"} 1"#,
        r#"mcp_gateway_policy_decisions_total{effect="permit",policy_id="echo"} 0"#,
    ] {
        assert!(text.contains(line), "{line} missing:\n{text}");
    }

    // A syntax error: rejected, the last good set stays, the failure shows.
    write(dir.path(), "p.cedar", "permit (principal, action, resource");
    assert!(!store.reload(Trigger::Changed).await);
    assert_eq!(store.current().enforced.version(), second);
    assert!(allows(&store, "delete"));
    assert_eq!(metrics.policy_reload_failing.get(), 1);
    let text = String::from_utf8(metrics.render()).unwrap();
    assert!(
        text.contains(r#"mcp_gateway_policy_reloads_total{result="failure"} 1"#),
        "{text}"
    );

    // Fixed again: in force, failing cleared.
    write(dir.path(), "p.cedar", ECHO);
    assert!(store.reload(Trigger::Changed).await);
    assert_eq!(store.current().enforced.version(), first);
    assert_eq!(metrics.policy_reload_failing.get(), 0);
}

#[tokio::test]
async fn a_kubernetes_symlink_swap_is_seen() {
    // A ConfigMap volume: visible names are symlinks into `..data`, itself
    // a symlink to a timestamped directory that is swapped atomically.
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let v1 = r.join("..2026_11_30_v1");
    std::fs::create_dir(&v1).unwrap();
    write(&v1, "mcp.cedarschema", SCHEMA);
    write(&v1, "p.cedar", ECHO);
    std::os::unix::fs::symlink("..2026_11_30_v1", r.join("..data")).unwrap();
    for name in ["mcp.cedarschema", "p.cedar"] {
        std::os::unix::fs::symlink(format!("..data/{name}"), r.join(name)).unwrap();
    }
    let store = PolicyStore::load(&config(r, None), Metrics::new()).unwrap();
    assert!(!allows(&store, "delete"));

    let v2 = r.join("..2026_11_30_v2");
    std::fs::create_dir(&v2).unwrap();
    write(&v2, "mcp.cedarschema", SCHEMA);
    write(&v2, "p.cedar", DELETE);
    std::os::unix::fs::symlink("..2026_11_30_v2", r.join("..data_tmp")).unwrap();
    std::fs::rename(r.join("..data_tmp"), r.join("..data")).unwrap();

    assert!(store.reload(Trigger::Changed).await);
    assert!(allows(&store, "delete") && !allows(&store, "echo"));
}

#[tokio::test]
async fn the_shadow_set_reloads_on_its_own_and_an_invalid_start_fails() {
    let enforced = tempfile::tempdir().unwrap();
    let shadow = tempfile::tempdir().unwrap();
    for d in [enforced.path(), shadow.path()] {
        write(d, "mcp.cedarschema", SCHEMA);
        write(d, "p.cedar", ECHO);
    }
    let store = PolicyStore::load(
        &config(enforced.path(), Some(shadow.path())),
        Metrics::new(),
    )
    .unwrap();
    let enforced_before = Arc::clone(&store.current().enforced);
    write(shadow.path(), "p.cedar", DELETE);
    assert!(store.reload(Trigger::Changed).await);
    let now = store.current();
    assert!(
        Arc::ptr_eq(&enforced_before, &now.enforced),
        "enforced set untouched"
    );
    assert_ne!(
        now.shadow.as_ref().unwrap().version(),
        now.enforced.version()
    );

    write(shadow.path(), "p.cedar", "forbid (");
    let err = PolicyStore::load(
        &config(enforced.path(), Some(shadow.path())),
        Metrics::new(),
    )
    .err()
    .expect("an invalid shadow set refuses to start");
    assert!(err.to_string().contains("shadow policies"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn decisions_under_load_never_fail_or_mix_sets_across_reloads() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "mcp.cedarschema", SCHEMA);
    write(dir.path(), "p.cedar", ECHO);
    let store = Arc::new(PolicyStore::load(&config(dir.path(), None), Metrics::new()).unwrap());
    let v_echo = store.current().enforced.version().to_owned();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (store, stop, v_echo) = (Arc::clone(&store), Arc::clone(&stop), v_echo.clone());
        workers.push(tokio::spawn(async move {
            let mut decided = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // One snapshot: its decision must match its own version.
                let snapshot = store.current();
                let echo_set = snapshot.enforced.version() == v_echo;
                let input = crate::policy::PolicyInput {
                    principal: "spiffe://example.org/ns/demo/sa/agent",
                    action: "tools/call",
                    server: "demo",
                    server_spiffe_id: "spiffe://example.org/ns/demo/sa/mcp-server",
                    target: crate::policy::Target::Tool("echo"),
                    arguments: None,
                    session_id: None,
                    protocol_version: None,
                    user: None,
                    now_unix_ms: 0,
                    pin: None,
                };
                let d = snapshot.enforced.decide(&input);
                assert_eq!(d.allowed, echo_set, "{d:?}");
                decided += 1;
                tokio::task::yield_now().await;
            }
            decided
        }));
    }
    let mut swaps = 0;
    for i in 0..20 {
        let text = if i % 2 == 0 { DELETE } else { ECHO };
        write(dir.path(), "p.cedar", text);
        if i % 7 == 3 {
            write(dir.path(), "bad.cedar", "permit (");
            assert!(!store.reload(Trigger::Forced).await);
            std::fs::remove_file(dir.path().join("bad.cedar")).unwrap();
        }
        assert!(store.reload(Trigger::Forced).await);
        swaps += 1;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for w in workers {
        total += w.await.expect("no worker panicked");
    }
    assert_eq!(swaps, 20);
    assert!(total > 20, "workers decided only {total} times");
}

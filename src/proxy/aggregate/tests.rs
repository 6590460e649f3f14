use super::call::rename_target;
use super::fanout::keep_common_versions;
use super::names::{prefix_names, split_tool, unwrap_uri, wrap_resources, wrap_uri};
use super::*;

#[test]
fn names_split_on_the_first_separator() {
    assert_eq!(split_tool("github__echo"), Some(("github", "echo")));
    assert_eq!(split_tool("jira__github__x"), Some(("jira", "github__x")));
    assert_eq!(split_tool("echo"), None);
    assert_eq!(split_tool("__echo"), None);
    assert_eq!(split_tool("github__"), None);
    assert_eq!(split_tool(""), None);
}

#[test]
fn tools_are_prefixed_and_nameless_ones_dropped() {
    let mut result = serde_json::json!({
        "tools": [
            { "name": "echo", "inputSchema": { "type": "object" } },
            { "name": "github__x" },
            { "description": "no name" },
            { "name": 7 },
        ],
        "nextCursor": "p2",
    });
    let tools = prefix_names("jira", &mut result, "tools");
    let names: Vec<&str> = tools.iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["jira__echo", "jira__github__x"]);
    assert_eq!(tools[0]["inputSchema"]["type"], "object");
    assert_eq!(result["nextCursor"], "p2");
    // A jira tool named like a github one routes back to jira only.
    let (server, tool) = split_tool(names[1]).unwrap();
    assert_eq!((server, tool), ("jira", "github__x"));
}

#[test]
fn prompts_are_prefixed_under_their_own_field() {
    assert_eq!(offered_list("prompts/list").unwrap().field(), "prompts");
    assert_eq!(offered_list("tools/list").unwrap().field(), "tools");
    assert_eq!(offered_list("resources/templates/list"), None);
    let mut result = serde_json::json!({
        "prompts": [
            { "name": "review", "arguments": [{ "name": "topic" }] },
            { "name": "alpha__review" },
            { "title": "no name" },
        ],
        "tools": [{ "name": "echo" }],
    });
    let prompts = prefix_names("beta", &mut result, "prompts");
    let names: Vec<&str> = prompts
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["beta__review", "beta__alpha__review"]);
    assert_eq!(prompts[0]["arguments"][0]["name"], "topic");
    // Only the named field is taken.
    assert_eq!(result["tools"][0]["name"], "echo");
    assert!(prefix_names("beta", &mut result, "prompts").is_empty());
}

#[test]
fn a_prompts_get_is_renamed_like_a_tools_call() {
    let body = br#"{"jsonrpc":"2.0","id":"p","method":"prompts/get","params":{"name":"alpha__review","arguments":{"topic":"alpha__review"}}}"#;
    let out = rename_target(body, "name", "review").unwrap();
    let Ok(mcp::Body::Single(m)) = mcp::parse_body(&out) else {
        panic!("not a single message");
    };
    assert_eq!(m.method.as_deref(), Some("prompts/get"));
    assert_eq!(m.target.as_deref(), Some("review"));
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["params"]["arguments"]["topic"], "alpha__review");
    assert_eq!(v["id"], "p");
}

#[test]
fn resource_uris_are_wrapped_and_unwrapped_exactly() {
    let original = "note://beta/hello?x=1&y=2#f";
    let wrapped = wrap_uri("beta", original);
    assert_eq!(
        wrapped,
        "mcp-gateway://beta/note%3A%2F%2Fbeta%2Fhello%3Fx%3D1%26y%3D2%23f"
    );
    assert_eq!(unwrap_uri(&wrapped), Some(("beta", original.to_owned())));
    let unicode = wrap_uri("a", "file:///d\u{e9}j\u{e0} vu");
    assert_eq!(
        unicode,
        "mcp-gateway://a/file%3A%2F%2F%2Fd%C3%A9j%C3%A0%20vu"
    );
    assert_eq!(unwrap_uri(&unicode).unwrap().1, "file:///d\u{e9}j\u{e0} vu");
    // Anything but the one encoding wrap_uri makes is refused.
    for bad in [
        "file:///etc/hosts",
        "mcp-gateway://beta",
        "mcp-gateway://beta/",
        "mcp-gateway:///note%3A",
        "mcp-gateway://beta/note%3a%2F%2Fx",
        "mcp-gateway://beta/note:%2F%2Fx",
        "mcp-gateway://beta/note%3",
        "mcp-gateway://beta/note%ZZ",
        "mcp-gateway://beta/%FF",
        "MCP-GATEWAY://beta/x",
    ] {
        assert_eq!(unwrap_uri(bad), None, "{bad}");
    }
    // The upstream is the segment before the first `/`, not a lookalike
    // inside the encoded URI.
    let inner = wrap_uri("alpha", "mcp-gateway://beta/x");
    assert_eq!(unwrap_uri(&inner).unwrap().0, "alpha");
}

#[test]
fn listed_resources_are_wrapped_and_uriless_ones_dropped() {
    let mut result = serde_json::json!({
        "resources": [
            { "uri": "file:///docs/readme.md", "name": "readme" },
            { "name": "no uri" },
            { "uri": 7 },
        ],
    });
    let resources = wrap_resources("alpha", &mut result);
    assert_eq!(resources.len(), 1);
    assert_eq!(
        resources[0]["uri"],
        "mcp-gateway://alpha/file%3A%2F%2F%2Fdocs%2Freadme.md"
    );
    assert_eq!(resources[0]["name"], "readme");
    assert_eq!(offered_list("resources/list").unwrap().field(), "resources");
}

#[test]
fn a_resources_read_is_rewritten_to_the_original_uri() {
    let wrapped = wrap_uri("alpha", "file:///docs/readme.md");
    let body = serde_json::to_vec(&serde_json::json!({
        "jsonrpc": "2.0", "id": 1, "method": "resources/read", "params": { "uri": wrapped },
    }))
    .unwrap();
    let (_, original) = unwrap_uri(&wrapped).unwrap();
    let out = rename_target(&body, "uri", &original).unwrap();
    let Ok(mcp::Body::Single(m)) = mcp::parse_body(&out) else {
        panic!("not a single message");
    };
    assert_eq!(m.method.as_deref(), Some("resources/read"));
    assert_eq!(m.target.as_deref(), Some("file:///docs/readme.md"));
}

#[test]
fn rename_rewrites_only_the_name() {
    let body = br#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"github__echo","arguments":{"text":"github__echo"}}}"#;
    let out = rename_target(body, "name", "echo").unwrap();
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["params"]["name"], "echo");
    assert_eq!(v["params"]["arguments"]["text"], "github__echo");
    assert_eq!(v["id"], 3);
    assert!(
        rename_target(
            br#"{"jsonrpc":"2.0","id":3,"method":"tools/call"}"#,
            "name",
            "x"
        )
        .is_none()
    );
}

#[test]
fn discover_offers_only_versions_every_answering_member_lists() {
    let mut kept = None;
    keep_common_versions(&mut kept, &["2026-07-28", "2099-01-01"]);
    assert_eq!(kept.as_deref(), Some(&["2026-07-28"][..]));
    keep_common_versions(&mut kept, &["2025-11-25", "2026-07-28"]);
    assert_eq!(kept.as_deref(), Some(&["2026-07-28"][..]));
    keep_common_versions(&mut kept, &["2025-11-25"]);
    assert_eq!(kept.as_deref(), Some(&[][..]));
    let mut none = None;
    keep_common_versions(&mut none, &[] as &[&str]);
    assert_eq!(none.as_deref(), Some(&[][..]));
}

#[test]
fn member_headers_carry_the_members_session_not_the_callers() {
    let mut h = HeaderMap::new();
    h.insert(protocol::SESSION_HEADER, HeaderValue::from_static("agg"));
    h.insert(
        protocol::PROTOCOL_VERSION_HEADER,
        HeaderValue::from_static("2025-11-25"),
    );
    let link = Link {
        session: Some("up-1".into()),
        version: "2025-06-18".into(),
    };
    let out = member_headers(&h, Some(&link));
    assert_eq!(out[protocol::SESSION_HEADER], "up-1");
    assert_eq!(out[protocol::PROTOCOL_VERSION_HEADER], "2025-06-18");
    let none = member_headers(&h, None);
    assert!(none.get(protocol::SESSION_HEADER).is_none());
    let stateless = Link {
        session: None,
        version: "2025-11-25".into(),
    };
    assert!(
        member_headers(&h, Some(&stateless))
            .get(protocol::SESSION_HEADER)
            .is_none()
    );
}

fn table(max: usize) -> Aggregate {
    let bounds = crate::proxy::session::Bounds {
        idle: std::time::Duration::from_secs(60),
        lifetime: std::time::Duration::from_secs(3600),
        max,
        max_per_identity: max,
    };
    let keys = Arc::new(crate::proxy::session::keys::SessionKeys::load(None).unwrap());
    Aggregate {
        name: "all".into(),
        members: Vec::new(),
        sessions: Sessions::new(bounds, keys, "a:all".into()),
    }
}

#[test]
fn aggregated_sessions_are_sealed_random_owned_and_bounded() {
    let agg = table(2);
    let links: Links = vec![Some(Link {
        session: Some("member-session".into()),
        version: "2025-11-25".into(),
    })]
    .into();
    let owner: Arc<str> = Arc::from("spiffe://t/a");
    let open = |agg: &Aggregate| {
        let reservation = agg.sessions.reserve(&owner)?;
        Aggregate::open_session(reservation, Arc::clone(&links))
    };
    let a = open(&agg).unwrap();
    let b = open(&agg).unwrap();
    assert_ne!(a, b);
    assert!(
        !a.contains("member-session"),
        "a member's id is never shown"
    );
    let session = agg.sessions.check(&a, "spiffe://t/a").unwrap();
    assert_eq!(session.value, links);
    assert_eq!(
        session.handle.len(),
        32,
        "the handle records name is random"
    );
    assert!(session.handle.bytes().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(
        agg.sessions.check(&a, "spiffe://t/b"),
        Err(SessionRefusal::NotOwner)
    );
    assert!(agg.sessions.check(&a, "spiffe://t/a").is_ok());
    assert_eq!(open(&agg), Err(SessionRefusal::Full));
    assert_eq!(
        agg.sessions.remove(&a).map(|s| s.value),
        Some(links.clone())
    );
    assert_eq!(
        agg.sessions.check(&a, "spiffe://t/a"),
        Err(SessionRefusal::Unknown)
    );
}

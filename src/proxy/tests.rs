use super::routed_name;

#[test]
fn the_upstream_name_is_the_one_segment_after_the_listener_path() {
    let cases = [
        ("/mcp", "/mcp/github", Some("github")),
        ("/mcp", "/mcp/a.b-c_d", Some("a.b-c_d")),
        ("/mcp/", "/mcp/github", Some("github")),
        ("/", "/github", Some("github")),
        // Not a name: the bare path, an empty name, another prefix.
        ("/mcp", "/mcp", None),
        ("/mcp", "/mcp/", None),
        ("/mcp", "/mcpx/github", None),
        ("/mcp", "/other/github", None),
        // More than one segment is a name no upstream has (they hold no '/').
        ("/mcp", "/mcp/github/x", Some("github/x")),
    ];
    for (prefix, path, want) in cases {
        assert_eq!(routed_name(prefix, path), want, "{prefix} {path}");
    }
}

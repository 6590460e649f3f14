use hyper::header::HeaderValue;

use super::*;

#[test]
fn loopback_authorities() {
    let cases: &[(&str, bool)] = &[
        ("localhost", true),
        ("localhost:8080", true),
        ("LOCALHOST:8080", true),
        ("127.0.0.1", true),
        ("127.0.0.1:8080", true),
        ("127.1.2.3:1", true),
        ("[::1]", true),
        ("[::1]:8080", true),
        ("[0:0:0:0:0:0:0:1]:80", true),
        // DNS rebinding: any other name, even one resolving to 127.0.0.1.
        ("evil.example", false),
        ("evil.example:8080", false),
        ("localhost.evil.example", false),
        ("evil.localhost", false),
        ("localhost.", false),
        ("127.0.0.1.nip.io", false),
        ("0.0.0.0:8080", false),
        ("10.0.0.1:8080", false),
        ("[::]:8080", false),
        ("[::ffff:127.0.0.1]:8080", false),
        ("::1", false),
        ("[::1", false),
        ("[::1]x", false),
        ("user@localhost", false),
        ("localhost:", false),
        ("localhost:99999", false),
        ("localhost:+80", false),
        ("localhost:80:80", false),
        ("localhost/path", false),
        ("2130706433", false),
        ("0x7f.1", false),
        ("", false),
    ];
    for (authority, want) in cases {
        assert_eq!(is_loopback_authority(authority), *want, "{authority:?}");
    }
}

#[test]
fn loopback_origins() {
    let cases: &[(&str, bool)] = &[
        ("http://localhost:3000", true),
        ("http://127.0.0.1:8080", true),
        ("https://[::1]:8443", true),
        ("http://localhost", true),
        ("null", false),
        ("", false),
        ("http://evil.example", false),
        ("http://evil.example:8080", false),
        ("https://localhost.evil.example", false),
        ("file://", false),
        ("ftp://localhost", false),
        ("http://localhost/", false),
        ("http://user@localhost", false),
        ("localhost:3000", false),
    ];
    for (origin, want) in cases {
        assert_eq!(is_loopback_origin(origin), *want, "{origin:?}");
    }
}

fn check(headers: &[(&str, &str)], uri: &str) -> Result<(), &'static str> {
    let mut map = HeaderMap::new();
    for (k, v) in headers {
        map.append(
            header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    check_local_request(&map, &uri.parse().unwrap()).map_err(|e| e.audit_reason().as_str())
}

#[test]
fn requests_from_local_clients_pass() {
    assert_eq!(check(&[("host", "127.0.0.1:8080")], "/mcp"), Ok(()));
    assert_eq!(check(&[("host", "localhost:8080")], "/mcp"), Ok(()));
    let local_page = [
        ("host", "localhost:8080"),
        ("origin", "http://localhost:3000"),
    ];
    assert_eq!(check(&local_page, "/mcp"), Ok(()));
    // HTTP/2: the authority in the URI, with or without a Host header.
    assert_eq!(check(&[], "http://127.0.0.1:8080/mcp"), Ok(()));
    let both = [("host", "127.0.0.1:8080")];
    assert_eq!(check(&both, "http://127.0.0.1:8080/mcp"), Ok(()));
}

#[test]
fn browser_attacks_are_refused() {
    // (name, headers, request URI, audit reason of the refusal)
    type Case = (
        &'static str,
        &'static [(&'static str, &'static str)],
        &'static str,
        &'static str,
    );
    let cases: &[Case] = &[
        ("no host at all", &[], "/mcp", "foreign_host"),
        (
            "rebound name",
            &[("host", "evil.example:8080")],
            "/mcp",
            "foreign_host",
        ),
        (
            "rebound name in :authority",
            &[],
            "http://evil.example:8080/mcp",
            "foreign_host",
        ),
        (
            "Host and :authority disagree",
            &[("host", "localhost:8080")],
            "http://evil.example:8080/mcp",
            "foreign_host",
        ),
        (
            "two Host headers",
            &[("host", "localhost"), ("host", "evil.example")],
            "/mcp",
            "duplicate_header",
        ),
        (
            "cross-origin page",
            &[
                ("host", "localhost:8080"),
                ("origin", "http://evil.example"),
            ],
            "/mcp",
            "foreign_origin",
        ),
        (
            "sandboxed page",
            &[("host", "localhost:8080"), ("origin", "null")],
            "/mcp",
            "foreign_origin",
        ),
        (
            "two Origin headers",
            &[
                ("host", "localhost:8080"),
                ("origin", "http://localhost"),
                ("origin", "http://evil.example"),
            ],
            "/mcp",
            "duplicate_header",
        ),
    ];
    for (name, headers, uri, want) in cases {
        assert_eq!(check(headers, uri), Err(*want), "{name}");
    }
}

#[test]
fn refusals_are_403_with_the_transport_code() {
    for refusal in [ProxyError::ForeignHost, ProxyError::ForeignOrigin] {
        let (status, code) = refusal.status_and_code();
        assert_eq!(status, hyper::StatusCode::FORBIDDEN);
        assert_eq!(code, crate::proxy::CODE_BAD_TRANSPORT);
        assert!(!refusal.answers_the_call());
    }
}

//! The `spiffe-mcp-gateway` command line: `check` validates config and
//! policies without serving, and names the field or file that is wrong.

use std::path::Path;
use std::process::Command;

fn gateway(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_spiffe-mcp-gateway"))
        .args(args)
        .env_remove("SPIFFE_ENDPOINT_SOCKET")
        .output()
        .expect("run the gateway binary");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

fn examples() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

#[test]
fn check_accepts_the_example_configs() {
    for name in ["gateway.yaml", "sidecar.yaml", "upstreams.yaml"] {
        let path = examples().join(name);
        let (ok, text) = gateway(&["check", "--config", path.to_str().unwrap()]);
        assert!(ok, "{name}: {text}");
        assert!(text.contains("ok: config"), "{name}: {text}");
    }
}

#[test]
fn check_names_the_bad_field_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read_to_string(examples().join("gateway.yaml")).unwrap();
    let policies = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let good = good.replace(
        "\"../policies\"",
        &format!("{:?}", policies.display().to_string()),
    );
    let cases = [
        (
            "max_body_bytes: 1048576",
            "max_body_bytes: lots",
            "limits.max_body_bytes",
        ),
        ("  name: \"demo\"", "  name: \"demo\"\n  nmae: typo", "nmae"),
        (
            "url: \"https://mcp-server.demo.svc:8443/mcp\"",
            "url: \"ftp://x/mcp\"",
            "upstream.url",
        ),
    ];
    for (from, to, field) in cases {
        assert!(good.contains(from), "fixture lacks {from}");
        let path = dir.path().join("bad.yaml");
        std::fs::write(&path, good.replacen(from, to, 1)).unwrap();
        let (ok, text) = gateway(&["check", "--config", path.to_str().unwrap()]);
        assert!(!ok, "{field}: accepted: {text}");
        assert!(
            text.contains(field) && text.contains("bad.yaml"),
            "{field}: {text}"
        );
    }
}

#[test]
fn check_fails_on_policies_that_do_not_load() {
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    let schema = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/mcp.cedarschema");
    std::fs::copy(schema, policies.join("mcp.cedarschema")).unwrap();
    std::fs::write(
        policies.join("broken.cedar"),
        "@id(\"x\") permit (principal, action, resource) when {",
    )
    .unwrap();
    let config = std::fs::read_to_string(examples().join("gateway.yaml"))
        .unwrap()
        .replace("\"../policies\"", "\"policies\"");
    let path = dir.path().join("gw.yaml");
    std::fs::write(&path, config).unwrap();
    let (ok, text) = gateway(&["check", "--config", path.to_str().unwrap()]);
    assert!(!ok, "{text}");
    assert!(text.contains("broken.cedar"), "{text}");
}

#[test]
fn serve_exits_with_a_clear_message_when_policies_do_not_load() {
    let dir = tempfile::tempdir().unwrap();
    let config = std::fs::read_to_string(examples().join("gateway.yaml"))
        .unwrap()
        .replace("\"../policies\"", "\"no-such-dir\"")
        .replace("0.0.0.0:8443", "127.0.0.1:0")
        .replace("127.0.0.1:9090", "127.0.0.1:0");
    let path = dir.path().join("gw.yaml");
    std::fs::write(&path, config).unwrap();
    let (ok, text) = gateway(&["serve", "--config", path.to_str().unwrap()]);
    assert!(!ok, "{text}");
    assert!(
        text.contains("loading policies") && text.contains("no-such-dir"),
        "{text}"
    );
}

#[test]
fn check_also_loads_the_shadow_set_and_the_jwks_file() {
    let dir = tempfile::tempdir().unwrap();
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let shadow = dir.path().join("candidate");
    std::fs::create_dir(&shadow).unwrap();
    std::fs::copy(
        shipped.join("mcp.cedarschema"),
        shadow.join("mcp.cedarschema"),
    )
    .unwrap();
    std::fs::write(shadow.join("bad.cedar"), "forbid (").unwrap();
    let base = std::fs::read_to_string(examples().join("gateway.yaml"))
        .unwrap()
        .replace("\"../policies\"", &format!("{:?}", shipped));
    let write = |name: &str, extra: &str| {
        let text = base.replace(
            &format!("dir: {:?}", shipped),
            &format!("dir: {:?}\n  shadow_dir: {:?}", shipped, shadow),
        ) + extra;
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let path = write("shadow.yaml", "");
    let (ok, text) = gateway(&["check", "--config", path.to_str().unwrap()]);
    assert!(
        !ok && text.contains("shadow policies") && text.contains("bad.cedar"),
        "{text}"
    );

    std::fs::remove_file(shadow.join("bad.cedar")).unwrap();
    std::fs::write(
        dir.path().join("jwks.json"),
        r#"{"keys":[{"kty":"oct","kid":"s","k":"c2VjcmV0"}]}"#,
    )
    .unwrap();
    let path = write(
        "users.yaml",
        "user_auth:\n  jwks_file: jwks.json\n  issuer: https://idp\n  audience: gw\n",
    );
    let (ok, text) = gateway(&["check", "--config", path.to_str().unwrap()]);
    assert!(!ok && text.contains("shared secret"), "{text}");
}

/// `check` logs as the config's `log:` says, and writes no colour codes
/// when stderr is not a terminal (here: a pipe).
#[test]
fn check_honours_log_format_and_writes_no_colour_to_a_pipe() {
    let dir = tempfile::tempdir().unwrap();
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let base = std::fs::read_to_string(examples().join("gateway.yaml"))
        .unwrap()
        .replace("\"../policies\"", &format!("{:?}", shipped));
    for format in ["text", "json"] {
        let path = dir.path().join(format!("{format}.yaml"));
        let text = format!("{base}\nlog:\n  format: {format}\n  level: info\n");
        std::fs::write(&path, text).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_spiffe-mcp-gateway"))
            .args(["check", "--config", path.to_str().unwrap()])
            .env_remove("SPIFFE_ENDPOINT_SOCKET")
            .env_remove("NO_COLOR")
            .env_remove("RUST_LOG")
            .output()
            .expect("run the gateway binary");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert!(out.status.success(), "{format}: {stderr}");
        assert!(
            !stderr.contains('\u{1b}'),
            "{format}: colour codes in {stderr:?}"
        );
        let lines: Vec<&str> = stderr.lines().collect();
        assert!(
            lines.iter().any(|l| l.contains("policy set loaded")),
            "{format}: {stderr}"
        );
        for line in lines {
            let json = serde_json::from_str::<serde_json::Value>(line).is_ok();
            assert_eq!(json, format == "json", "{format}: {line}");
        }
    }
}

/// `audit verify`'s exit code and output.
fn audit_verify(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_spiffe-mcp-gateway"))
        .args(["audit", "verify"])
        .args(args)
        .output()
        .expect("run the gateway binary");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn audit_verify_on_garbage_says_where_it_stopped_and_exits_by_the_documented_codes() {
    let dir = tempfile::tempdir().unwrap();
    let ca = rcgen::CertificateParams::new(Vec::<String>::new())
        .unwrap()
        .self_signed(&rcgen::KeyPair::generate().unwrap())
        .unwrap();
    let bundle = dir.path().join("bundle.pem");
    std::fs::write(&bundle, ca.pem()).unwrap();
    let bundle = bundle.to_str().unwrap();
    let log = dir.path().join("audit.jsonl");
    let genesis =
        r#"{"seq":0,"prev":null,"chain":"genesis","time":"t","gateway":null,"policy_version":"v"}"#;
    std::fs::write(&log, format!("{genesis}\nnot json at all\n")).unwrap();
    let log = log.to_str().unwrap();

    let (code, text) = audit_verify(&[log, "--bundle", bundle]);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains(&format!("TAMPERED at {log}:2: not a chained audit line")),
        "{text}"
    );

    let missing = dir.path().join("missing.jsonl");
    let (code, text) = audit_verify(&[missing.to_str().unwrap(), "--bundle", bundle]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("missing.jsonl"), "{text}");
    let (code, text) = audit_verify(&[log, "--bundle", log]);
    assert_eq!(code, 2, "a bundle without a certificate: {text}");
    let (code, text) = audit_verify(&[log]);
    assert_eq!(code, 2, "no --bundle: {text}");

    // Intact but never sealed: unproven, exit 3.
    std::fs::write(dir.path().join("audit.jsonl"), format!("{genesis}\n")).unwrap();
    let (code, text) = audit_verify(&[log, "--bundle", bundle]);
    assert_eq!(code, 3, "{text}");
    assert!(text.contains("unproven"), "{text}");
}

#[test]
fn check_reads_the_session_key_file_as_serve_would() {
    let dir = tempfile::tempdir().unwrap();
    let policies = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let keys = dir.path().join("keys");
    let config = std::fs::read_to_string(examples().join("gateway.yaml"))
        .unwrap()
        .replace("\"../policies\"", &format!("{:?}", policies))
        + &format!("sessions:\n  keys_file: {:?}\n", keys);
    let path = dir.path().join("gw.yaml");
    std::fs::write(&path, config).unwrap();

    let (ok, text) = gateway(&["check", "--config", path.to_str().unwrap()]);
    assert!(
        !ok && text.contains("keys") && text.contains("cannot be read"),
        "{text}"
    );

    std::fs::write(&keys, "k1 not-base64\n").unwrap();
    let (ok, text) = gateway(&["check", "--config", path.to_str().unwrap()]);
    assert!(
        !ok && text.contains("keys:1: the key is not base64"),
        "{text}"
    );

    let key = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [7u8; 32]);
    std::fs::write(&keys, format!("k1 {key}\n")).unwrap();
    let (ok, text) = gateway(&["check", "--config", path.to_str().unwrap()]);
    assert!(ok && text.contains("ok: session keys k1 in"), "{text}");
}

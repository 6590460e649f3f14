//! The tamper-evident audit log in process: a gateway's real run across an
//! SVID rotation leaves a chain that `audit verify`'s own function
//! verifies, its checkpoints signed by the leaf held at the time.

mod support;

use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};
use spiffe_mcp_gateway::audit::checkpoint::Bundle;
use spiffe_mcp_gateway::audit::verify::verify_files;

use support::gateway::{AGENT, GATEWAY, Harness, Options};
use support::workload_api::Svid;

fn ping() -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": "ping"})
}

const HEADERS: [(&str, &str); 1] = [("mcp-protocol-version", "2025-11-25")];

/// The audit file's lines, once the last one is a checkpoint and `records`
/// records are written (polled: the writer is its own thread).
async fn sealed(gw: &Harness, records: usize) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(gw.audit_path()).unwrap_or_default();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let written = lines.iter().filter(|v| v.get("chain").is_none()).count();
        let last_is_checkpoint = lines.last().is_some_and(|v| v["chain"] == "checkpoint");
        if written >= records && last_is_checkpoint {
            return lines;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no checkpoint after {records} records: {lines:#?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn pem(der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let body: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        body.join("\n")
    )
}

#[tokio::test]
async fn a_real_run_across_an_svid_rotation_verifies_with_a_checkpoint_by_each_leaf() {
    let gw = Harness::start_with(Options {
        audit_fields: ", checkpoint_every_records: 2, checkpoint_interval_seconds: 1".into(),
        ..Options::default()
    })
    .await;
    let agent = gw.agent(AGENT);
    for _ in 0..2 {
        agent.post("/mcp", &HEADERS, &ping()).await;
    }
    sealed(&gw, 2).await;
    let rotated = gw
        .ca
        .leaf_with(GATEWAY, &["localhost"], time::Duration::hours(1));
    gw.workload_api.set(Svid {
        leaf: rotated.clone(),
        bundle: vec![gw.ca.der.to_vec()],
        federated: Vec::new(),
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while gw.app.identity.svid_generation() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "no rotation seen");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for _ in 0..2 {
        agent.post("/mcp", &HEADERS, &ping()).await;
    }
    let lines = sealed(&gw, 4).await;
    assert_eq!(lines[0]["chain"], "genesis");
    assert_eq!(lines[0]["gateway"], GATEWAY);

    let bundle = Bundle::from_pem(pem(&gw.ca.der).as_bytes()).unwrap();
    let report = verify_files(&[gw.audit_path()], &bundle).unwrap();
    assert!(report.verified(), "{report:?}");
    assert_eq!(report.gateways, [GATEWAY]);
    assert_eq!(report.signers.len(), 2, "{report:?}");
    assert_ne!(report.signers[0], report.signers[1]);
    assert_eq!(
        report.signers[1],
        rotated.cert.to_vec(),
        "signed by the rotated leaf"
    );
}

//! Strict parsing in process: every body two JSON parsers could read
//! differently (duplicate keys, escapes, bad UTF-8, depth, trailing data,
//! loose JSON-RPC) is refused with 400 and -32700 (not JSON) or -32600 (not
//! JSON-RPC), audited as `parse_error`, and nothing reaches the upstream.
//! The table is the one `test_adversarial_e2e.py` ran end to end.

mod support;

use bytes::Bytes;

use support::gateway::{AGENT, Harness};

/// (case, body, JSON-RPC code). Sent as 2025-03-26, where batches exist.
const CASES: &[(&str, &[u8], i64)] = &[
    ("duplicate top-level method (tools/list then tools/call)", b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/list\",\"method\":\"tools/call\",\"params\":{\"name\":\"delete_repository\",\"arguments\":{\"repo\":\"acme/prod\"}}}", -32700),
    ("duplicate name inside params", b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"echo\",\"arguments\":{},\"name\":\"delete_repository\"}}", -32700),
    ("duplicate key inside arguments", b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"echo\",\"arguments\":{\"text\":\"harmless\",\"text\":\"rm -rf /\"}}}", -32700),
    ("duplicate key deep inside arguments", b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"echo\",\"arguments\":{\"text\":\"x\",\"o\":{\"p\":[{\"q\":1,\"q\":2}]}}}}", -32700),
    ("keys equal only after unescaping (name, n\\u0061me)", b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"echo\",\"n\\u0061me\":\"delete_repository\",\"arguments\":{}}}", -32700),
    ("method keys equal only after unescaping (method, m\\u0065thod)", b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/list\",\"m\\u0065thod\":\"tools/call\",\"params\":{\"name\":\"delete_repository\"}}", -32700),
    ("raw 0xff byte inside a string", b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"echo\",\"arguments\":{\"text\":\"a\xffb\"}}}", -32700),
    ("overlong UTF-8 encoding of '/' in the method", b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools\xc0\xafcall\",\"params\":{\"name\":\"echo\",\"arguments\":{}}}", -32700),
    ("unpaired surrogate escape in the tool name", b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"echo\\ud800\",\"arguments\":{}}}", -32700),
    ("nesting 65 deep", b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"echo\",\"arguments\":{\"text\":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}}}", -32700),
    ("nesting 500 deep", b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"echo\",\"arguments\":{\"text\":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}}}", -32700),
    ("trailing garbage after the message", b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"echo\",\"arguments\":{\"text\":\"hi\"}}} x", -32700),
    ("a second message after the first", b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"echo\",\"arguments\":{\"text\":\"hi\"}}}{\"jsonrpc\": \"2.0\", \"id\": 7, \"method\": \"tools/call\", \"params\": {\"name\": \"delete_repository\", \"arguments\": {\"repo\": \"acme/prod\"}}}", -32700),
    ("UTF-8 byte order mark before the message", b"\xef\xbb\xbf{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"echo\",\"arguments\":{\"text\":\"hi\"}}}", -32700),
    ("NaN in the arguments", b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"echo\",\"arguments\":{\"text\":NaN}}}", -32700),
    ("empty body", b"", -32700),
    ("\"jsonrpc\":\"1.0\"", b"{\"jsonrpc\":\"1.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"echo\",\"arguments\":{\"text\":\"hi\"}}}", -32600),
    ("\"jsonrpc\" missing", b"{\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"echo\",\"arguments\":{\"text\":\"hi\"}}}", -32600),
    ("\"jsonrpc\":2.0 as a number", b"{\"jsonrpc\":2.0,\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"echo\",\"arguments\":{\"text\":\"hi\"}}}", -32600),
    ("params an array", b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":[\"delete_repository\",{\"repo\":\"acme/prod\"}]}", -32600),
    ("params a string", b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":\"delete_repository\"}", -32600),
    ("\"method\": 5", b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":5,\"params\":{}}", -32600),
    ("empty batch []", b"[]", -32600),
    ("a bare string", b"\"tools/call\"", -32600),
    ("tool name with a NUL (policy sees one name, a C upstream another)", b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"echo\\u0000delete_repository\",\"arguments\":{}}}", -32600),
    ("unknown member next to method", b"{\"jsonrpc\":\"2.0\",\"id\":1,\"Method\":\"tools/call\",\"method\":\"tools/list\"}", -32600),
    ("id null on a tools/call", b"{\"jsonrpc\":\"2.0\",\"id\":null,\"method\":\"tools/call\",\"params\":{\"name\":\"echo\",\"arguments\":{\"text\":\"hi\"}}}", -32600),
    ("id an object", b"{\"jsonrpc\":\"2.0\",\"id\":{\"a\":1},\"method\":\"tools/call\",\"params\":{\"name\":\"echo\",\"arguments\":{\"text\":\"hi\"}}}", -32600),
    ("tool name a number", b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":5}}", -32600),
    ("one bad element in a batch", b"[{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/list\"},{\"jsonrpc\":\"1.0\",\"id\":2,\"method\":\"tools/list\"}]", -32600),
];

#[tokio::test]
async fn ambiguous_json_is_refused_audited_and_never_forwarded() {
    let gw = Harness::start().await;
    let agent = gw.agent(AGENT);
    for (i, (case, body, code)) in CASES.iter().enumerate() {
        let headers = [("mcp-protocol-version", "2025-03-26")];
        let answer = agent
            .post_bytes("/mcp", &headers, Bytes::from_static(body))
            .await;
        assert_eq!(answer.status, 400, "{case}: {:?}", answer.body);
        assert_eq!(
            answer.error_code(),
            Some(*code),
            "{case}: {:?}",
            answer.body
        );
        let records = gw.audit(i + 1).await;
        assert_eq!(records[i]["reason"], "parse_error", "{case}");
        assert_eq!(records[i]["decision"], "deny", "{case}");
        assert!(gw.upstream.received().is_empty(), "{case}: forwarded");
    }
    // Still serving: a well-formed call goes through.
    let ok = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{}}}"#;
    let headers = [("mcp-protocol-version", "2025-03-26")];
    let answer = agent
        .post_bytes("/mcp", &headers, Bytes::from_static(ok))
        .await;
    assert_eq!(answer.json()["result"]["content"][0]["text"], "echo");
}

/// A tools/call of echo whose arguments nest `depth` levels in total.
fn nested(depth: usize) -> Vec<u8> {
    let arrays = depth - 3; // the message, params and arguments objects
    format!(
        r#"{{"jsonrpc":"2.0","id":"deep","method":"tools/call","params":{{"name":"echo","arguments":{{"text":{}{}}}}}}}"#,
        "[".repeat(arrays),
        "]".repeat(arrays)
    )
    .into_bytes()
}

#[tokio::test]
async fn nesting_at_the_limit_is_decided_one_more_is_refused() {
    let gw = Harness::start().await;
    let agent = gw.agent(AGENT);
    let headers = [("mcp-protocol-version", "2025-11-25")];
    let at_limit = agent.post_bytes("/mcp", &headers, nested(64).into()).await;
    assert_eq!(at_limit.json()["result"]["content"][0]["text"], "echo");
    let records = gw.audit(1).await;
    assert_eq!(records[0]["decision"], "allow");
    assert_eq!(records[0]["target"], "echo");
    let over = agent.post_bytes("/mcp", &headers, nested(65).into()).await;
    assert_eq!((over.status, over.error_code()), (400, Some(-32700)));
    assert_eq!(gw.upstream.received().len(), 1);
}

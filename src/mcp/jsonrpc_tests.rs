//! Table tests for the strict JSON-RPC parser: what it accepts and what it
//! extracts, then every refusal class with its exact error.

use super::json::plain_run;
use super::jsonrpc::{Body, Id, Kind, MAX_DEPTH, Message, ParseError, parse_body};

/// A short label for an error, so tables can name the expected one.
fn class(error: &ParseError) -> String {
    match error {
        ParseError::InvalidUtf8 { .. } => "utf8".into(),
        ParseError::Syntax { .. } => "syntax".into(),
        ParseError::LoneSurrogate { .. } => "surrogate".into(),
        ParseError::DuplicateKey { .. } => "duplicate".into(),
        ParseError::ReservedKey { .. } => "reserved".into(),
        ParseError::TooDeep { .. } => "deep".into(),
        ParseError::TrailingData { .. } => "trailing".into(),
        ParseError::InvalidRequest { reason, .. } => format!("{reason:?}"),
    }
}

fn single(body: &str) -> Message<'_> {
    match parse_body(body.as_bytes()) {
        Ok(Body::Single(message)) => message,
        other => panic!("expected one message from {body}, got {other:?}"),
    }
}

fn refusal(body: &[u8]) -> ParseError {
    match parse_body(body) {
        Err(error) => error,
        Ok(parsed) => panic!("accepted {:?}: {parsed:?}", String::from_utf8_lossy(body)),
    }
}

fn nested(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

const CALL: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_issue","arguments":{"repo":"acme/web","number":42}}}"#;

#[test]
fn a_tool_call_yields_everything_policy_needs() {
    let m = single(CALL);
    assert_eq!(m.kind, Kind::Request);
    assert_eq!(m.id.as_ref().map(Id::raw_json), Some("1"));
    assert_eq!(m.method.as_deref(), Some("tools/call"));
    assert_eq!(m.target.as_deref(), Some("get_issue"));
    assert_eq!(
        m.arguments.map(|a| a.get()),
        Some(r#"{"repo":"acme/web","number":42}"#)
    );
    assert_eq!(
        m.params.map(|p| p.get()),
        Some(r#"{"name":"get_issue","arguments":{"repo":"acme/web","number":42}}"#)
    );
    assert!(m.protocol_version.is_none() && m.result.is_none() && m.error.is_none());
}

#[test]
fn common_strings_are_borrowed_not_copied() {
    let m = single(CALL);
    assert!(matches!(m.method, Some(std::borrow::Cow::Borrowed(_))));
    assert!(matches!(m.target, Some(std::borrow::Cow::Borrowed(_))));
}

/// Body, kind, method, target, id as JSON.
type Expected = (
    &'static str,
    Kind,
    Option<&'static str>,
    Option<&'static str>,
    Option<&'static str>,
);

#[test]
fn valid_messages_of_every_kind() {
    let table: &[Expected] = &[
        (
            r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
            Kind::Notification,
            Some("notifications/initialized"),
            None,
            None,
        ),
        (
            r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":3}}"#,
            Kind::Notification,
            Some("notifications/cancelled"),
            None,
            None,
        ),
        (
            r#"{"jsonrpc":"2.0","id":"abc","method":"tools/list"}"#,
            Kind::Request,
            Some("tools/list"),
            None,
            Some(r#""abc""#),
        ),
        (
            r#"{"jsonrpc":"2.0","id":0,"method":"ping","params":{}}"#,
            Kind::Request,
            Some("ping"),
            None,
            Some("0"),
        ),
        (
            r#"{"jsonrpc":"2.0","id":-7,"method":"ping"}"#,
            Kind::Request,
            Some("ping"),
            None,
            Some("-7"),
        ),
        (
            r#"{"method":"prompts/get","params":{"name":"review","arguments":{"lang":"rust"}},"id":2,"jsonrpc":"2.0"}"#,
            Kind::Request,
            Some("prompts/get"),
            Some("review"),
            Some("2"),
        ),
        (
            r#"{"jsonrpc":"2.0","id":3,"method":"resources/read","params":{"uri":"file:///etc/hosts"}}"#,
            Kind::Request,
            Some("resources/read"),
            Some("file:///etc/hosts"),
            Some("3"),
        ),
        (
            r#"{"jsonrpc":"2.0","id":3,"method":"resources/subscribe","params":{"uri":"x:y"}}"#,
            Kind::Request,
            Some("resources/subscribe"),
            Some("x:y"),
            Some("3"),
        ),
        (
            r#"{"jsonrpc":"2.0","id":3,"method":"resources/unsubscribe","params":{"uri":"x:y"}}"#,
            Kind::Request,
            Some("resources/unsubscribe"),
            Some("x:y"),
            Some("3"),
        ),
        (
            r#"{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"no_args"}}"#,
            Kind::Request,
            Some("tools/call"),
            Some("no_args"),
            Some("4"),
        ),
        (
            r#"{"jsonrpc":"2.0","id":5,"result":{"tools":[]}}"#,
            Kind::Response,
            None,
            None,
            Some("5"),
        ),
        (
            r#"{"jsonrpc":"2.0","id":5,"result":null}"#,
            Kind::Response,
            None,
            None,
            Some("5"),
        ),
        (
            r#"{"jsonrpc":"2.0","id":6,"error":{"code":-32601,"message":"nope"}}"#,
            Kind::Response,
            None,
            None,
            Some("6"),
        ),
        (
            r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"parse"}}"#,
            Kind::Response,
            None,
            None,
            None,
        ),
        (
            r#"{"jsonrpc":"2.0","error":{"code":-32700,"message":"parse"}}"#,
            Kind::Response,
            None,
            None,
            None,
        ),
        (
            " \t\r\n{ \"jsonrpc\" : \"2.0\" , \"method\" : \"ping\" , \"id\" : 1 } \n\r\t ",
            Kind::Request,
            Some("ping"),
            None,
            Some("1"),
        ),
        // No case folding, and an unknown method extracts no target.
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"Tools/Call","params":{"name":"x"}}"#,
            Kind::Request,
            Some("Tools/Call"),
            None,
            Some("1"),
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call ","params":{"name":"x"}}"#,
            Kind::Request,
            Some("tools/call "),
            None,
            Some("1"),
        ),
    ];
    for (body, kind, method, target, id) in table {
        let m = single(body);
        assert_eq!(m.kind, *kind, "{body}");
        assert_eq!(m.method.as_deref(), *method, "{body}");
        assert_eq!(m.target.as_deref(), *target, "{body}");
        assert_eq!(m.id.as_ref().map(Id::raw_json), *id, "{body}");
    }
}

#[test]
fn escapes_are_decoded_before_anything_is_compared() {
    let table = [
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"tools\/call","params":{"name":"x"}}"#,
            "tools/call",
            "x",
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"\u0074ools/call","params":{"name":"x"}}"#,
            "tools/call",
            "x",
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"del\u0065te_repository"}}"#,
            "tools/call",
            "delete_repository",
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"\u006eame":"delete_repository"}}"#,
            "tools/call",
            "delete_repository",
        ),
        (
            r#"{"\u006a\u0073\u006f\u006e\u0072\u0070\u0063":"\u0032.0","id":1,"method":"tools/call","params":{"name":"a\"b\\c\/\ud83d\ude00"}}"#,
            "tools/call",
            "a\"b\\c/\u{1f600}",
        ),
    ];
    for (body, method, target) in table {
        let m = single(body);
        assert_eq!(m.method.as_deref(), Some(method), "{body}");
        assert_eq!(m.target.as_deref(), Some(target), "{body}");
    }
}

#[test]
fn ids_are_kept_verbatim() {
    for id in [
        "123456789012345678901234567890",
        "-0",
        "9007199254740993",
        "0",
    ] {
        let body = format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"ping"}}"#);
        let m = single(&body);
        assert!(
            matches!(m.id, Some(Id::Number(raw)) if raw.get() == id),
            "{id}"
        );
    }
    let m = single(r#"{"jsonrpc":"2.0","id":"a\"\u0062","method":"ping"}"#);
    let Some(Id::String { value, raw }) = &m.id else {
        panic!("{m:?}")
    };
    assert_eq!((&**value, raw.get()), ("a\"b", r#""a\"\u0062""#));
    let other = single(r#"{"jsonrpc":"2.0","id":"a\"b","method":"ping"}"#);
    assert_eq!(m.id, other.id, "the same string, spelled differently");
}

#[test]
fn protocol_version_comes_from_initialize_or_meta() {
    let table = [
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"c","version":"1"}}}"#,
            Some("2025-06-18"),
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}}}"#,
            Some("2026-07-28"),
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}"#,
            Some("2026-07-28"),
        ),
        // Only initialize reads params.protocolVersion.
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"protocolVersion":"2025-06-18"}}"#,
            None,
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_meta":{"progressToken":1}}}"#,
            None,
        ),
    ];
    for (body, version) in table {
        assert_eq!(single(body).protocol_version.as_deref(), version, "{body}");
    }
}

#[test]
fn batches_keep_order_and_allow_equal_keys_in_different_objects() {
    let body = format!(
        r#"[{CALL}, {{"jsonrpc":"2.0","method":"notifications/progress","params":{{"progressToken":1,"progress":1}}}}]"#
    );
    let parsed = parse_body(body.as_bytes()).expect("valid batch");
    let Body::Batch(messages) = &parsed else {
        panic!("not a batch")
    };
    assert_eq!(messages.len(), 2);
    assert_eq!(parsed.messages()[0].target.as_deref(), Some("get_issue"));
    assert_eq!(messages[1].kind, Kind::Notification);
}

#[test]
fn nesting_up_to_the_limit_is_accepted() {
    // The message object is level 1, params 2, arguments 3.
    let inner = nested(MAX_DEPTH - 3);
    let body = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"t","arguments":{{"a":{inner}}}}}}}"#
    );
    assert_eq!(single(&body).target.as_deref(), Some("t"));
    let deeper = body
        .replacen("\"a\":[", "\"a\":[[", 1)
        .replacen("]}", "]]}", 1);
    assert_eq!(class(&refusal(deeper.as_bytes())), "deep");
}

#[test]
fn every_refusal_class_has_its_error() {
    let many_keys: String = (0..40).map(|i| format!(r#""k{i}":{i},"#)).collect();
    let deep_at_top = format!("[{}]", nested(MAX_DEPTH));
    let deep_in_args = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"t","arguments":{{"a":{}}}}}}}"#,
        nested(MAX_DEPTH)
    );
    let serde_limit = nested(200);
    let stack_bomb = "[".repeat(1_000_000);
    let big_dup = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"t","arguments":{{{many_keys}"k7":0}}}}}}"#
    );
    let table: Vec<(&[u8], &str)> = vec![
        // Not UTF-8, anywhere; an encoded surrogate is not UTF-8 either.
        (b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"a\xff\"}}", "utf8"),
        (b"{\"jsonrpc\":\"2.0\",\"method\":\"\xc0\xaf\"}", "utf8"),
        (b"{\"jsonrpc\":\"2.0\",\"method\":\"\xed\xa0\x80\"}", "utf8"),
        (b"\xef\xbb\xbf{\"jsonrpc\":\"2.0\",\"method\":\"ping\"}", "syntax"),
        // Unpaired surrogate escapes, at any depth.
        (br#"{"jsonrpc":"2.0","method":"a\ud800"}"#, "surrogate"),
        (br#"{"jsonrpc":"2.0","method":"a\udc00\ud800"}"#, "surrogate"),
        (br#"{"jsonrpc":"2.0","method":"a\ud800\u0041"}"#, "surrogate"),
        (br#"{"jsonrpc":"2.0","method":"a\ud800x"}"#, "surrogate"),
        (br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":{"x":[{"\udfff":1}]}}}"#, "surrogate"),
        // Duplicate keys, at every depth, compared unescaped.
        (br#"{"jsonrpc":"2.0","id":1,"method":"tools/list","method":"tools/call"}"#, "duplicate"),
        (br#"{"jsonrpc":"2.0","id":1,"id":2,"method":"ping"}"#, "duplicate"),
        (br#"{"jsonrpc":"2.0","jsonrpc":"2.0","id":1,"method":"ping"}"#, "duplicate"),
        (br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_issue","name":"delete_repository"}}"#, "duplicate"),
        (br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":{"a":1,"a":2}}}"#, "duplicate"),
        (br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":{"a":[{"b":{"c":1,"c":1}}]}}}"#, "duplicate"),
        (br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","n\u0061me":"u"}}"#, "duplicate"),
        (br#"{"jsonrpc":"2.0","id":1,"method":"x","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"a","io.modelcontextprotocol\/protocolVersion":"b"}}}"#, "duplicate"),
        (br#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"a","name":"b"}]}}"#, "duplicate"),
        (big_dup.as_bytes(), "duplicate"),
        // Keys serde_json may read as the JSON in their value, found by
        // fuzzing against serde_json.
        (
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":{"$serde_json::private::RawValue":"{\"repo\":\"private\"}"}}}"#,
            "reserved",
        ),
        (
            br#"{"jsonrpc":"2.0","id":1,"result":{"n":{"\u0024serde_json::private::Number":"1"}}}"#,
            "reserved",
        ),
        // Too deep, whatever serde_json's own limit.
        (deep_at_top.as_bytes(), "deep"),
        (deep_in_args.as_bytes(), "deep"),
        (serde_limit.as_bytes(), "deep"),
        (stack_bomb.as_bytes(), "deep"),
        // Trailing data.
        (br#"{"jsonrpc":"2.0","method":"ping"} x"#, "trailing"),
        (br#"{"jsonrpc":"2.0","method":"ping"}{"jsonrpc":"2.0","method":"ping"}"#, "trailing"),
        (b"{\"jsonrpc\":\"2.0\",\"method\":\"ping\"}\0", "trailing"),
        (br#"[{"jsonrpc":"2.0","method":"ping"}]]"#, "trailing"),
        // Not JSON.
        (b"", "syntax"),
        (b" \n ", "syntax"),
        (br#"{"jsonrpc":"2.0","method":"ping",}"#, "syntax"),
        (br#"{"jsonrpc":"2.0",/*c*/"method":"ping"}"#, "syntax"),
        (br#"{'jsonrpc':'2.0','method':'ping'}"#, "syntax"),
        (br#"{"jsonrpc":"2.0","id":NaN,"method":"ping"}"#, "syntax"),
        (br#"{"jsonrpc":"2.0","id":01,"method":"ping"}"#, "syntax"),
        (br#"{"jsonrpc":"2.0","id":1.,"method":"ping"}"#, "syntax"),
        (br#"{"jsonrpc":"2.0","id":-,"method":"ping"}"#, "syntax"),
        (br#"{"jsonrpc":"2.0","id":+1,"method":"ping"}"#, "syntax"),
        (b"{\"jsonrpc\":\"2.0\",\"method\":\"pi\nng\"}", "syntax"),
        (br#"{"jsonrpc":"2.0","method":"p\x69ng"}"#, "syntax"),
        (br#"{"jsonrpc":"2.0","method":"\u12"}"#, "syntax"),
        (br#"{"jsonrpc":"2.0","method":"ping}"#, "syntax"),
        (br#"{"jsonrpc":"2.0","method":"ping","params":tru}"#, "syntax"),
        (br#"{"jsonrpc":"2.0","method":"ping" "id":1}"#, "syntax"),
        (b"{\"jsonrpc\":\"2.0\",\x0c\"method\":\"ping\"}", "syntax"),
        (br#"{"jsonrpc":"2.0","method":"ping""#, "syntax"),
        // jsonrpc member.
        (br#"{"id":1,"method":"ping"}"#, "MissingJsonrpc"),
        (br#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#, "WrongJsonrpc"),
        (br#"{"jsonrpc":2.0,"id":1,"method":"ping"}"#, "WrongJsonrpc"),
        (br#"{"jsonrpc":"2.0 ","id":1,"method":"ping"}"#, "WrongJsonrpc"),
        // method member.
        (br#"{"jsonrpc":"2.0","id":1,"method":1}"#, "MethodNotString"),
        (br#"{"jsonrpc":"2.0","id":1,"method":null}"#, "MethodNotString"),
        (br#"{"jsonrpc":"2.0","id":1}"#, "MissingMethod"),
        // id member.
        (br#"{"jsonrpc":"2.0","id":null,"method":"ping"}"#, "NullId"),
        (br#"{"jsonrpc":"2.0","id":1.5,"method":"ping"}"#, "BadId"),
        (br#"{"jsonrpc":"2.0","id":1e3,"method":"ping"}"#, "BadId"),
        (br#"{"jsonrpc":"2.0","id":true,"method":"ping"}"#, "BadId"),
        (br#"{"jsonrpc":"2.0","id":[1],"method":"ping"}"#, "BadId"),
        (br#"{"jsonrpc":"2.0","id":{},"method":"ping"}"#, "BadId"),
        // params member.
        (br#"{"jsonrpc":"2.0","id":1,"method":"ping","params":[]}"#, "ParamsNotObject"),
        (br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":["t"]}"#, "ParamsNotObject"),
        (br#"{"jsonrpc":"2.0","id":1,"method":"ping","params":null}"#, "ParamsNotObject"),
        (br#"{"jsonrpc":"2.0","id":1,"method":"ping","params":"x"}"#, "ParamsNotObject"),
        // Not a message.
        (b"1", "NotAnObject"),
        (b"\"x\"", "NotAnObject"),
        (b"null", "NotAnObject"),
        (b"[1]", "NotAnObject"),
        (b"[[]]", "NotAnObject"),
        (b"[]", "EmptyBatch"),
        (b" [ ] ", "EmptyBatch"),
        // Targets.
        (br#"{"jsonrpc":"2.0","id":1,"method":"tools/call"}"#, "MissingTarget"),
        (br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"arguments":{}}}"#, "MissingTarget"),
        (br#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"name":"x"}}"#, "MissingTarget"),
        (br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":["delete_repository"]}}"#, "TargetNotString"),
        (br#"{"jsonrpc":"2.0","id":1,"method":"prompts/get","params":{"name":null}}"#, "TargetNotString"),
        (br#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":7}}"#, "TargetNotString"),
        (br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":[]}}"#, "ArgumentsNotObject"),
        (br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":null}}"#, "ArgumentsNotObject"),
        (br#"{"jsonrpc":"2.0","id":1,"method":"prompts/get","params":{"name":"t","arguments":"a=b"}}"#, "ArgumentsNotObject"),
        (br#"{"jsonrpc":"2.0","id":1,"method":"ping","params":{"_meta":[]}}"#, "MetaNotObject"),
        (br#"{"jsonrpc":"2.0","id":1,"method":"ping","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":20260728}}}"#, "ProtocolVersionNotString"),
        (br#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":1}}"#, "ProtocolVersionNotString"),
        // Responses.
        (br#"{"jsonrpc":"2.0","id":1,"method":"ping","result":{}}"#, "MethodWithResult"),
        (br#"{"jsonrpc":"2.0","method":"ping","error":{"code":1,"message":"m"}}"#, "MethodWithResult"),
        (br#"{"jsonrpc":"2.0","id":1,"result":{},"error":{"code":1,"message":"m"}}"#, "ResultAndError"),
        (br#"{"jsonrpc":"2.0","id":1,"result":{},"params":{}}"#, "ParamsInResponse"),
        (br#"{"jsonrpc":"2.0","result":{}}"#, "MissingId"),
        (br#"{"jsonrpc":"2.0","id":null,"result":{}}"#, "NullId"),
        (br#"{"jsonrpc":"2.0","id":1,"error":"boom"}"#, "ErrorNotObject"),
        // Control characters where a name is matched.
        (br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"delete_repository\u0000"}}"#, "ControlCharacter"),
        (br#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"file:///a\nb"}}"#, "ControlCharacter"),
        (br#"{"jsonrpc":"2.0","id":1,"method":"ping\u007f"}"#, "ControlCharacter"),
        (br#"{"jsonrpc":"2.0","method":"notifications/x\u0085"}"#, "ControlCharacter"),
        // Members JSON-RPC does not define.
        (br#"{"jsonrpc":"2.0","id":1,"method":"ping","Method":"tools/call"}"#, "UnknownMember"),
    ];
    for (body, expected) in table {
        let error = refusal(body);
        assert_eq!(
            class(&error),
            expected,
            "{:?}: {error}",
            String::from_utf8_lossy(&body[..body.len().min(120)])
        );
        let code = if expected.chars().next().is_some_and(char::is_uppercase) {
            -32600
        } else {
            -32700
        };
        assert_eq!(error.jsonrpc_code(), code, "{error}");
    }
}

#[test]
fn one_bad_element_fails_the_whole_batch_and_json_errors_win() {
    let table: &[(&[u8], &str)] = &[
        (
            br#"[{"jsonrpc":"2.0","method":"ping"},{"jsonrpc":"1.0","method":"ping"}]"#,
            "WrongJsonrpc",
        ),
        (br#"[{"jsonrpc":"2.0","method":"ping"},1]"#, "NotAnObject"),
        // A JSON error after an invalid element, or later in the same object.
        (
            br#"[{"jsonrpc":"1.0","method":"ping"},{"a":1,"a":2}]"#,
            "duplicate",
        ),
        (
            br#"[{"jsonrpc":"1.0","method":"ping"},{"jsonrpc":"2.0","method":"\ud800"}]"#,
            "surrogate",
        ),
        (
            br#"{"jsonrpc":"1.0","id":1,"method":"ping","params":{"a":1,"a":1}}"#,
            "duplicate",
        ),
        (br#"{"jsonrpc":"1.0","id":1,"method":"ping"} x"#, "trailing"),
    ];
    for (body, expected) in table {
        let error = refusal(body);
        assert_eq!(class(&error), *expected, "{error}");
        assert_eq!(error.request_id(), None, "{error}");
    }
}

#[test]
fn the_id_of_an_invalid_request_is_recovered_for_the_reply() {
    let table = [
        (r#"{"jsonrpc":"1.0","id":7,"method":"ping"}"#, Some("7")),
        (
            r#"{"method":"ping","id":"a\u0022b"}"#,
            Some(r#""a\u0022b""#),
        ),
        (
            r#"{"jsonrpc":"2.0","id":123456789012345678901234567890,"method":"tools/call"}"#,
            Some("123456789012345678901234567890"),
        ),
        (r#"{"jsonrpc":"2.0","id":1.5,"method":"ping"}"#, None),
        (r#"{"jsonrpc":"2.0","id":1,"id":2,"method":"ping"}"#, None),
    ];
    for (body, id) in table {
        assert_eq!(refusal(body.as_bytes()).request_id(), id, "{body}");
    }
}

#[test]
fn errors_say_what_and_where() {
    let error = refusal(
        br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","name":"b"}}"#,
    );
    assert_eq!(
        error.to_string(),
        r#"duplicate object key "name" at byte 67"#
    );
    let long_key = format!(r#"{{"{k}":1,"{k}":2}}"#, k = "é".repeat(100));
    let shown = match refusal(long_key.as_bytes()) {
        ParseError::DuplicateKey { key, .. } => key,
        other => panic!("{other}"),
    };
    assert_eq!(shown, "é".repeat(32));
    let error = refusal(br#"{"jsonrpc":"2.0","method":"ping","params":[]}"#);
    assert_eq!(
        error.to_string(),
        r#"invalid request: "params" must be an object"#
    );
    assert_eq!(
        refusal(b"{\"a\":\"\xff\"}").to_string(),
        "body is not valid UTF-8 (byte 6)"
    );
}

#[test]
fn never_panics_on_any_prefix_or_mutation_of_valid_bodies() {
    let seeds = [
        CALL.to_owned(),
        format!("[{CALL},{CALL}]"),
        r#"{"jsonrpc":"2.0","id":"\ud83d\ude00\u0000\\","error":{"code":-1,"message":"\u00e9"}}"#.to_owned(),
        r#"{"jsonrpc":"2.0","id":1e5,"method":"x","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"v"},"a":[true,false,null,-0.5e-3]}}"#.to_owned(),
    ];
    let nasty: &[&[u8]] = &[
        b"\"",
        b"\"\\",
        b"\"\\u",
        b"\"\\ud800\\",
        b"-",
        b"{\"",
        b"{\"a\"",
        b"{\"a\":",
        b"[",
        b"[,",
        b"\xf0\x9f",
        b"t",
        b"nul",
        b"{}}",
    ];
    for body in nasty {
        let _ = parse_body(body);
    }
    let mut state = 0x2545_f491_u32;
    for seed in &seeds {
        let bytes = seed.as_bytes();
        for end in 0..=bytes.len() {
            let _ = parse_body(&bytes[..end]);
        }
        for _ in 0..2000 {
            let mut mutated = bytes.to_vec();
            for _ in 0..3 {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                let at = state as usize % mutated.len();
                let alphabet = b"\"\\{}[],:u0d8 \xff-1eE.";
                mutated[at] = alphabet[(state >> 16) as usize % alphabet.len()];
            }
            let _ = parse_body(&mutated);
        }
    }
}

#[test]
fn the_word_at_a_time_string_scan_matches_a_byte_loop() {
    let naive = |b: &[u8]| {
        b.iter()
            .position(|&c| c == b'"' || c == b'\\' || c < 0x20)
            .unwrap_or(b.len())
    };
    let alphabet = b"a\"\\\x00\x1f\x20\x21\x5b\x5d\x7f\x80\xff\xe9\x01";
    let mut state = 0x9e37_79b9_u32;
    for len in 0..40 {
        for _ in 0..500 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 17;
                    state ^= state << 5;
                    // Mostly plain bytes, so stops land anywhere in a word.
                    if state & 7 == 0 {
                        alphabet[(state >> 8) as usize % alphabet.len()]
                    } else {
                        b'a' + (state >> 8) as u8 % 26
                    }
                })
                .collect();
            assert_eq!(plain_run(&bytes), naive(&bytes), "{bytes:?}");
        }
    }
}

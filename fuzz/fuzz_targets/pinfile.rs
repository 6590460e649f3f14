//! Fuzzes the pin file reader and what `pin record` writes.
//!
//! Input: a first byte choosing the case, then the rest.
//! - 0: the rest is a pin file. It never panics; a file it reads is
//!   written back (`to_text`) to a file that reads the same.
//! - 1: the rest is a tool definition as an upstream lists it. Whatever the
//!   gateway's strict parser takes from a `tools/list` reply is pinned, and
//!   the file `pin record` writes reads back to the same pins: a recorded
//!   file is never one the gateway refuses to load.

#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use spiffe_mcp_gateway::mcp::check_json;
use spiffe_mcp_gateway::pins::PinKind;
use spiffe_mcp_gateway::pins::file::PinFile;

fuzz_target!(|data: &[u8]| {
    let [case, rest @ ..] = data else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    if case % 2 == 0 {
        if let Ok(file) = PinFile::parse("fuzz.pins.json", text) {
            let again = PinFile::parse("again", &file.to_text()).expect("written back, it reads");
            assert_eq!(again, file);
        }
    } else {
        recorded_reads_back(text);
    }
});

fn recorded_reads_back(definition: &str) {
    let reply = format!(r#"{{"jsonrpc":"2.0","id":1,"result":{{"tools":[{definition}]}}}}"#);
    if check_json(&reply).is_err() {
        return;
    }
    let Ok(Value::Object(mut entry)) = serde_json::from_str::<Value>(definition) else {
        return;
    };
    if !entry.get("name").is_some_and(Value::is_string) {
        entry.insert("name".into(), "t".into());
    }
    let mut file = PinFile {
        upstream: "fuzz".into(),
        spiffe_id: "spiffe://example.org/ns/fuzz/sa/upstream".into(),
        ..PinFile::default()
    };
    if file.insert(PinKind::Tool, Value::Object(entry)).is_none() {
        return;
    }
    let text = file.to_text();
    let read = PinFile::parse("recorded", &text)
        .unwrap_or_else(|e| panic!("pin record wrote a file it refuses: {e}\n{text}"));
    assert_eq!(read, file);
}

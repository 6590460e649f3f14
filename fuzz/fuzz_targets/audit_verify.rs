//! Fuzzes `audit verify` on arbitrary logs, against the trust bundle of the
//! run that wrote the seed (`seeds/audit_verify/checkpointed.jsonl`: a
//! genesis, three records and a checkpoint signed by the gateway's SVID).
//!
//! - It never panics, and a problem it names is at a line of the input.
//! - Nothing verifies but the seed's own lines: any change, deletion,
//!   insertion or reordering of them, and any log the fuzzer writes, is
//!   tampered or unproven. (The only way to make a log that verifies is to
//!   hold a key the bundle trusts.)
//!
//! Input: the log; a 0x00 byte splits it into files, as rotation does.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use spiffe_mcp_gateway::audit::checkpoint::Bundle;
use spiffe_mcp_gateway::audit::verify::verify_texts;

const SEED: &[u8] = include_bytes!("../seeds/audit_verify/checkpointed.jsonl");

fn bundle() -> &'static Bundle {
    static BUNDLE: OnceLock<Bundle> = OnceLock::new();
    BUNDLE.get_or_init(|| {
        Bundle::from_pem(include_bytes!("../audit_verify.bundle.pem")).expect("the bundle")
    })
}

fn lines(text: &[u8]) -> Vec<&[u8]> {
    text.split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let names = ["a.jsonl", "b.jsonl", "c.jsonl", "d.jsonl"];
    let parts: Vec<&[u8]> = data.splitn(names.len(), |b| *b == 0).collect();
    let files: Vec<(&str, &[u8])> = names.iter().copied().zip(parts.iter().copied()).collect();
    let report = verify_texts(&files, bundle());
    let total: usize = parts.iter().map(|p| p.split(|b| *b == b'\n').count()).sum();
    assert!(
        report.lines <= total as u64,
        "{} lines of {total}",
        report.lines
    );
    if let Some((at, problem)) = &report.tampered {
        let text = files
            .iter()
            .find(|(name, _)| *name == at.file)
            .unwrap_or_else(|| panic!("{problem} names {at}, not an input file"))
            .1;
        let count = text.split(|b| *b == b'\n').count() as u64;
        assert!(
            at.line >= 1 && at.line <= count,
            "{problem} at {at} of {count} lines"
        );
    }
    if report.verified() {
        let given: Vec<&[u8]> = parts.iter().flat_map(|p| lines(p)).collect();
        assert_eq!(given, lines(SEED), "a log other than the seed verified");
    }
});

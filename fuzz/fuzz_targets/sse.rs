//! Fuzzes the SSE parser: the events (and the error, or the unterminated
//! tail) must not depend on how the stream is cut into chunks, and the raw
//! bytes of the events must be the stream itself, in order.
//!
//! Input: one byte choosing the event size limit, two bytes seeding the cut
//! points, then the stream.

#![no_main]

use libfuzzer_sys::fuzz_target;
use spiffe_mcp_gateway::mcp::sse::{SseError, SseEvent, SseParser};

#[derive(Debug, PartialEq)]
struct Run {
    events: Vec<SseEvent>,
    end: Result<Vec<u8>, SseError>,
}

fuzz_target!(|data: &[u8]| {
    let [limit, seed_a, seed_b, stream @ ..] = data else {
        return;
    };
    let limit = if *limit < 128 {
        usize::from(*limit)
    } else {
        1 << 20
    };
    let whole = run(&[stream], limit);
    check_raw(stream, &whole, limit);
    let mut state = u32::from_le_bytes([*seed_a, *seed_b, 0x5a, 0xa5]);
    let mut chunks = Vec::new();
    let mut rest = stream;
    while !rest.is_empty() {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let (chunk, tail) = rest.split_at((state as usize % 9).min(rest.len()));
        chunks.push(chunk);
        rest = tail;
    }
    assert_eq!(run(&chunks, limit), whole, "cuts: {chunks:?}");
    let bytes: Vec<&[u8]> = stream.chunks(1).collect();
    assert_eq!(run(&bytes, limit), whole, "byte by byte");
});

fn run(chunks: &[&[u8]], limit: usize) -> Run {
    let mut parser = SseParser::new(limit);
    let mut events = Vec::new();
    for chunk in chunks {
        if let Err(error) = parser.push(chunk, &mut events) {
            return Run {
                events,
                end: Err(error),
            };
        }
    }
    let end = parser.finish(&mut events).map(|tail| tail.to_vec());
    Run { events, end }
}

/// The events' raw bytes, then the tail, are the stream (a prefix of it on
/// error), and each event fits the limit.
fn check_raw(stream: &[u8], run: &Run, limit: usize) {
    let mut seen = Vec::new();
    for event in &run.events {
        assert!(!event.raw.is_empty() && event.raw.len() <= limit);
        seen.extend_from_slice(&event.raw);
    }
    match &run.end {
        Ok(tail) => {
            seen.extend_from_slice(tail);
            assert_eq!(seen, stream);
        }
        Err(_) => assert!(stream.starts_with(&seen)),
    }
}

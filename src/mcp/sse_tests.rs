//! SSE parser tests: field rules, line endings, and that every way of cutting
//! a stream into chunks gives the same events.

use super::sse::{SseError, SseEvent, SseParser};

/// Everything a run produces: events, then the error or the unterminated tail.
#[derive(Debug, PartialEq)]
struct Run {
    events: Vec<SseEvent>,
    end: Result<Vec<u8>, SseError>,
}

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

fn whole(stream: &[u8]) -> Run {
    run(&[stream], 1 << 16)
}

/// Event type, data, has data, id, retry.
type Fields<'a> = (Option<&'a str>, &'a str, bool, Option<&'a str>, Option<u64>);

fn event(data: &str) -> Fields<'_> {
    (None, data, true, None, None)
}

fn fields(run: &Run) -> Vec<Fields<'_>> {
    run.events
        .iter()
        .map(|e| {
            (
                e.event.as_deref(),
                e.data.as_str(),
                e.has_data,
                e.id.as_deref(),
                e.retry,
            )
        })
        .collect()
}

#[test]
fn fields_follow_the_spec() {
    let table: Vec<(&[u8], Vec<Fields>)> = vec![
        (
            b"data: {\"jsonrpc\":\"2.0\"}\n\n",
            vec![event("{\"jsonrpc\":\"2.0\"}")],
        ),
        (
            b"data:a\ndata: b\ndata\ndata:  c\n\n",
            vec![event("a\nb\n\n c")],
        ),
        (
            b"event: message\nid: 7\nretry: 1500\ndata: x\n\n",
            vec![(Some("message"), "x", true, Some("7"), Some(1500))],
        ),
        (b"event:\ndata: x\n\n", vec![event("x")]),
        (b": keep-alive\n\n", vec![(None, "", false, None, None)]),
        (b"id: 1\ndata:\n\n", vec![(None, "", true, Some("1"), None)]),
        (b"id: a\0b\ndata: x\n\n", vec![event("x")]),
        (
            b"retry: 1s\nretry: 99999999999999999999999\ndata: x\n\n",
            vec![event("x")],
        ),
        (b"Data: x\nfoo: y\n\n", vec![(None, "", false, None, None)]),
        (
            b"data: a\r\n\r\ndata: b\r\rdata: c\n\n",
            vec![event("a"), event("b"), event("c")],
        ),
        (b"\xef\xbb\xbfdata: x\n\n", vec![event("x")]),
        (
            b"\xef\xbb\xbf\ndata: x\n\n",
            vec![(None, "", false, None, None), event("x")],
        ),
        (b"data: \xef\xbb\xbfx\n\n", vec![event("\u{feff}x")]),
        (
            b"\n\n",
            vec![(None, "", false, None, None), (None, "", false, None, None)],
        ),
    ];
    for (stream, expected) in table {
        let run = whole(stream);
        assert_eq!(
            fields(&run),
            expected,
            "{:?}",
            String::from_utf8_lossy(stream)
        );
    }
}

#[test]
fn raw_bytes_cover_the_stream_exactly() {
    let stream = b"\xef\xbb\xbf: hi\r\n\r\nevent: a\rdata: 1\r\rid: 2\n\ndata: tail";
    let run = whole(stream);
    let raws: Vec<&[u8]> = run.events.iter().map(|e| &e.raw[..]).collect();
    assert_eq!(
        raws,
        [
            &b"\xef\xbb\xbf: hi\r\n\r\n"[..],
            b"event: a\rdata: 1\r\r",
            b"id: 2\n\n"
        ]
    );
    assert_eq!(run.end, Ok(b"data: tail".to_vec()));
}

#[test]
fn a_final_cr_waits_for_the_next_byte_or_the_end() {
    let mut parser = SseParser::new(1024);
    let mut events = Vec::new();
    parser.push(b"data: a\r\r", &mut events).unwrap();
    assert!(events.is_empty(), "the second CR may be the start of CRLF");
    parser.push(b"\n", &mut events).unwrap();
    assert_eq!(&events[0].raw[..], b"data: a\r\r\n");

    let mut events = Vec::new();
    let mut parser = SseParser::new(1024);
    parser.push(b"id: 9\ndata: b\r\r", &mut events).unwrap();
    assert_eq!(parser.finish(&mut events).unwrap().len(), 0);
    assert_eq!(events[0].data, "b");
    assert_eq!(&events[0].raw[..], b"id: 9\ndata: b\r\r");
}

#[test]
fn last_event_id_carries_over() {
    let mut parser = SseParser::new(1024);
    let mut events = Vec::new();
    parser
        .push(b"id: 5\ndata: a\n\ndata: b\n\n", &mut events)
        .unwrap();
    assert_eq!(parser.last_event_id(), "5");
    assert_eq!(events[1].id, None);
    parser.push(b"id\ndata: c\n\n", &mut events).unwrap();
    assert_eq!(parser.last_event_id(), "");
}

#[test]
fn limits_and_invalid_utf8_are_errors() {
    let big = format!("data: {}\n\n", "x".repeat(100));
    let run = run(&[b"data: ok\n\n", big.as_bytes()], 64);
    assert_eq!(fields(&run), vec![event("ok")]);
    assert_eq!(run.end, Err(SseError::EventTooLarge { limit: 64 }));
    // Exactly at the limit is fine, one byte over is not.
    let exact = format!("data: {}\n\n", "x".repeat(56));
    assert_eq!(exact.len(), 64);
    assert!(whole_with(exact.as_bytes(), 64).end.is_ok());
    let over = format!("data: {}\n\n", "x".repeat(57));
    assert!(whole_with(over.as_bytes(), 64).end.is_err());
    // A line that never ends.
    let endless = "data: ".to_owned() + &"y".repeat(100);
    assert_eq!(
        whole_with(endless.as_bytes(), 64).end,
        Err(SseError::EventTooLarge { limit: 64 })
    );
    assert_eq!(whole(b"data: \xff\n\n").end, Err(SseError::InvalidUtf8));
    assert_eq!(whole(b": \xc3\n\n").end, Err(SseError::InvalidUtf8));
    // After an error the parser keeps refusing.
    let mut parser = SseParser::new(1024);
    let mut events = Vec::new();
    assert!(parser.push(b"data: \xff\n", &mut events).is_err());
    assert!(parser.push(b"\n", &mut events).is_err());
}

fn whole_with(stream: &[u8], limit: usize) -> Run {
    run(&[stream], limit)
}

const STREAMS: &[&[u8]] = &[
    b"event: message\r\nid: 1\r\ndata: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}\r\n\r\n: ping\n\nid: 2\rdata: a\rdata: b\r\rretry: 10\n\n",
    b"\xef\xbb\xbfdata: \xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\n\n\r\n\r\r\n\ndata",
    b"data: 0123456789012345678901234567890123456789\n\ndata: x\n\ndata: 01234567890123456789012345678901234567890123456789\n\n",
    b"data: ok\n\ndata: \xf0\x9f\x98\n\n",
    // Both too large (for the small limit) and not UTF-8: found by fuzzing,
    // the error used to depend on the cuts.
    b"event: x\r\ndata: \xad0123456789012345678901234567890123456789\n\n",
];

#[test]
fn every_split_gives_the_same_events() {
    for limit in [48, 1 << 16] {
        for stream in STREAMS {
            let expected = run(&[stream], limit);
            for cut in 0..=stream.len() {
                let (a, b) = stream.split_at(cut);
                assert_eq!(run(&[a, b], limit), expected, "cut at {cut}, limit {limit}");
                for second in cut..=stream.len() {
                    let (b, c) = b.split_at(second - cut);
                    assert_eq!(run(&[a, b, c], limit), expected, "cuts at {cut}, {second}");
                }
            }
            let bytes: Vec<&[u8]> = stream.chunks(1).collect();
            assert_eq!(run(&bytes, limit), expected, "byte by byte");
        }
    }
}

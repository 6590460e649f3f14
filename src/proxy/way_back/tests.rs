use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Body, Frame};
use serde_json::json;

use super::lists::filter_entries;
use crate::mcp::method::ListKind;

use super::*;

/// One frame, then silence forever.
struct Stall(Option<&'static str>);

impl Body for Stall {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.0.take() {
            Some(s) => Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(s.as_bytes()))))),
            None => Poll::Pending,
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_reply_that_stalls_is_an_error_not_a_truncated_body() {
    let started = tokio::time::Instant::now();
    let err = read_reply(Stall(Some("{\"jsonrpc\":")), 1024, Duration::from_secs(3))
        .await
        .unwrap_err();
    assert!(matches!(err, ProxyError::UpstreamStreamIdle), "{err}");
    assert_eq!(started.elapsed(), Duration::from_secs(3));
}

#[tokio::test]
async fn a_reply_is_read_whole_within_its_limit() {
    let body = Full::new(Bytes::from_static(b"{\"a\":1}"));
    let got = read_reply(body, 7, Duration::from_secs(1)).await.unwrap();
    assert_eq!(&got[..], b"{\"a\":1}");
    let body = Full::new(Bytes::from_static(b"{\"a\":1}"));
    let err = read_reply(body, 6, Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(matches!(err, ProxyError::UpstreamUnavailable), "{err}");
}

/// The given frames, then the end.
struct Frames(std::collections::VecDeque<&'static str>);

impl Body for Frames {
    type Data = Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Poll::Ready(self.0.pop_front().map(|f| Ok(Frame::data(Bytes::from(f)))))
    }
}

#[tokio::test]
async fn a_reply_in_several_frames_is_read_whole_and_in_order() {
    let frames = || Frames(["{\"a\":", "1", "}"].into());
    let got = read_reply(frames(), 7, Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(&got[..], b"{\"a\":1}");
    let err = read_reply(frames(), 6, Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(matches!(err, ProxyError::UpstreamUnavailable), "{err}");
}

#[test]
fn only_a_reply_that_cannot_spell_input_required_skips_the_parse() {
    use super::json::may_ask_for_input;
    assert!(may_ask_for_input(
        br#"{"result":{"resultType":"input_required"}}"#
    ));
    assert!(may_ask_for_input(
        br#"{"result":{"resultType":"input\u005frequired"}}"#
    ));
    assert!(may_ask_for_input(
        br#"{"result":{"resultType":"\u0069nput_required"}}"#
    ));
    assert!(!may_ask_for_input(
        br#"{"result":{"content":[{"type":"text","text":"a \"quoted\" line\n"}]}}"#
    ));
    assert!(!may_ask_for_input(
        br#"{"result":{"resultType":"complete"}}"#
    ));
}

#[test]
fn a_filtered_page_keeps_its_cursor_and_everything_else() {
    let mut page = json!({"jsonrpc": "2.0", "id": 7, "result": {
        "tools": [{"name": "echo"}, {"name": "delete_repository"}, {"title": "no name"}],
        "nextCursor": "page-2",
        "_meta": {"k": 1},
    }});
    let got = filter_entries(&mut page, ListKind::Tools, |n, _| n == "echo");
    assert_eq!(got, Some((2, 3)));
    assert_eq!(page["result"]["tools"], json!([{"name": "echo"}]));
    assert_eq!(page["result"]["nextCursor"], "page-2");
    assert_eq!(page["result"]["_meta"], json!({"k": 1}));
    assert_eq!(page["id"], 7);
}

#[test]
fn an_emptied_page_still_pages_on() {
    let mut page =
        json!({"id": 1, "result": {"resources": [{"uri": "file:///a"}], "nextCursor": "c"}});
    assert_eq!(
        filter_entries(&mut page, ListKind::Resources, |_, _| false),
        Some((1, 1))
    );
    assert_eq!(page["result"], json!({"resources": [], "nextCursor": "c"}));
}

#[test]
fn each_list_kind_reads_its_own_field() {
    let cases = [
        (ListKind::Tools, json!({"tools": [{"name": "x"}]})),
        (ListKind::Prompts, json!({"prompts": [{"name": "x"}]})),
        (ListKind::Resources, json!({"resources": [{"uri": "x"}]})),
        (
            ListKind::Templates,
            json!({"resourceTemplates": [{"uriTemplate": "x"}]}),
        ),
    ];
    for (kind, result) in cases {
        let mut seen = Vec::new();
        let mut value = json!({"id": 1, "result": result});
        filter_entries(&mut value, kind, |n, _| {
            seen.push(n.to_owned());
            true
        });
        assert_eq!(seen, ["x"]);
    }
}

#[test]
fn errors_and_other_results_are_not_lists() {
    let mut error = json!({"id": 1, "error": {"code": -1, "message": "m"}});
    assert_eq!(
        filter_entries(&mut error, ListKind::Tools, |_, _| false),
        None
    );
    let mut other = json!({"id": 1, "result": {"content": []}});
    assert_eq!(
        filter_entries(&mut other, ListKind::Tools, |_, _| false),
        None
    );
}

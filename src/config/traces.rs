//! `traces:`: OpenTelemetry spans exported over OTLP/gRPC (off when the
//! section is absent). Where spans go, how many are kept for export, and
//! which requests are sampled. Every impossible setting is an error that
//! names its field; nothing here may reach the network.

use std::time::Duration;

use anyhow::bail;
use serde::Deserialize;

/// Default `traces.service_name`: the `service.name` of every span.
const DEFAULT_SERVICE_NAME: &str = "spiffe-mcp-gateway";
/// Default `traces.queue_size`: spans waiting for export.
const DEFAULT_QUEUE_SIZE: usize = 4096;
/// Largest `traces.queue_size`: each queued span is a few hundred bytes.
const MAX_QUEUE_SIZE: usize = 1_000_000;
/// Default `traces.batch_size`: spans per export call at most.
const DEFAULT_BATCH_SIZE: usize = 512;
/// Default and largest `traces.export_timeout_seconds`.
const DEFAULT_EXPORT_TIMEOUT: u64 = 10;
const MAX_EXPORT_TIMEOUT: u64 = 60;

/// The validated `traces:` section.
#[derive(Debug, Clone, PartialEq)]
pub struct TracesConfig {
    /// `http://host:port` of an OTLP/gRPC receiver (a collector, Jaeger).
    pub otlp_endpoint: String,
    /// `service.name` of the exported spans.
    pub service_name: String,
    pub sampling: SamplingConfig,
    /// Spans held for export at most; one more is dropped and counted.
    pub queue_size: usize,
    /// Spans sent in one export call at most.
    pub batch_size: usize,
    /// One export call (connecting included) is given up after this.
    pub export_timeout: Duration,
}

/// `traces.sampling`: which requests get spans.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingConfig {
    /// The share of traces the gateway samples when it decides (0 to 1):
    /// by the trace id, so every gateway decides a trace alike.
    pub ratio: f64,
    /// A caller's `traceparent` sampled flag decides for its trace.
    pub parent_based: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTraces {
    otlp_endpoint: Option<String>,
    service_name: Option<String>,
    #[serde(default)]
    sampling: RawSampling,
    queue_size: Option<usize>,
    batch_size: Option<usize>,
    export_timeout_seconds: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSampling {
    ratio: Option<f64>,
    parent_based: Option<bool>,
}

impl RawTraces {
    pub(super) fn validate(self) -> anyhow::Result<TracesConfig> {
        let otlp_endpoint = match self.otlp_endpoint {
            Some(url) => endpoint(url)?,
            None => {
                bail!("traces.otlp_endpoint: required (an OTLP/gRPC receiver, http://host:4317)")
            }
        };
        let service_name = match self.service_name {
            None => DEFAULT_SERVICE_NAME.to_owned(),
            Some(s) if s.is_empty() || s.trim() != s => {
                bail!("traces.service_name: must be non-empty, without surrounding spaces")
            }
            Some(s) => s,
        };
        let queue_size = match self.queue_size {
            None => DEFAULT_QUEUE_SIZE,
            Some(n) if !(1..=MAX_QUEUE_SIZE).contains(&n) => {
                bail!("traces.queue_size: {n} is not within 1..={MAX_QUEUE_SIZE}")
            }
            Some(n) => n,
        };
        let batch_size = match self.batch_size {
            None => DEFAULT_BATCH_SIZE.min(queue_size),
            Some(n) if n == 0 || n > queue_size => {
                bail!("traces.batch_size: {n} is not within 1..=traces.queue_size ({queue_size})")
            }
            Some(n) => n,
        };
        let export_timeout = match self.export_timeout_seconds {
            None => Duration::from_secs(DEFAULT_EXPORT_TIMEOUT),
            Some(n) if !(1..=MAX_EXPORT_TIMEOUT).contains(&n) => {
                bail!("traces.export_timeout_seconds: {n} is not within 1..={MAX_EXPORT_TIMEOUT}")
            }
            Some(n) => Duration::from_secs(n),
        };
        Ok(TracesConfig {
            otlp_endpoint,
            service_name,
            sampling: self.sampling.validate()?,
            queue_size,
            batch_size,
            export_timeout,
        })
    }
}

impl RawSampling {
    fn validate(self) -> anyhow::Result<SamplingConfig> {
        let ratio = self.ratio.unwrap_or(1.0);
        // NaN fails the range check too.
        if !(0.0..=1.0).contains(&ratio) {
            bail!("traces.sampling.ratio: {ratio} is not within 0..=1");
        }
        Ok(SamplingConfig {
            ratio,
            parent_based: self.parent_based.unwrap_or(true),
        })
    }
}

/// `http://host:port` (a path of `/` at most): OTLP/gRPC over plain
/// HTTP/2. TLS to the receiver is not built in (the gateway carries one
/// crypto backend and no web roots): run a collector beside it.
fn endpoint(text: String) -> anyhow::Result<String> {
    let field = "traces.otlp_endpoint";
    let url = match url::Url::parse(&text) {
        Ok(url) => url,
        Err(e) => bail!("{field}: {text:?} is not a URL ({e})"),
    };
    match url.scheme() {
        "http" => {}
        "https" => bail!(
            "{field}: {text:?}: TLS to the OTLP receiver is not supported; \
             send to a collector on the same host or pod over http://"
        ),
        other => bail!("{field}: {text:?}: scheme {other:?} is not http"),
    }
    let clean = url.host_str().is_some_and(|h| !h.is_empty())
        && url.username().is_empty()
        && url.password().is_none()
        && url.query().is_none()
        && url.fragment().is_none()
        && url.path() == "/";
    if !clean {
        bail!("{field}: {text:?} must be http://host:port, without user, path, query or fragment");
    }
    Ok(text.trim_end_matches('/').to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> anyhow::Result<TracesConfig> {
        let raw: RawTraces = serde_yaml_ng::from_str(yaml)?;
        raw.validate()
    }

    #[test]
    fn defaults_sample_everything_and_honour_the_caller() {
        let c = parse("otlp_endpoint: http://collector:4317\n").unwrap();
        assert_eq!(c.otlp_endpoint, "http://collector:4317");
        assert_eq!(c.service_name, "spiffe-mcp-gateway");
        assert_eq!(
            c.sampling,
            SamplingConfig {
                ratio: 1.0,
                parent_based: true
            }
        );
        assert_eq!((c.queue_size, c.batch_size), (4096, 512));
        assert_eq!(c.export_timeout, Duration::from_secs(10));
        // A small queue caps the default batch.
        let c = parse("otlp_endpoint: http://127.0.0.1:4317/\nqueue_size: 8\n").unwrap();
        assert_eq!(
            (c.otlp_endpoint.as_str(), c.batch_size),
            ("http://127.0.0.1:4317", 8)
        );
    }

    #[test]
    fn impossible_settings_name_their_field() {
        for (yaml, field) in [
            ("{}", "traces.otlp_endpoint: required"),
            ("otlp_endpoint: collector:4317", "traces.otlp_endpoint"),
            ("otlp_endpoint: not a url", "traces.otlp_endpoint"),
            ("otlp_endpoint: https://c:4317", "traces.otlp_endpoint"),
            ("otlp_endpoint: grpc://c:4317", "traces.otlp_endpoint"),
            (
                "otlp_endpoint: http://c:4317/v1/traces",
                "traces.otlp_endpoint",
            ),
            ("otlp_endpoint: http://u:p@c:4317", "traces.otlp_endpoint"),
            ("otlp_endpoint: http://c:4317?x=1", "traces.otlp_endpoint"),
            (
                "{otlp_endpoint: 'http://c:1', sampling: {ratio: 1.5}}",
                "traces.sampling.ratio",
            ),
            (
                "{otlp_endpoint: 'http://c:1', sampling: {ratio: -0.1}}",
                "traces.sampling.ratio",
            ),
            (
                "{otlp_endpoint: 'http://c:1', sampling: {ratio: .nan}}",
                "traces.sampling.ratio",
            ),
            (
                "{otlp_endpoint: 'http://c:1', queue_size: 0}",
                "traces.queue_size",
            ),
            (
                "{otlp_endpoint: 'http://c:1', queue_size: 2000000}",
                "traces.queue_size",
            ),
            (
                "{otlp_endpoint: 'http://c:1', batch_size: 0}",
                "traces.batch_size",
            ),
            (
                "{otlp_endpoint: 'http://c:1', queue_size: 4, batch_size: 5}",
                "traces.batch_size",
            ),
            (
                "{otlp_endpoint: 'http://c:1', export_timeout_seconds: 0}",
                "traces.export_timeout_seconds",
            ),
            (
                "{otlp_endpoint: 'http://c:1', export_timeout_seconds: 61}",
                "traces.export_timeout_seconds",
            ),
            (
                "{otlp_endpoint: 'http://c:1', service_name: ''}",
                "traces.service_name",
            ),
            (
                "{otlp_endpoint: 'http://c:1', service_name: ' gw'}",
                "traces.service_name",
            ),
        ] {
            let err = parse(yaml).unwrap_err().to_string();
            assert!(err.starts_with(field), "{yaml}: {err}");
        }
        // Unknown fields, in the section and in `sampling`.
        assert!(parse("{otlp_endpoint: 'http://c:1', endpoint: x}").is_err());
        assert!(parse("{otlp_endpoint: 'http://c:1', sampling: {rate: 1}}").is_err());
    }

    #[test]
    fn sampling_settings_parse() {
        let c = parse("{otlp_endpoint: 'http://c:1', sampling: {ratio: 0, parent_based: false}}")
            .unwrap();
        assert_eq!(
            c.sampling,
            SamplingConfig {
                ratio: 0.0,
                parent_based: false
            }
        );
    }

    #[test]
    fn the_docs_example_parses() {
        let doc = include_str!("../../docs/traces.md");
        let start = doc.find("```yaml\n").unwrap() + "```yaml\n".len();
        let block = &doc[start..start + doc[start..].find("```").unwrap()];
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Doc {
            traces: RawTraces,
        }
        let parsed: Doc = serde_yaml_ng::from_str(block).unwrap();
        let c = parsed.traces.validate().unwrap();
        assert_eq!(c.otlp_endpoint, "http://otel-collector.monitoring:4317");
        assert_eq!(c.sampling.ratio, 0.1);
    }
}

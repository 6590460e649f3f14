//! The gateway under test: `app::build` on port 0 with an identity from
//! the fake Workload API, one stub upstream, the shipped schema, and an
//! audit file the test reads back.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use spiffe_mcp_gateway::app::{self, App};
use spiffe_mcp_gateway::config::{Config, Env};

use super::agent::{Agent, Answer};
use super::ca::Ca;
use super::upstream::{self, Handler, StubUpstream};
use super::workload_api::{Svid, WorkloadApi};

pub const GATEWAY: &str = "spiffe://example.org/ns/demo/sa/gateway";
pub const AGENT: &str = "spiffe://example.org/ns/demo/sa/agent";
pub const AGENT_B: &str = "spiffe://example.org/ns/demo/sa/agent-b";
pub const SERVER: &str = "spiffe://example.org/ns/demo/sa/mcp-server";

/// How the gateway is set up; `Default` is the shipped demo policies and
/// the `upstream::mcp` stub.
pub struct Options {
    /// Cedar policies beside the shipped schema; `None`: `policies/demo.cedar`.
    pub policies: Option<String>,
    /// YAML appended to the config (top-level sections not set here).
    pub extra_config: String,
    pub handler: Handler,
    /// The SPIFFE ID the stub upstream presents; `None`: the configured one.
    pub upstream_presents: Option<&'static str>,
    /// `upstream.url` instead of the stub's (e.g. a closed port).
    pub upstream_url: Option<String>,
    /// More `upstream:` fields, e.g. `request_timeout_seconds: 1`.
    pub upstream_fields: String,
    /// More upstreams beside `demo` (name, SPIFFE ID, handler): the config
    /// then uses `upstreams:`, each served on `/mcp/<name>`.
    pub more_upstreams: Vec<(&'static str, &'static str, Handler)>,
    /// With `more_upstreams`: `aggregate: {name: all}` over all of them.
    pub aggregate: bool,
    /// `audit.path`; `None`: `audit.log` in the test's directory.
    pub audit_path: Option<String>,
    /// More `listener:` fields, e.g. `plaintext_loopback: true`.
    pub listener_fields: String,
    /// Pin files (name, text) in `pins/`, which becomes `policy.pins_dir`;
    /// `None`: no pins directory.
    pub pin_files: Option<Vec<(String, String)>>,
    /// More `audit:` fields, each with a leading comma, e.g.
    /// `, checkpoint_every_records: 2`.
    pub audit_fields: String,
    /// Write the config to `gateway.yaml` and load it from there
    /// (`Config::load`), so the gateway watches the file.
    pub config_file: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            policies: None,
            extra_config: String::new(),
            handler: upstream::mcp(),
            upstream_presents: None,
            upstream_url: None,
            upstream_fields: String::new(),
            more_upstreams: Vec::new(),
            aggregate: false,
            audit_path: None,
            listener_fields: String::new(),
            pin_files: None,
            audit_fields: String::new(),
            config_file: false,
        }
    }
}

pub struct Harness {
    pub ca: Ca,
    pub workload_api: WorkloadApi,
    pub upstream: StubUpstream,
    /// `more_upstreams`, in order.
    pub others: Vec<StubUpstream>,
    pub app: App,
    dir: tempfile::TempDir,
    /// The config the gateway was built from (for `replica`).
    config_text: String,
    socket: String,
}

/// No environment: the config says everything.
struct NoEnv;

impl Env for NoEnv {
    fn var(&self, _: &str) -> Option<String> {
        None
    }
}

impl Harness {
    pub async fn start() -> Harness {
        Harness::start_with(Options::default()).await
    }

    pub async fn start_with(options: Options) -> Harness {
        Harness::try_start_with(options).await.expect("app::build")
    }

    /// The same, giving back why the gateway did not start.
    pub async fn try_start_with(mut options: Options) -> anyhow::Result<Harness> {
        let ca = Ca::new("example.org test CA");
        let svid = Svid {
            leaf: ca.leaf_with(GATEWAY, &["localhost"], time::Duration::hours(1)),
            bundle: vec![ca.der.to_vec()],
            federated: Vec::new(),
        };
        let workload_api = WorkloadApi::start(Some(svid)).await;
        let presents = options.upstream_presents.unwrap_or(SERVER);
        let handler = std::sync::Arc::clone(&options.handler);
        let upstream = StubUpstream::start(&ca, presents, handler).await;
        let dir = tempfile::tempdir().unwrap();
        write_policies(&dir.path().join("policies"), options.policies.as_deref());
        let pins = match &options.pin_files {
            None => "",
            Some(files) => {
                write_pins(&dir.path().join("pins"), files);
                ", pins_dir: pins"
            }
        };
        let (upstreams, others) = upstreams_config(&ca, &upstream, &mut options).await;
        let text = format!(
            "listener: {{address: \"127.0.0.1:0\", path: /mcp, {listener}}}\n\
             admin: {{address: \"127.0.0.1:0\"}}\n\
             workload_api: {{socket: \"{socket}\"}}\n\
             policy: {{dir: policies{pins}}}\n\
             {upstreams}\
             audit: {{sink: file, path: \"{audit}\"{audit_fields}}}\n{extra}",
            socket = workload_api.endpoint,
            audit = options.audit_path.as_deref().unwrap_or("audit.log"),
            extra = options.extra_config,
            listener = options.listener_fields,
            audit_fields = options.audit_fields,
        );
        let config = if options.config_file {
            let path = dir.path().join("gateway.yaml");
            std::fs::write(&path, &text).unwrap();
            Config::load(&path, &NoEnv)?
        } else {
            Config::parse(&text, dir.path(), &NoEnv)?
        };
        let app = app::build(config).await?;
        let mut identity = app.identity.clone();
        tokio::time::timeout(Duration::from_secs(10), identity.wait_ready())
            .await
            .expect("the gateway took its SVID from the test Workload API");
        Ok(Harness {
            socket: workload_api.endpoint.to_string(),
            ca,
            workload_api,
            upstream,
            others,
            app,
            dir,
            config_text: text,
        })
    }

    /// An agent presenting an SVID for `spiffe_id` from the test CA.
    pub fn agent(&self, spiffe_id: &str) -> Agent {
        Agent::new(&self.ca, &self.ca.leaf(spiffe_id), self.app.listen_addr)
    }

    /// The pins directory (`Options::pin_files`).
    pub fn pins_dir(&self) -> PathBuf {
        self.dir.path().join("pins")
    }

    /// The config file (`Options::config_file`).
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("gateway.yaml")
    }

    pub fn audit_path(&self) -> PathBuf {
        self.dir.path().join("audit.log")
    }

    /// The audit records once at least `n` are written (the writer is a
    /// thread of its own; records reach the file shortly after the answer).
    pub async fn audit(&self, n: usize) -> Vec<Value> {
        wait_for_records(&self.audit_path(), n).await
    }

    /// `/metrics` from the admin listener.
    pub async fn metrics(&self) -> String {
        admin_get(self.app.admin_addr, "/metrics").await.1
    }

    /// A second gateway from the same config (same upstreams, policies and
    /// `sessions:`), with its own SVID from the same CA, Workload API and
    /// audit file `audit-<name>.log`: another replica behind a balancer.
    pub async fn replica(&self, name: &str) -> Replica {
        let svid = Svid {
            leaf: self
                .ca
                .leaf_with(GATEWAY, &["localhost"], time::Duration::hours(1)),
            bundle: vec![self.ca.der.to_vec()],
            federated: Vec::new(),
        };
        let workload_api = WorkloadApi::start(Some(svid)).await;
        let audit = format!("audit-{name}.log");
        let text = self
            .config_text
            .replace(&self.socket, &workload_api.endpoint.to_string())
            .replacen("audit.log", &audit, 1);
        let config = Config::parse(&text, self.dir.path(), &NoEnv).expect("replica config");
        let app = app::build(config).await.expect("replica app::build");
        let mut identity = app.identity.clone();
        tokio::time::timeout(Duration::from_secs(10), identity.wait_ready())
            .await
            .expect("the replica took its SVID");
        Replica {
            app,
            _workload_api: workload_api,
            audit_path: self.dir.path().join(audit),
        }
    }
}

/// Another gateway built from a harness's config (`Harness::replica`).
pub struct Replica {
    pub app: App,
    _workload_api: WorkloadApi,
    pub audit_path: PathBuf,
}

impl Replica {
    /// The audit records once at least `n` are written.
    pub async fn audit(&self, n: usize) -> Vec<Value> {
        wait_for_records(&self.audit_path, n).await
    }

    pub async fn metrics(&self) -> String {
        admin_get(self.app.admin_addr, "/metrics").await.1
    }
}

/// The records of `path` once at least `n` are written.
async fn wait_for_records(path: &Path, n: usize) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let records = read_records(path);
        if records.len() >= n {
            return records;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "expected {n} audit records, have {}: {records:#?}",
            records.len()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The `upstream:` (or `upstreams:` and `aggregate:`) section, and the
/// further stub upstreams it names, started.
async fn upstreams_config(
    ca: &Ca,
    upstream: &StubUpstream,
    options: &mut Options,
) -> (String, Vec<StubUpstream>) {
    let url = options
        .upstream_url
        .take()
        .unwrap_or_else(|| upstream.url());
    let fields = &options.upstream_fields;
    let mut upstreams =
        format!("upstream: {{name: demo, url: \"{url}\", spiffe_id: \"{SERVER}\", {fields}}}\n");
    let mut others = Vec::new();
    if !options.more_upstreams.is_empty() {
        upstreams = format!(
            "upstreams:\n  - {{name: demo, url: \"{url}\", spiffe_id: \"{SERVER}\", {fields}}}\n"
        );
        let mut names = vec!["demo"];
        for (name, id, handler) in std::mem::take(&mut options.more_upstreams) {
            let stub = StubUpstream::start(ca, id, handler).await;
            upstreams.push_str(&format!(
                "  - {{name: {name}, url: \"{}\", spiffe_id: \"{id}\"}}\n",
                stub.url()
            ));
            names.push(name);
            others.push(stub);
        }
        if options.aggregate {
            upstreams.push_str(&format!("aggregate: {{name: all, upstreams: {names:?}}}\n"));
        }
    }
    (upstreams, others)
}

fn write_policies(dir: &Path, policies: Option<&str>) {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    std::fs::create_dir_all(dir).unwrap();
    std::fs::copy(shipped.join("mcp.cedarschema"), dir.join("mcp.cedarschema")).unwrap();
    let text = match policies {
        Some(text) => text.to_owned(),
        None => std::fs::read_to_string(shipped.join("demo.cedar")).unwrap(),
    };
    std::fs::write(dir.join("policies.cedar"), text).unwrap();
}

fn write_pins(dir: &Path, files: &[(String, String)]) {
    std::fs::create_dir_all(dir).unwrap();
    for (name, text) in files {
        std::fs::write(dir.join(name), text).unwrap();
    }
}

fn read_records(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    // Only whole lines: the writer may be between the two halves of a
    // record when the file is read.
    let whole = text.rfind('\n').map_or("", |end| &text[..end]);
    whole
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        // The chain's own lines (genesis, checkpoints) are not records.
        .filter(|v| v.get("chain").is_none())
        .collect()
}

/// A plain-HTTP GET on the admin listener: status and body.
pub async fn admin_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::TokioIo;
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::get(path)
        .header("host", "localhost")
        .body(Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// The request's JSON-RPC error, checked against what the README's error
/// table promises.
pub fn assert_refused(answer: &Answer, status: u16, code: i64) {
    assert_eq!(answer.status, status, "status; body {:?}", answer.body);
    assert_eq!(
        answer.error_code(),
        Some(code),
        "code; body {:?}",
        answer.body
    );
}

//! `pin record` and `pin diff`: an upstream's tools, prompts and resource
//! templates, read live with the gateway's own SVID exactly as the gateway
//! reads them (`proxy::pin_fetch`), written as its pin file or compared
//! with it. Both run in CI and in review: `record` writes the file a pull
//! request shows, `diff` says what changed since (exit 1 when anything
//! did).
//!
//! Exit codes: 0 recorded / nothing changed, 1 `diff` found a change, 2
//! unusable input (config, pin file, no SVID, upstream unreachable).
//!
//! Must never: write a pin file from anything but what the upstream listed
//! to the gateway's identity, or report no change when a hash differs.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::{CliError, EXIT_FAILED, Outcome, count};
use crate::config::{Config, ProcessEnv, UpstreamConfig};
use crate::identity::{ClientCerts, Identity};
use crate::metrics::Metrics;
use crate::pins::PinKind;
use crate::pins::diff;
use crate::pins::file::PinFile;
use crate::proxy::pin_fetch;
use crate::proxy::session::keys::SessionKeys;
use crate::proxy::session::{Bounds, Sessions};
use crate::proxy::upstream::Upstream;

/// How long to wait for the first SVID.
const SVID_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, clap::Args)]
pub struct PinArgs {
    /// The gateway's config: its Workload API, upstreams and
    /// `policy.pins_dir`.
    #[arg(long)]
    pub config: PathBuf,
    /// Only this upstream (default: every upstream of the config).
    #[arg(long)]
    pub upstream: Option<String>,
}

/// `pin record`: writes `<pins_dir>/<upstream>.pins.json` for each upstream.
pub fn record(args: &PinArgs) -> Result<Outcome, CliError> {
    let (config, dir) = load(args)?;
    let lives = fetch_all(&config, args.upstream.as_deref())?;
    let mut text = String::new();
    for live in lives {
        let path = dir.join(PinFile::file_name(&live.upstream));
        std::fs::write(&path, live.to_text()).map_err(|e| CliError::File {
            file: path.display().to_string(),
            message: e.to_string(),
        })?;
        text.push_str(&format!(
            "recorded {}, {}, {} of upstream {} ({}) in {}\n",
            count(live.entries(PinKind::Tool).len(), "tool", "tools"),
            count(live.entries(PinKind::Prompt).len(), "prompt", "prompts"),
            count(
                live.entries(PinKind::Template).len(),
                "resource template",
                "resource templates"
            ),
            live.upstream,
            live.spiffe_id,
            path.display()
        ));
    }
    Ok(Outcome::new(text, 0))
}

/// `pin diff`: what each upstream lists now that its pin file does not
/// say; exit 1 when anything changed.
pub fn diff(args: &PinArgs) -> Result<Outcome, CliError> {
    let (config, dir) = load(args)?;
    let lives = fetch_all(&config, args.upstream.as_deref())?;
    let mut text = String::new();
    let mut changed = false;
    for live in lives {
        let path = dir.join(PinFile::file_name(&live.upstream));
        let pinned = if path.exists() {
            PinFile::read(&path).map_err(|e| CliError::Config(e.to_string()))?
        } else {
            PinFile::default()
        };
        let changes = diff::diff(&pinned, &live);
        changed |= !changes.is_empty();
        text.push_str(&match changes.len() {
            0 => format!("upstream {}: as pinned\n", live.upstream),
            n => format!(
                "upstream {}: {} since {}\n{}",
                live.upstream,
                count(n, "change", "changes"),
                path.display(),
                diff::render(&changes)
            ),
        });
    }
    Ok(Outcome::new(text, if changed { EXIT_FAILED } else { 0 }))
}

/// The config, and its pins directory (required).
fn load(args: &PinArgs) -> Result<(Config, PathBuf), CliError> {
    let config = Config::load(&args.config, &ProcessEnv)
        .map_err(|e| CliError::Config(format!("{}: {e:#}", args.config.display())))?;
    let dir = config.policy.pins_dir.clone().ok_or(CliError::Flag {
        flag: "--config",
        message: "policy.pins_dir is not set: where would the pin files go?".to_owned(),
    })?;
    if let Some(name) = &args.upstream
        && !config.upstreams.iter().any(|u| &u.name == name)
    {
        return Err(CliError::Flag {
            flag: "--upstream",
            message: format!("{name:?} is not an upstream of the config"),
        });
    }
    Ok((config, dir))
}

/// Each selected upstream's live definitions, read with the gateway's SVID.
fn fetch_all(config: &Config, only: Option<&str>) -> Result<Vec<PinFile>, CliError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Config(e.to_string()))?;
    runtime.block_on(async {
        let identity = svid(config).await?;
        let mut lives = Vec::new();
        for u in config
            .upstreams
            .iter()
            .filter(|u| only.is_none_or(|n| n == u.name))
        {
            let up = upstream(config, u, &identity)?;
            let live = pin_fetch::fetch(&up, &PinKind::ALL)
                .await
                .map_err(|e| CliError::File {
                    file: format!("upstream {} ({})", u.name, u.url),
                    message: e.to_string(),
                })?;
            lives.push(live);
        }
        Ok(lives)
    })
}

/// The gateway's identity, once the Workload API issued its SVID.
async fn svid(config: &Config) -> Result<Identity, CliError> {
    let mut identity = Identity::spawn(
        config.workload_api.clone(),
        Metrics::new(),
        ClientCerts::Required,
    );
    tokio::time::timeout(SVID_WAIT, identity.wait_ready())
        .await
        .map_err(|_| {
            CliError::Config(format!(
                "no X.509-SVID from the Workload API at {} within {} s",
                config.workload_api.endpoint,
                SVID_WAIT.as_secs()
            ))
        })?;
    Ok(identity)
}

fn upstream(
    config: &Config,
    u: &UpstreamConfig,
    identity: &Identity,
) -> Result<Arc<Upstream>, CliError> {
    // The CLI reads lists in sessions of its own; no caller's session
    // passes through it, so its table never leaves this process.
    let keys = SessionKeys::load(None).map_err(|e| CliError::Config(e.to_string()))?;
    let limits = &config.limits;
    let bounds = Bounds {
        idle: limits.session_idle_timeout,
        lifetime: config.sessions.max_lifetime,
        max: limits.max_sessions,
        max_per_identity: limits.max_sessions_per_identity,
    };
    let sessions = Sessions::new(bounds, Arc::new(keys), format!("u:{}", u.name));
    Upstream::new(u, identity.clone(), &Metrics::new(), sessions)
        .map(Arc::new)
        .map_err(|e| CliError::Config(format!("upstream {}: {e:#}", u.name)))
}

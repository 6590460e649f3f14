//! `policy matrix`: who may call what. For the identities and the tools,
//! prompts and resources of an inventory file, decides `tools/call`,
//! `prompts/get` and `resources/read` for every pair and prints the table;
//! with `--against OLD_DIR`, prints only the pairs whose decision changes
//! between the two policy directories (a review aid for policy changes).
//!
//! Each pair is decided with no arguments, no session and, unless
//! `--user-claims` is given, no user: conditions on them see them absent.
//! So the table says what the policies allow in general; a permit that
//! depends on arguments shows as deny. Must never decide differently from
//! the gateway for the same request: it uses the same engine.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::inventory::{Identity, Inventory, Item};
use super::query::{Query, format_time, parse_time, user_from_json};
use super::{CliError, EXIT_FAILED, Format, Outcome, id_list, load_policies};
use crate::clock;
use crate::policy::{Decision, PolicyEngine, User};

#[derive(Debug, clap::Args)]
pub struct MatrixArgs {
    /// Policy directory to tabulate (with --against: the new one).
    #[arg(long, value_name = "DIR")]
    pub policies: PathBuf,
    /// Inventory YAML: the identities, and each server's tools, prompts and
    /// resources.
    #[arg(long, value_name = "FILE")]
    pub inventory: PathBuf,
    /// An older policy directory: print only who gains or loses what from
    /// it to --policies.
    #[arg(long, value_name = "OLD_DIR")]
    pub against: Option<PathBuf>,
    /// With --against: exit 1 if any decision changes.
    #[arg(long, requires = "against")]
    pub fail_on_change: bool,
    /// Decide for this end user (claims of a verified token, a JSON object
    /// with `sub` and `iss`) instead of for requests without a user.
    #[arg(long, value_name = "JSON")]
    pub user_claims: Option<String>,
    /// Decision time, RFC 3339 (default: now).
    #[arg(long, value_name = "RFC3339")]
    pub time: Option<String>,
    /// Output: an aligned table (or change list), or one JSON object.
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
}

/// The conditions every pair is decided under.
struct Conditions {
    user: Option<User>,
    now_unix_ms: i64,
}

/// One decided pair.
struct Cell<'a> {
    identity: &'a Identity,
    server: &'a str,
    item: &'a Item,
    decision: Decision,
}

#[derive(Serialize)]
struct PolicySetReport {
    dir: String,
    version: String,
    policies: usize,
}

#[derive(Serialize)]
struct DecisionReport {
    allowed: bool,
    reason: String,
    policy_ids: Vec<String>,
}

#[derive(Serialize)]
struct TableReport<'a> {
    policy_set: PolicySetReport,
    user: Option<&'a str>,
    time: String,
    decisions: Vec<CellReport<'a>>,
}

#[derive(Serialize)]
struct CellReport<'a> {
    identity: &'a str,
    identity_name: Option<&'a str>,
    server: &'a str,
    kind: &'static str,
    name: &'a str,
    #[serde(flatten)]
    decision: DecisionReport,
}

#[derive(Serialize)]
struct DiffReport<'a> {
    old: PolicySetReport,
    new: PolicySetReport,
    user: Option<&'a str>,
    time: String,
    changes: Vec<ChangeReport<'a>>,
}

#[derive(Serialize)]
struct ChangeReport<'a> {
    identity: &'a str,
    identity_name: Option<&'a str>,
    server: &'a str,
    kind: &'static str,
    name: &'a str,
    /// `gained` or `lost`.
    change: &'static str,
    old: DecisionReport,
    new: DecisionReport,
}

/// Tabulates, or diffs with `--against`.
pub fn run(args: &MatrixArgs) -> Result<Outcome, CliError> {
    let inventory = Inventory::load(&args.inventory)?;
    let conditions = Conditions::from_args(args)?;
    let engine = load_policies(&args.policies)?;
    let new = decide_all(&engine, &inventory, &conditions);
    let Some(old_dir) = &args.against else {
        return Ok(table(args, &engine, &conditions, &new));
    };
    let old_engine = load_policies(old_dir)?;
    let old = decide_all(&old_engine, &inventory, &conditions);
    let changes: Vec<(&Cell<'_>, &Cell<'_>)> = old
        .iter()
        .zip(&new)
        .filter(|(o, n)| o.decision.allowed != n.decision.allowed)
        .collect();
    let sets = [
        policy_set(old_dir, &old_engine),
        policy_set(&args.policies, &engine),
    ];
    let text = match args.format {
        Format::Text => diff_text(&sets, &conditions, &changes),
        Format::Json => {
            let [old, new] = sets;
            let report = DiffReport {
                old,
                new,
                user: conditions.user.as_ref().map(User::subject),
                time: format_time(conditions.now_unix_ms),
                changes: changes.iter().map(|(o, n)| change_report(o, n)).collect(),
            };
            to_json(&report)?
        }
    };
    let failed = args.fail_on_change && !changes.is_empty();
    Ok(Outcome::new(text, if failed { EXIT_FAILED } else { 0 }))
}

impl Conditions {
    fn from_args(args: &MatrixArgs) -> Result<Conditions, CliError> {
        let flag = |flag: &'static str| move |message: String| CliError::Flag { flag, message };
        let user = match &args.user_claims {
            Some(json) => Some(user_from_json(json).map_err(flag("--user-claims"))?),
            None => None,
        };
        let now_unix_ms = match &args.time {
            Some(time) => parse_time(time).map_err(flag("--time"))?,
            None => clock::unix_ms(),
        };
        Ok(Conditions { user, now_unix_ms })
    }

    /// The note under a table or diff.
    fn describe(&self) -> String {
        let (user, absent) = match &self.user {
            Some(user) => (
                format!(" for user {:?} (iss {:?})", user.subject(), user.issuer()),
                "arguments or session",
            ),
            None => (String::new(), "user, arguments or session"),
        };
        format!(
            "decided at {}{user} with no {absent} (conditions on them see them absent)",
            format_time(self.now_unix_ms)
        )
    }
}

/// Every identity against every item of every server, in inventory order.
fn decide_all<'a>(
    engine: &PolicyEngine,
    inventory: &'a Inventory,
    conditions: &Conditions,
) -> Vec<Cell<'a>> {
    let mut cells = Vec::new();
    for identity in &inventory.identities {
        for server in &inventory.servers {
            for item in &server.items {
                let query = Query {
                    principal: identity.id.clone(),
                    action: item.kind.action().to_owned(),
                    server: server.name.clone(),
                    server_spiffe_id: server.spiffe_id.clone(),
                    target: item.kind.target(&item.name),
                    arguments: None,
                    session_id: None,
                    protocol_version: None,
                    user: conditions.user.clone(),
                    now_unix_ms: conditions.now_unix_ms,
                    pin: None,
                };
                cells.push(Cell {
                    identity,
                    server: &server.name,
                    item,
                    decision: query.decide(engine),
                });
            }
        }
    }
    cells
}

fn table(
    args: &MatrixArgs,
    engine: &PolicyEngine,
    conditions: &Conditions,
    cells: &[Cell<'_>],
) -> Outcome {
    let set = policy_set(&args.policies, engine);
    let text = match args.format {
        Format::Text => table_text(&set, conditions, cells),
        Format::Json => {
            let report = TableReport {
                policy_set: set,
                user: conditions.user.as_ref().map(User::subject),
                time: format_time(conditions.now_unix_ms),
                decisions: cells.iter().map(cell_report).collect(),
            };
            match to_json(&report) {
                Ok(text) => text,
                Err(e) => return Outcome::new(format!("{e}\n"), super::EXIT_BAD_INPUT),
            }
        }
    };
    Outcome::new(text, 0)
}

/// Rows are identities, columns `server/tool` (`server/prompt:name`,
/// `server/resource:uri`), cells `allow`, `deny` or `error`.
fn table_text(set: &PolicySetReport, conditions: &Conditions, cells: &[Cell<'_>]) -> String {
    let columns: Vec<String> = match cells.first() {
        Some(first) => cells
            .iter()
            .take_while(|c| std::ptr::eq(c.identity, first.identity))
            .map(|c| c.item.column(c.server))
            .collect(),
        None => Vec::new(),
    };
    let mut rows: Vec<Vec<String>> = vec![
        std::iter::once("identity".to_owned())
            .chain(columns.iter().cloned())
            .collect(),
    ];
    if !columns.is_empty() {
        for row in cells.chunks(columns.len()) {
            let label = row[0].identity.label().to_owned();
            rows.push(
                std::iter::once(label)
                    .chain(row.iter().map(|c| cell_word(&c.decision).to_owned()))
                    .collect(),
            );
        }
    }
    let mut text = aligned(&rows);
    for row in cells.chunks(columns.len().max(1)) {
        if let Some(name) = &row[0].identity.name {
            text += &format!("{name} = {}\n", row[0].identity.id);
        }
    }
    text += &format!(
        "policy set {} ({} in {})\n{}\n",
        set.version,
        super::count(set.policies, "policy", "policies"),
        set.dir,
        conditions.describe()
    );
    text
}

fn cell_word(decision: &Decision) -> &'static str {
    match (decision.allowed, decision.reason.as_str()) {
        (true, _) => "allow",
        (false, "error") => "error",
        (false, _) => "deny",
    }
}

/// Columns padded to their widest cell, two spaces apart.
fn aligned(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut text = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:width$}"))
            .collect();
        text += line.join("  ").trim_end();
        text.push('\n');
    }
    text
}

/// `+ who may now call what (by ...)` / `- who may no longer call what (now ...)`.
fn diff_text(
    sets: &[PolicySetReport; 2],
    conditions: &Conditions,
    changes: &[(&Cell<'_>, &Cell<'_>)],
) -> String {
    let [old, new] = sets;
    let mut text = format!(
        "policy set {} ({}) -> {} ({})\n",
        old.version, old.dir, new.version, new.dir
    );
    let mut gained = 0;
    for (old, new) in changes {
        let who = new.identity.full_label();
        let what = new.item.describe(new.server);
        let d = &new.decision;
        if d.allowed {
            gained += 1;
            text += &format!("+ {who} may now {what} (by {})\n", id_list(&d.policy_ids));
        } else {
            let why = match d.reason.as_str() {
                "default_deny" => "now default_deny".to_owned(),
                reason => format!("now {reason} by {}", id_list(&d.policy_ids)),
            };
            text += &format!("- {who} may no longer {what} ({why})\n");
        }
        debug_assert_ne!(old.decision.allowed, d.allowed);
    }
    text += &match changes.len() {
        0 => "no changes".to_owned(),
        n => format!(
            "{}: {gained} gained, {} lost",
            super::count(n, "change", "changes"),
            n - gained
        ),
    };
    text += &format!("\n{}\n", conditions.describe());
    text
}

fn policy_set(dir: &Path, engine: &PolicyEngine) -> PolicySetReport {
    PolicySetReport {
        dir: dir.display().to_string(),
        version: engine.version().to_owned(),
        policies: engine.policy_count(),
    }
}

fn decision_report(decision: &Decision) -> DecisionReport {
    DecisionReport {
        allowed: decision.allowed,
        reason: decision.reason.as_str().to_owned(),
        policy_ids: decision.policy_ids.clone(),
    }
}

fn cell_report<'a>(cell: &Cell<'a>) -> CellReport<'a> {
    CellReport {
        identity: &cell.identity.id,
        identity_name: cell.identity.name.as_deref(),
        server: cell.server,
        kind: cell.item.kind.label(),
        name: &cell.item.name,
        decision: decision_report(&cell.decision),
    }
}

fn change_report<'a>(old: &Cell<'a>, new: &Cell<'a>) -> ChangeReport<'a> {
    ChangeReport {
        identity: &new.identity.id,
        identity_name: new.identity.name.as_deref(),
        server: new.server,
        kind: new.item.kind.label(),
        name: &new.item.name,
        change: if new.decision.allowed {
            "gained"
        } else {
            "lost"
        },
        old: decision_report(&old.decision),
        new: decision_report(&new.decision),
    }
}

fn to_json<T: Serialize>(value: &T) -> Result<String, CliError> {
    serde_json::to_string_pretty(value)
        .map(|json| json + "\n")
        .map_err(|e| CliError::Flag {
            flag: "--format",
            message: e.to_string(),
        })
}

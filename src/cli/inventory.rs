//! The inventory file of `policy matrix`: the identities to decide for, and
//! each upstream server with the tools, prompts and resources it lists.
//!
//! A list may be written inline or read from a saved JSON-RPC result of
//! `tools/list`, `prompts/list` or `resources/list` (`tools_from:` ...), so
//! the table covers exactly what an upstream offers. Paths are relative to
//! the inventory file. Unknown fields are errors; every error names the
//! file and the entry.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::query::{OwnedTarget, check_server_name, check_spiffe_id};
use super::{CliError, read_file};
use crate::mcp::method;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InventorySpec {
    identities: Vec<IdentitySpec>,
    servers: Vec<ServerSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IdentitySpec {
    name: Option<String>,
    id: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ServerSpec {
    name: String,
    spiffe_id: String,
    #[serde(default)]
    tools: Vec<String>,
    tools_from: Option<PathBuf>,
    #[serde(default)]
    prompts: Vec<String>,
    prompts_from: Option<PathBuf>,
    #[serde(default)]
    resources: Vec<String>,
    resources_from: Option<PathBuf>,
}

/// A checked inventory.
pub(super) struct Inventory {
    pub(super) identities: Vec<Identity>,
    pub(super) servers: Vec<Server>,
}

pub(super) struct Identity {
    pub(super) name: Option<String>,
    pub(super) id: String,
}

pub(super) struct Server {
    pub(super) name: String,
    pub(super) spiffe_id: String,
    /// Tools, then prompts, then resources, each in file order, no duplicates.
    pub(super) items: Vec<Item>,
}

#[derive(Debug, PartialEq, Eq)]
pub(super) struct Item {
    pub(super) kind: Kind,
    /// Tool or prompt name, or resource URI.
    pub(super) name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Tool,
    Prompt,
    Resource,
}

impl Inventory {
    pub(super) fn load(path: &Path) -> Result<Inventory, CliError> {
        let file = path.display().to_string();
        let error = |message| CliError::File {
            file: file.clone(),
            message,
        };
        let text = read_file(path)?;
        let spec: InventorySpec =
            serde_yaml_ng::from_str(&text).map_err(|e| error(e.to_string()))?;
        let base = path.parent().unwrap_or_else(|| Path::new("."));
        let identities = identities(spec.identities).map_err(error)?;
        let mut servers: Vec<Server> = Vec::with_capacity(spec.servers.len());
        for server in spec.servers {
            let label = format!("servers: {:?}", server.name);
            let server =
                Server::from_spec(server, base).map_err(|e| error(format!("{label}: {e}")))?;
            if servers.iter().any(|s| s.name == server.name) {
                return Err(error(format!("{label}: listed twice")));
            }
            servers.push(server);
        }
        if identities.is_empty() || servers.iter().all(|s| s.items.is_empty()) {
            return Err(error(
                "needs at least one identity and one tool, prompt or resource".to_owned(),
            ));
        }
        Ok(Inventory {
            identities,
            servers,
        })
    }
}

fn identities(specs: Vec<IdentitySpec>) -> Result<Vec<Identity>, String> {
    let mut identities: Vec<Identity> = Vec::with_capacity(specs.len());
    for spec in specs {
        check_spiffe_id(&spec.id).map_err(|e| format!("identities: {e}"))?;
        if identities.iter().any(|i| i.id == spec.id) {
            return Err(format!("identities: {:?} listed twice", spec.id));
        }
        if let Some(name) = &spec.name
            && (name.is_empty() || identities.iter().any(|i| i.name.as_ref() == Some(name)))
        {
            return Err(format!("identities: name {name:?} is empty or used twice"));
        }
        identities.push(Identity {
            name: spec.name,
            id: spec.id,
        });
    }
    Ok(identities)
}

impl Server {
    fn from_spec(spec: ServerSpec, base: &Path) -> Result<Server, String> {
        check_server_name(&spec.name)?;
        check_spiffe_id(&spec.spiffe_id).map_err(|e| format!("spiffe_id: {e}"))?;
        let mut items = Vec::new();
        let lists = [
            (Kind::Tool, spec.tools, spec.tools_from),
            (Kind::Prompt, spec.prompts, spec.prompts_from),
            (Kind::Resource, spec.resources, spec.resources_from),
        ];
        for (kind, inline, from) in lists {
            let mut names = inline;
            if let Some(from) = from {
                names.extend(kind.names_from(&base.join(from))?);
            }
            for name in names {
                let item = Item { kind, name };
                if !items.contains(&item) {
                    items.push(item);
                }
            }
        }
        Ok(Server {
            name: spec.name,
            spiffe_id: spec.spiffe_id,
            items,
        })
    }
}

impl Kind {
    /// The method the matrix decides for this kind.
    pub(super) fn action(self) -> &'static str {
        match self {
            Kind::Tool => method::TOOLS_CALL,
            Kind::Prompt => method::PROMPTS_GET,
            Kind::Resource => method::RESOURCES_READ,
        }
    }

    pub(super) fn label(self) -> &'static str {
        match self {
            Kind::Tool => "tool",
            Kind::Prompt => "prompt",
            Kind::Resource => "resource",
        }
    }

    pub(super) fn target(self, name: &str) -> OwnedTarget {
        match self {
            Kind::Tool => OwnedTarget::Tool(name.to_owned()),
            Kind::Prompt => OwnedTarget::Prompt(name.to_owned()),
            Kind::Resource => OwnedTarget::Resource(name.to_owned()),
        }
    }

    /// The list key and item field of this kind's `*/list` result.
    fn list_field(self) -> (&'static str, &'static str) {
        match self {
            Kind::Tool => ("tools", "name"),
            Kind::Prompt => ("prompts", "name"),
            Kind::Resource => ("resources", "uri"),
        }
    }

    /// Names from a saved `*/list` response: the whole JSON-RPC response
    /// (`result.tools[].name`) or just its result (`tools[].name`).
    fn names_from(self, path: &Path) -> Result<Vec<String>, String> {
        let (list, field) = self.list_field();
        let shown = path.display();
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| format!("{shown}: not JSON: {e}"))?;
        let result = json.get("result").unwrap_or(&json);
        let items = result
            .get(list)
            .and_then(serde_json::Value::as_array)
            .ok_or_else(|| format!("{shown}: no `result.{list}` array"))?;
        items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                item.get(field)
                    .and_then(serde_json::Value::as_str)
                    .map(str::to_owned)
                    .ok_or_else(|| format!("{shown}: `result.{list}[{i}]` has no string `{field}`"))
            })
            .collect()
    }
}

impl Identity {
    /// The row label: the name, else the SPIFFE ID.
    pub(super) fn label(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.id)
    }

    /// `name (spiffe://...)`, or the SPIFFE ID.
    pub(super) fn full_label(&self) -> String {
        match &self.name {
            Some(name) => format!("{name} ({})", self.id),
            None => self.id.clone(),
        }
    }
}

impl Item {
    /// The column header: `server/tool`, `server/prompt:name`, `server/resource:uri`.
    pub(super) fn column(&self, server: &str) -> String {
        match self.kind {
            Kind::Tool => format!("{server}/{}", self.name),
            kind => format!("{server}/{}:{}", kind.label(), self.name),
        }
    }

    /// `call demo/echo`, `get prompt demo/greet`, `read resource demo/file:///x`.
    pub(super) fn describe(&self, server: &str) -> String {
        match self.kind {
            Kind::Tool => format!("call {server}/{}", self.name),
            Kind::Prompt => format!("get prompt {server}/{}", self.name),
            Kind::Resource => format!("read resource {server}/{}", self.name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn lists_come_inline_or_from_a_saved_list_result() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "tools.json",
            r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"echo","inputSchema":{}},{"name":"add"}]}}"#,
        );
        write(
            dir.path(),
            "res.json",
            r#"{"resources":[{"uri":"file:///a","name":"A"}]}"#,
        );
        let path = write(
            dir.path(),
            "inv.yaml",
            "identities: [{name: agent, id: spiffe://example.org/a}]\n\
             servers:\n- name: demo\n  spiffe_id: spiffe://example.org/s\n  tools: [echo]\n  \
             tools_from: tools.json\n  prompts: [greet]\n  resources_from: res.json\n",
        );
        let inventory = Inventory::load(&path).unwrap();
        let columns: Vec<String> = inventory.servers[0]
            .items
            .iter()
            .map(|i| i.column("demo"))
            .collect();
        assert_eq!(
            columns,
            [
                "demo/echo",
                "demo/add",
                "demo/prompt:greet",
                "demo/resource:file:///a"
            ]
        );
    }

    #[test]
    fn errors_name_the_file_and_entry() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "bad.json",
            r#"{"result":{"tools":[{"title":"x"}]}}"#,
        );
        let cases = [
            ("identities: []\nservers: []\nextra: 1\n", "extra"),
            (
                "identities: [{id: 'spiffe://example.org/a/'}]\nservers: []\n",
                "identities",
            ),
            (
                "identities: [{id: 'spiffe://example.org/a'}]\nservers: [{name: d, spiffe_id: 'spiffe://example.org/s', tools_from: bad.json}]\n",
                "result.tools[0]",
            ),
            (
                "identities: [{id: 'spiffe://example.org/a'}]\nservers: [{name: d, spiffe_id: 'spiffe://example.org/s'}]\n",
                "at least one",
            ),
        ];
        for (text, says) in cases {
            let path = write(dir.path(), "inv.yaml", text);
            let err = Inventory::load(&path).err().unwrap().to_string();
            assert!(
                err.contains("inv.yaml") && err.contains(says),
                "{text}: {err}"
            );
        }
    }
}

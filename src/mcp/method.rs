//! The MCP methods the gateway knows, in one table: which member of
//! `params` names a method's target and what kind of thing it is, whether
//! 2026-07-28 repeats that name in `Mcp-Name`, which list a method asks
//! for, and the label it is counted under.
//!
//! Every rule that depends on a method name reads this table; nothing else
//! in the gateway matches on method strings for these facts. A method not
//! in the table has no target (it is decided against the server) and is
//! counted as `other`, so a caller cannot mint metric series.

/// What a method's target is, and where in `params` it is named.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetKind {
    /// `params.name`: a tool (`tools/call`).
    Tool,
    /// `params.name`: a prompt (`prompts/get`).
    Prompt,
    /// `params.uri`: a resource (`resources/read`, `(un)subscribe`).
    Resource,
}

impl TargetKind {
    /// The member of `params` that names the target.
    pub fn member(self) -> &'static str {
        match self {
            TargetKind::Tool | TargetKind::Prompt => "name",
            TargetKind::Resource => "uri",
        }
    }

    /// As audited (`target_kind`).
    pub fn as_str(self) -> &'static str {
        match self {
            TargetKind::Tool => "tool",
            TargetKind::Prompt => "prompt",
            TargetKind::Resource => "resource",
        }
    }
}

/// A list method whose result the gateway filters entry by entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListKind {
    Tools,
    Prompts,
    Resources,
    Templates,
}

impl ListKind {
    /// The list method.
    pub const fn method(self) -> &'static str {
        match self {
            ListKind::Tools => "tools/list",
            ListKind::Prompts => "prompts/list",
            ListKind::Resources => "resources/list",
            ListKind::Templates => "resources/templates/list",
        }
    }

    /// The array in the result that holds the entries.
    pub fn field(self) -> &'static str {
        match self {
            ListKind::Tools => "tools",
            ListKind::Prompts => "prompts",
            ListKind::Resources => "resources",
            ListKind::Templates => "resourceTemplates",
        }
    }

    /// The member of an entry that names it.
    pub fn entry_key(self) -> &'static str {
        match self {
            ListKind::Tools | ListKind::Prompts => "name",
            ListKind::Resources => "uri",
            ListKind::Templates => "uriTemplate",
        }
    }

    /// The method whose permission makes an entry visible.
    pub fn use_method(self) -> &'static str {
        match self {
            ListKind::Tools => "tools/call",
            ListKind::Prompts => "prompts/get",
            ListKind::Resources | ListKind::Templates => "resources/read",
        }
    }

    /// What an entry is, as a policy target.
    pub fn entry_kind(self) -> TargetKind {
        match self {
            ListKind::Tools => TargetKind::Tool,
            ListKind::Prompts => TargetKind::Prompt,
            ListKind::Resources | ListKind::Templates => TargetKind::Resource,
        }
    }
}

/// The methods the gateway itself acts on by name (the rest it reads from
/// the table): one spelling each.
pub const INITIALIZE: &str = "initialize";
pub const INITIALIZED: &str = "notifications/initialized";
pub const PING: &str = "ping";
pub const SERVER_DISCOVER: &str = "server/discover";
pub const TOOLS_CALL: &str = "tools/call";
pub const PROMPTS_GET: &str = "prompts/get";
pub const RESOURCES_READ: &str = "resources/read";

/// One row of the table.
#[derive(Debug)]
pub struct Method {
    pub name: &'static str,
    pub target: Option<TargetKind>,
    /// 2026-07-28: the target is repeated in the `Mcp-Name` header, and the
    /// result may be an `InputRequiredResult`.
    pub named_call: bool,
    pub lists: Option<ListKind>,
}

const fn row(name: &'static str) -> Method {
    Method {
        name,
        target: None,
        named_call: false,
        lists: None,
    }
}

const fn call(name: &'static str, target: TargetKind) -> Method {
    Method {
        name,
        target: Some(target),
        named_call: true,
        lists: None,
    }
}

const fn list(kind: ListKind) -> Method {
    Method {
        name: kind.method(),
        target: None,
        named_call: false,
        lists: Some(kind),
    }
}

/// The methods with a metric label of their own; all other facts default
/// to none.
const METHODS: &[Method] = &[
    row(INITIALIZE),
    row(PING),
    list(ListKind::Tools),
    call(TOOLS_CALL, TargetKind::Tool),
    list(ListKind::Prompts),
    call(PROMPTS_GET, TargetKind::Prompt),
    list(ListKind::Resources),
    list(ListKind::Templates),
    call(RESOURCES_READ, TargetKind::Resource),
    Method {
        target: Some(TargetKind::Resource),
        ..row("resources/subscribe")
    },
    Method {
        target: Some(TargetKind::Resource),
        ..row("resources/unsubscribe")
    },
    row("completion/complete"),
    row("logging/setLevel"),
    row(SERVER_DISCOVER),
    row(INITIALIZED),
    row("notifications/cancelled"),
    row("notifications/progress"),
    row("notifications/roots/list_changed"),
    row("sampling/createMessage"),
    row("elicitation/create"),
    row("roots/list"),
];

/// The row for `name`, if the gateway knows the method.
pub fn lookup(name: &str) -> Option<&'static Method> {
    METHODS.iter().find(|m| m.name == name)
}

/// What `name`'s target is, if it has one.
pub fn target_kind(name: &str) -> Option<TargetKind> {
    lookup(name).and_then(|m| m.target)
}

/// The list `name` asks for, if it is a list method.
pub fn list_kind(name: &str) -> Option<ListKind> {
    lookup(name).and_then(|m| m.lists)
}

/// Whether `name` is a call that names its target in `Mcp-Name`
/// (`tools/call`, `prompts/get`, `resources/read`).
pub fn is_named_call(name: &str) -> bool {
    lookup(name).is_some_and(|m| m.named_call)
}

/// The metric label for `name`: itself if known, else `other`.
pub fn metric_label(name: &str) -> &'static str {
    lookup(name).map_or("other", |m| m.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_as_the_rest_of_the_gateway_reads_it() {
        let cases = [
            ("tools/call", Some(TargetKind::Tool), true, None),
            ("prompts/get", Some(TargetKind::Prompt), true, None),
            ("resources/read", Some(TargetKind::Resource), true, None),
            (
                "resources/subscribe",
                Some(TargetKind::Resource),
                false,
                None,
            ),
            (
                "resources/unsubscribe",
                Some(TargetKind::Resource),
                false,
                None,
            ),
            ("tools/list", None, false, Some(ListKind::Tools)),
            ("prompts/list", None, false, Some(ListKind::Prompts)),
            ("resources/list", None, false, Some(ListKind::Resources)),
            (
                "resources/templates/list",
                None,
                false,
                Some(ListKind::Templates),
            ),
            ("initialize", None, false, None),
            ("x/unknown", None, false, None),
            ("Tools/Call", None, false, None),
        ];
        for (name, target, named, lists) in cases {
            assert_eq!(target_kind(name), target, "{name}");
            assert_eq!(is_named_call(name), named, "{name}");
            assert_eq!(list_kind(name), lists, "{name}");
        }
    }

    #[test]
    fn each_list_names_itself_and_the_method_that_uses_its_entries() {
        for kind in [
            ListKind::Tools,
            ListKind::Prompts,
            ListKind::Resources,
            ListKind::Templates,
        ] {
            assert_eq!(list_kind(kind.method()), Some(kind));
            assert_eq!(target_kind(kind.use_method()), Some(kind.entry_kind()));
        }
    }

    #[test]
    fn unknown_methods_share_one_label_and_names_are_unique() {
        assert_eq!(metric_label("tools/call"), "tools/call");
        assert_eq!(metric_label("x/evil"), "other");
        for (i, m) in METHODS.iter().enumerate() {
            assert!(
                METHODS[i + 1..].iter().all(|n| n.name != m.name),
                "{}",
                m.name
            );
        }
    }
}

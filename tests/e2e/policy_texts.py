"""Cedar policy texts that more than one end-to-end module uses, and the two
ways the tests build a policy directory from texts. (A text one module uses
stays in that module.)"""

from __future__ import annotations

import shutil
from pathlib import Path

from conftest import AGENT_ID
from gateway_fixtures import POLICY_DIR

# The methods a caller needs to open a session and look around (as in the
# shipped demo policies).
LIFECYCLE = [
    "initialize",
    "notifications/initialized",
    "ping",
    "tools/list",
    "notifications/cancelled",
    "server/discover",
]


def actions(names: list[str]) -> str:
    """A Cedar list of these MCP methods, for `action in ...`."""
    inner = ",\n".join(f'    Mcp::Action::"{n}"' for n in names)
    return f"[\n{inner}\n  ]"


# A candidate or added set that forbids the demo server's `echo` to everyone.
FREEZE_ECHO = """
@id("echo-frozen")
forbid (principal, action == Mcp::Action::"tools/call", resource == Mcp::Tool::"demo/echo");
"""


def two_upstreams(lifecycle: list[str], extra: str = "") -> str:
    """The set of the many-upstreams and aggregate tests (alpha, beta): the
    demo agent may use `lifecycle` on any upstream, call `echo` on alpha and
    `get_weather` on beta, and never `echo` on beta; `extra` adds a module's
    own policies."""
    return f"""
@id("agent-lifecycle-any-upstream")
permit (
  principal == Mcp::Workload::"{AGENT_ID}",
  action in {actions(lifecycle)},
  resource
);

@id("echo-on-alpha")
permit (
  principal == Mcp::Workload::"{AGENT_ID}",
  action == Mcp::Action::"tools/call",
  resource == Mcp::Tool::"alpha/echo"
);

@id("weather-on-beta")
permit (
  principal == Mcp::Workload::"{AGENT_ID}",
  action == Mcp::Action::"tools/call",
  resource == Mcp::Tool::"beta/get_weather"
);
{extra}
@id("no-echo-on-beta")
forbid (
  principal,
  action == Mcp::Action::"tools/call",
  resource == Mcp::Tool::"beta/echo"
);
"""


def demo_policies_with(directory: Path, **cedar: str) -> Path:
    """The shipped demo set (schema and policies) in `directory`, plus each
    `name=text` as <name>.cedar."""
    shutil.copytree(POLICY_DIR, directory, dirs_exist_ok=True)
    return _write(directory, cedar)


def schema_with(directory: Path, **cedar: str) -> Path:
    """The shipped schema alone in `directory`, plus each `name=text` as
    <name>.cedar: nothing else is permitted."""
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(POLICY_DIR / "mcp.cedarschema", directory / "mcp.cedarschema")
    return _write(directory, cedar)


def _write(directory: Path, cedar: dict[str, str]) -> Path:
    for name, text in cedar.items():
        (directory / f"{name}.cedar").write_text(text, encoding="utf-8")
    return directory

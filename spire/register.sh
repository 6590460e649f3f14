#!/usr/bin/env bash
# Registers the demo workloads with the SPIRE server started by
# spire/start.sh RUN_DIR. Safe to rerun: existing entries are updated.
#
#   spire/register.sh RUN_DIR
#
# All demo processes run as the current Unix user, so every entry has the
# selector unix:uid:<uid> and the workload tells its SVIDs apart by hint:
#
#   hint        SPIFFE ID                                 DNS SAN
#   gateway     spiffe://example.org/ns/demo/sa/gateway     localhost
#   agent       spiffe://example.org/ns/demo/sa/agent
#   agent-b     spiffe://example.org/ns/demo/sa/agent-b
#   mcp-server  spiffe://example.org/ns/demo/sa/mcp-server  localhost
#
# X509-SVID lifetime per entry, in seconds (default: the server's 1h):
#   GATEWAY_SVID_TTL  AGENT_SVID_TTL  AGENT_B_SVID_TTL  MCP_SERVER_SVID_TTL
set -euo pipefail

die() {
  echo "spire/register.sh: $*" >&2
  exit 1
}

[[ $# -eq 1 ]] || {
  echo "usage: spire/register.sh RUN_DIR" >&2
  exit 2
}
[[ -f $1/spire.env ]] || die "$1/spire.env not found: start SPIRE first with spire/start.sh $1"

# shellcheck disable=SC1091 # written by spire/start.sh
source "$1/spire.env"
for var in GATEWAY_SVID_TTL AGENT_SVID_TTL AGENT_B_SVID_TTL MCP_SERVER_SVID_TTL; do
  [[ -z ${!var:-} || ${!var} =~ ^[1-9][0-9]*$ ]] || die "$var must be a number of seconds, got '${!var}'"
done
server="$SPIRE_BIN_DIR/spire-server"
uid=$(id -u)

# register ENTRY_ID HINT PATH TTL [DNS]
register() {
  local entry_id=$1 hint=$2 path=$3 ttl=$4 dns=${5:-}
  local spiffe_id="spiffe://$SPIRE_TRUST_DOMAIN$path"
  local args=(-socketPath "$SPIRE_SERVER_SOCKET" -entryID "$entry_id"
    -parentID "$SPIRE_AGENT_ID" -spiffeID "$spiffe_id"
    -selector "unix:uid:$uid" -hint "$hint")
  if [[ -n $ttl ]]; then
    args+=(-x509SVIDTTL "$ttl")
  fi
  if [[ -n $dns ]]; then
    args+=(-dns "$dns")
  fi
  local verb=create
  if "$server" entry show -socketPath "$SPIRE_SERVER_SOCKET" -entryID "$entry_id" >/dev/null 2>&1; then
    verb=update
  fi
  "$server" entry "$verb" "${args[@]}" >/dev/null || die "entry $verb failed for $spiffe_id"
  printf '%-10s %-14s %s (ttl %s)\n' "$hint" "$entry_id" "$spiffe_id" "${ttl:-default}"
}

register demo-gateway gateway /ns/demo/sa/gateway "${GATEWAY_SVID_TTL:-}" localhost
register demo-agent agent /ns/demo/sa/agent "${AGENT_SVID_TTL:-}"
register demo-agent-b agent-b /ns/demo/sa/agent-b "${AGENT_B_SVID_TTL:-}"
register demo-mcp-server mcp-server /ns/demo/sa/mcp-server "${MCP_SERVER_SVID_TTL:-}" localhost

#!/usr/bin/env bash
# Starts a local SPIRE server and agent (trust domain example.org unless
# SPIRE_TRUST_DOMAIN says otherwise) with all state under RUN_DIR, for the demo
# and the end-to-end tests. Several instances can run side by side, each in
# its own RUN_DIR (own sockets, own free port): e.g. a second trust domain
# for federation tests.
#
#   spire/start.sh RUN_DIR          start server + agent, wait until healthy
#   spire/start.sh --stop RUN_DIR   stop the agent and server started there
#
# RUN_DIR afterwards holds:
#   server.conf agent.conf            rendered from spire/*.conf.tmpl
#   server/ agent/                    data dirs (sqlite datastore, keys)
#   server.sock                       SPIRE server API socket
#   agent.sock                        Workload API socket
#   upstream-ca.pem upstream-ca.key   test root CA (UpstreamAuthority "disk");
#                                     it is the trust bundle workloads get
#   logs/server.log logs/agent.log    process output
#   server.pid agent.pid              process ids
#   spire.env                         KEY='value' lines for scripts/tests
#
# Environment (all optional):
#   SPIRE_BIN_DIR        directory with spire-server and spire-agent
#                        (default: built/cached by spire/build.sh)
#   SPIRE_START_TIMEOUT  seconds to wait for each process (default 60)
#   SPIRE_LOG_LEVEL      DEBUG|INFO|WARN|ERROR (default INFO)
#   SPIRE_SERVER_PORT    server port on 127.0.0.1 (default: a free port)
#   SPIRE_TRUST_DOMAIN   trust domain of this instance (default example.org)
set -euo pipefail

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
trust_domain=${SPIRE_TRUST_DOMAIN:-example.org}

die() {
  echo "spire/start.sh: $*" >&2
  exit 1
}

usage() {
  echo "usage: spire/start.sh RUN_DIR | spire/start.sh --stop RUN_DIR" >&2
  exit 2
}

# True while pid runs a process (a zombie counts as gone).
alive() {
  local pid=$1 state
  kill -0 "$pid" 2>/dev/null || return 1
  if [[ -r /proc/$pid/stat ]]; then
    state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null || true)
    [[ $state != Z && -n $state ]] || return 1
  fi
  return 0
}

# True if pid is alive and runs the given spire binary (guards against pid reuse).
is_spire() {
  local pid=$1 name=$2
  alive "$pid" || return 1
  if [[ -r /proc/$pid/cmdline ]]; then
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$name" || return 1
  fi
  return 0
}

# stop_one RUN_DIR NAME: TERM, wait up to 10s, then KILL.
stop_one() {
  local run_dir=$1 name=$2 pidfile pid i
  pidfile="$run_dir/$name.pid"
  [[ -f $pidfile ]] || return 0
  pid=$(<"$pidfile")
  if [[ $pid =~ ^[0-9]+$ ]] && is_spire "$pid" "spire-$name"; then
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
      alive "$pid" || break
      sleep 0.1
    done
    if alive "$pid"; then
      echo "spire/start.sh: spire-$name ($pid) ignored SIGTERM, killing" >&2
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$pidfile"
}

stop_all() {
  stop_one "$1" agent
  stop_one "$1" server
}

log_tail() {
  local file=$1
  echo "----- last lines of $file -----" >&2
  tail -n 25 "$file" >&2 2>/dev/null || echo "(no log)" >&2
  echo "-----" >&2
}

# wait_healthy NAME PID LOG CMD...: polls CMD until it succeeds (status 0),
# the process exits (status 1), or the deadline passes (fails the script).
wait_healthy() {
  local name=$1 pid=$2 log=$3
  shift 3
  local deadline=$((SECONDS + timeout))
  while ! "$@" >/dev/null 2>&1; do
    alive "$pid" || return 1
    if ((SECONDS >= deadline)); then
      log_tail "$log"
      die "$name not healthy after ${timeout}s (see $log)"
    fi
    sleep 0.2
  done
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# render TEMPLATE OUT: replaces the @...@ placeholders.
render() {
  local tpl
  tpl=$(<"$1")
  tpl=${tpl//@RUN_DIR@/"$run_dir"}
  tpl=${tpl//@SERVER_PORT@/"$port"}
  tpl=${tpl//@TRUST_DOMAIN@/"$trust_domain"}
  tpl=${tpl//@LOG_LEVEL@/"$log_level"}
  printf '%s\n' "$tpl" >"$2"
}

make_upstream_ca() {
  local cert="$run_dir/upstream-ca.pem" key="$run_dir/upstream-ca.key"
  # Reuse an existing root while it is valid for at least another day.
  if [[ -f $cert && -f $key ]] && openssl x509 -in "$cert" -noout -checkend 86400 >/dev/null 2>&1; then
    return 0
  fi
  (umask 077 && openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$key" 2>/dev/null) ||
    die "openssl could not generate the upstream CA key"
  openssl req -x509 -new -key "$key" -sha256 -days 30 \
    -subj "/O=spiffe-mcp-gateway test/CN=$trust_domain upstream test root" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -addext "subjectKeyIdentifier=hash" \
    -out "$cert" 2>/dev/null || die "openssl could not generate the upstream CA certificate"
}

[[ $# -ge 1 ]] || usage
if [[ $1 == --stop ]]; then
  [[ $# -eq 2 ]] || usage
  [[ -d $2 ]] || exit 0
  stop_all "$(cd "$2" && pwd)"
  exit 0
fi
[[ $# -eq 1 ]] || usage

mkdir -p "$1"
run_dir=$(cd "$1" && pwd)
case $run_dir in
  *[\"\'\\]* | *$'\n'*) die "RUN_DIR must not contain quotes, backslashes or newlines: $run_dir" ;;
esac
# Unix socket paths are limited to 108 bytes on Linux (104 on macOS).
((${#run_dir} + 12 <= 100)) || die "RUN_DIR path too long for unix sockets (${#run_dir} chars): $run_dir"

# A SPIFFE trust domain name: lowercase letters, digits, '.', '-', '_'.
[[ $trust_domain =~ ^[a-z0-9._-]+$ ]] || die "SPIRE_TRUST_DOMAIN must match [a-z0-9._-]+, got '$trust_domain'"

timeout=${SPIRE_START_TIMEOUT:-60}
log_level=${SPIRE_LOG_LEVEL:-INFO}
command -v openssl >/dev/null || die "openssl not found"

for name in server agent; do
  if [[ -f $run_dir/$name.pid ]] && is_spire "$(<"$run_dir/$name.pid")" "spire-$name"; then
    die "spire-$name already running for $run_dir (pid $(<"$run_dir/$name.pid")); run: spire/start.sh --stop $run_dir"
  fi
done

if [[ -n ${SPIRE_BIN_DIR:-} ]]; then
  bin_dir=$SPIRE_BIN_DIR
else
  bin_dir=$("$script_dir/build.sh" | tail -n 1) || die "spire/build.sh failed"
fi
server_bin="$bin_dir/spire-server"
agent_bin="$bin_dir/spire-agent"
[[ -x $server_bin && -x $agent_bin ]] || die "spire-server/spire-agent not found in $bin_dir"

mkdir -p "$run_dir/server" "$run_dir/agent" "$run_dir/logs"
rm -f "$run_dir/server.sock" "$run_dir/agent.sock"
make_upstream_ca

# On any failure from here on, stop what this run started.
started=0
cleanup() {
  local rc=$?
  if ((rc != 0 && started)); then
    stop_all "$run_dir"
  fi
  exit "$rc"
}
trap cleanup EXIT
started=1

server_sock="$run_dir/server.sock"
server_log="$run_dir/logs/server.log"
# A free port is picked, released, then bound by the server: retry if another
# process grabbed it in between.
for attempt in 1 2 3; do
  port=${SPIRE_SERVER_PORT:-$(free_port)} || die "could not pick a free port (python3 needed, or set SPIRE_SERVER_PORT)"
  render "$script_dir/server.conf.tmpl" "$run_dir/server.conf"
  echo "=== spire-server start $(date -u +%FT%TZ) port $port" >>"$server_log"
  "$server_bin" run -config "$run_dir/server.conf" </dev/null >>"$server_log" 2>&1 &
  server_pid=$!
  echo "$server_pid" >"$run_dir/server.pid"
  if wait_healthy spire-server "$server_pid" "$server_log" \
    "$server_bin" healthcheck -socketPath "$server_sock"; then
    break
  fi
  if [[ -z ${SPIRE_SERVER_PORT:-} ]] && ((attempt < 3)) &&
    tail -n 5 "$server_log" | grep -q 'address already in use'; then
    continue
  fi
  log_tail "$server_log"
  die "spire-server exited during startup (see $server_log)"
done

token=$("$server_bin" token generate -socketPath "$server_sock" -ttl 600 | awk '/^Token:/ {print $2}')
[[ -n $token ]] || die "spire-server token generate returned no token"
agent_id="spiffe://$trust_domain/spire/agent/join_token/$token"
"$server_bin" bundle show -socketPath "$server_sock" >"$run_dir/agent/bootstrap-bundle.pem" ||
  die "spire-server bundle show failed"

agent_sock="$run_dir/agent.sock"
agent_log="$run_dir/logs/agent.log"
render "$script_dir/agent.conf.tmpl" "$run_dir/agent.conf"
echo "=== spire-agent start $(date -u +%FT%TZ)" >>"$agent_log"
"$agent_bin" run -config "$run_dir/agent.conf" -joinToken "$token" </dev/null >>"$agent_log" 2>&1 &
agent_pid=$!
echo "$agent_pid" >"$run_dir/agent.pid"
if ! wait_healthy spire-agent "$agent_pid" "$agent_log" \
  "$agent_bin" healthcheck -socketPath "$agent_sock"; then
  log_tail "$agent_log"
  die "spire-agent exited during startup (see $agent_log)"
fi

cat >"$run_dir/spire.env" <<EOF
SPIRE_BIN_DIR='$bin_dir'
SPIRE_TRUST_DOMAIN='$trust_domain'
SPIRE_SERVER_ADDRESS='127.0.0.1:$port'
SPIRE_SERVER_SOCKET='$server_sock'
SPIRE_AGENT_SOCKET='$agent_sock'
SPIRE_AGENT_ID='$agent_id'
SPIRE_UPSTREAM_CA_CERT='$run_dir/upstream-ca.pem'
SPIRE_UPSTREAM_CA_KEY='$run_dir/upstream-ca.key'
SPIRE_SERVER_PID='$server_pid'
SPIRE_AGENT_PID='$agent_pid'
EOF

started=0
echo "SPIRE ready: trust domain $trust_domain, server 127.0.0.1:$port (pid $server_pid), agent pid $agent_pid"
echo "  agent ID:          $agent_id"
echo "  Workload API:      SPIFFE_ENDPOINT_SOCKET=unix://$agent_sock"
echo "  register demo:     spire/register.sh $run_dir"
echo "  stop:              spire/start.sh --stop $run_dir"

#!/usr/bin/env bash
# Builds Jaeger (v2: the OpenTelemetry-collector-based `jaeger` binary) from
# the Go module pinned in tests/e2e/jaeger/tools/go.mod into
# .cache/jaeger/bin (ignored), and reuses it while go.mod/go.sum are
# unchanged. Prints the binary's path. The traces end-to-end test sends the
# gateway's spans to it over OTLP and reads them back from its query API.
set -euo pipefail
root=$(cd "$(dirname "$0")/../../.." && pwd)
tools="$root/tests/e2e/jaeger/tools"
out="$root/.cache/jaeger/bin"
stamp="$out/.stamp"
want=$(cat "$tools/go.mod" "$tools/go.sum" | sha256sum | cut -d' ' -f1)
if [[ -x "$out/jaeger" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  echo "$out/jaeger"
  exit 0
fi
mkdir -p "$out"
cd "$tools"
export GOFLAGS=-mod=mod CGO_ENABLED=0
go build -trimpath -ldflags "-s -w" -o "$out/jaeger" github.com/jaegertracing/jaeger/cmd/jaeger >&2
echo "$want" > "$stamp"
echo "$out/jaeger"

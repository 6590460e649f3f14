#!/usr/bin/env bash
# Builds helm from the Go module pinned in helm/tools/go.mod into
# .cache/helm/bin (ignored), and reuses it while go.mod/go.sum are unchanged.
# Prints the binary's path.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
tools="$root/helm/tools"
out="$root/.cache/helm/bin"
stamp="$out/.stamp"
want=$(cat "$tools/go.mod" "$tools/go.sum" | sha256sum | cut -d' ' -f1)
if [[ -x "$out/helm" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  echo "$out/helm"
  exit 0
fi
mkdir -p "$out"
cd "$tools"
export GOFLAGS=-mod=mod CGO_ENABLED=0
# The same version stamps helm's own Makefile sets: `helm version` names the
# pinned release, and the default Kubernetes version of `helm template` and
# `helm lint` is the one of the client-go helm was built with.
helm_version=$(go list -m -f '{{.Version}}' helm.sh/helm/v3)
k8s=$(go list -m -f '{{.Version}}' k8s.io/client-go) # v0.MINOR.PATCH -> Kubernetes 1.MINOR
k8s_minor=$(cut -d. -f2 <<<"$k8s")
ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$helm_version -X helm.sh/helm/v3/internal/version.metadata="
for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
  ldflags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$k8s_minor"
done
go build -trimpath -ldflags "$ldflags" -o "$out/helm" helm.sh/helm/v3/cmd/helm >&2
echo "$want" > "$stamp"
echo "$out/helm"

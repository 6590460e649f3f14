#!/usr/bin/env bash
# Builds the spiffe-mcp-gateway container image without a container engine:
# the same final image the Dockerfile describes (the release binary, the glibc
# and libgcc it links against from Debian 12's own packages, a nonroot passwd
# entry; no shell, no package manager), assembled as one reproducible layer
# and written by crane (go-containerregistry, pinned in image/tools/go.mod)
# through a registry it serves on loopback for the length of the build.
#
#   image/build.sh [--binary PATH] [--out FILE]
#
# Output: a tarball `docker load`, `podman load`, `kind load image-archive`
# and `crane push` take (default target/image/spiffe-mcp-gateway.tar), tagged
# spiffe-mcp-gateway:<version>; the last line printed is its path. The
# compressed and uncompressed sizes are printed on stderr.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

binary=""
out="$root/target/image/spiffe-mcp-gateway.tar"
while (($#)); do
  case $1 in
    --binary) binary=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    *) echo "image/build.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

# crane, built once from the pinned module and reused while go.mod/go.sum
# are unchanged.
tools="$root/image/tools"
bin="$root/.cache/image/bin"
stamp="$bin/.stamp"
want=$(cat "$tools/go.mod" "$tools/go.sum" | sha256sum | cut -d' ' -f1)
if [[ ! -x $bin/crane || ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
  mkdir -p "$bin"
  (cd "$tools" && CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -ldflags "-s -w" \
    -o "$bin/crane" github.com/google/go-containerregistry/cmd/crane) >&2
  echo "$want" > "$stamp"
fi
# crane's progress lines go to a log, shown only when a step fails.
crane() {
  "$bin/crane" "$@" 2>>"$work/crane.log" || { cat "$work/crane.log" >&2; return 1; }
}

if [[ -z $binary ]]; then
  cargo build --release --locked --quiet --bin spiffe-mcp-gateway >&2
  binary="$root/target/release/spiffe-mcp-gateway"
fi
version=$(grep -m1 '^version' Cargo.toml | cut -d'"' -f2)

work=$(mktemp -d)
registry_pid=""
cleanup() {
  [[ -n $registry_pid ]] && kill "$registry_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# ---- the root filesystem ---------------------------------------------------
rootfs="$work/rootfs"
mkdir -p "$rootfs"/{etc,tmp,usr/local/bin,usr/lib/x86_64-linux-gnu,home/nonroot}
chmod 1777 "$rootfs/tmp"
install -m 0755 "$binary" "$rootfs/usr/local/bin/spiffe-mcp-gateway"
# Debian 12 is merged-/usr: /lib is /usr/lib, and the loader's ABI path is
# /lib64/ld-linux-x86-64.so.2.
ln -s usr/lib "$rootfs/lib"
ln -s usr/lib64 "$rootfs/lib64"
mkdir -p "$rootfs/usr/lib64"
# Every shared object the binary needs, from the Debian package that owns it
# (with that package's copyright file, as distroless ships them).
libs=$(ldd "$binary" | awk '/=>/ { print $3; next } $1 ~ /^\// { print $1 }' | sort -u)
for lib in $libs; do
  real=$(readlink -f "$lib")
  name=$(basename "$lib")
  install -m 0644 "$real" "$rootfs/usr/lib/x86_64-linux-gnu/$name"
  # dpkg knows a file by the path its package installed it at, which on a
  # merged-/usr system may be the /lib one.
  pkg=""
  for candidate in "$real" "${real#/usr}" "$lib"; do
    pkg=$(dpkg -S "$candidate" 2>/dev/null | head -1 | cut -d: -f1) || true
    [[ -n $pkg ]] && break
  done
  [[ -n $pkg ]] || { echo "image/build.sh: no Debian package owns $real" >&2; exit 1; }
  copyright="/usr/share/doc/$pkg/copyright"
  if [[ -f $copyright ]]; then
    install -D -m 0644 "$copyright" "$rootfs$copyright"
  fi
  echo "image: $name from Debian package $pkg $(dpkg-query -W -f '${Version}' "$pkg")" >&2
done
chmod 0755 "$rootfs/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
ln -s ../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 "$rootfs/usr/lib64/ld-linux-x86-64.so.2"
cat > "$rootfs/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
EOF
cat > "$rootfs/etc/group" <<'EOF'
root:x:0:
nonroot:x:65532:
EOF
# Names resolve from /etc/hosts, then DNS (the runtime mounts /etc/hosts and
# /etc/resolv.conf into the container), as distroless configures glibc.
echo "hosts: files dns" > "$rootfs/etc/nsswitch.conf"
chmod 0644 "$rootfs/etc/passwd" "$rootfs/etc/group" "$rootfs/etc/nsswitch.conf"
chmod 0700 "$rootfs/home/nonroot"

# One layer, byte-for-byte reproducible: sorted names, fixed times (the last
# commit's, as SOURCE_DATE_EPOCH conventionally is), owned by root except the
# nonroot home, as in distroless.
epoch=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}
python3 - "$rootfs" "$work/layer.tar" "$epoch" <<'EOF'
import os, sys, tarfile
rootfs, out, epoch = sys.argv[1], sys.argv[2], int(sys.argv[3])
paths = []
for dirpath, dirnames, filenames in os.walk(rootfs):
    dirnames.sort()
    for name in dirnames + filenames:
        paths.append(os.path.join(dirpath, name))
with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as t:
    for path in sorted(paths, key=lambda p: os.path.relpath(p, rootfs)):
        rel = os.path.relpath(path, rootfs)
        info = t.gettarinfo(path, arcname=rel)
        info.mtime = epoch
        info.uid = info.gid = 65532 if rel == "home/nonroot" else 0
        info.uname = info.gname = ""
        if info.isfile():
            with open(path, "rb") as f:
                t.addfile(info, f)
        else:
            t.addfile(info)
EOF

# ---- the image ---------------------------------------------------------------
"$bin/crane" registry serve --address 127.0.0.1:0 > "$work/registry.log" 2>&1 &
registry_pid=$!
for _ in $(seq 100); do
  port=$(sed -n 's/.*serving on port \([0-9]*\).*/\1/p' "$work/registry.log")
  [[ -n $port ]] && break
  kill -0 "$registry_pid" 2>/dev/null || { cat "$work/registry.log" >&2; exit 1; }
  sleep 0.1
done
[[ -n $port ]] || { echo "image/build.sh: crane registry did not start" >&2; exit 1; }
ref="127.0.0.1:$port/spiffe-mcp-gateway:$version"
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
crane append --oci-empty-base --platform linux/amd64 -f "$work/layer.tar" -t "$ref" >/dev/null
crane mutate "$ref" --set-platform linux/amd64 \
  --user 65532:65532 \
  --workdir / \
  --entrypoint /usr/local/bin/spiffe-mcp-gateway \
  --cmd --help \
  --exposed-ports 8443/tcp,9090/tcp \
  -l org.opencontainers.image.title=spiffe-mcp-gateway \
  -l org.opencontainers.image.version="$version" \
  -l org.opencontainers.image.revision="$revision" \
  -l org.opencontainers.image.licenses=Apache-2.0 \
  -t "$ref" >/dev/null
mkdir -p "$(dirname "$out")"
crane pull --platform linux/amd64 "$ref" "$out.tmp"
# The tarball names the image spiffe-mcp-gateway:<version>, as the chart's
# default `image.repository`/`tag` do, not the throwaway registry's address.
python3 - "$out.tmp" "spiffe-mcp-gateway:$version" <<'EOF'
import io, json, sys, tarfile
path, tag = sys.argv[1], sys.argv[2]
with tarfile.open(path) as t:
    members = [(m, t.extractfile(m).read()) for m in t.getmembers()]
with tarfile.open(path, "w") as t:
    for m, data in members:
        if m.name == "manifest.json":
            manifest = json.loads(data)
            for entry in manifest:
                entry["RepoTags"] = [tag]
            data = json.dumps(manifest).encode()
            m.size = len(data)
        t.addfile(m, io.BytesIO(data))
EOF
mv "$out.tmp" "$out"
compressed=$(crane manifest "$ref" | python3 -c 'import json,sys; m=json.load(sys.stdin); print(sum(l["size"] for l in m["layers"]) + m["config"]["size"])')
uncompressed=$(stat -c %s "$work/layer.tar")
echo "image: spiffe-mcp-gateway:$version, $(numfmt --to=iec-i --suffix=B "$compressed") compressed (layers + config), $(numfmt --to=iec-i --suffix=B "$uncompressed") unpacked" >&2
echo "$out"

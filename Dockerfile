# syntax=docker/dockerfile:1
# The spiffe-mcp-gateway image: `docker build -t spiffe-mcp-gateway:0.1.0 .`
# (the Helm chart's default image is spiffe-mcp-gateway:<appVersion>).
#
# Final stage: distroless "cc" (glibc, libgcc, CA certificates, a passwd entry
# for nonroot; no shell, no package manager). Not a static musl build on
# scratch: musl's allocator serialises allocation across threads, and the
# gateway is a multi-threaded proxy that allocates per request; glibc's malloc
# keeps the per-request cost the performance budget counts on. The builder is
# Debian 12 (bookworm) like the final stage, so the binary links against the
# glibc it runs with. Pin both images by digest for a release build.
#
# Without a container engine, image/build.sh assembles the same final image
# (the release binary, the glibc and libgcc it links from Debian 12's
# packages, a nonroot passwd entry; only what the binary needs, so smaller
# than distroless cc) and tests/e2e/test_image_e2e.py runs the gateway in it.

FROM rust:1.95-bookworm AS build
WORKDIR /src
# Only what the build reads (.dockerignore keeps the rest out). benches/ is
# there because Cargo.toml declares a bench target.
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
# The registry and target caches survive between builds (BuildKit); the
# binary is copied out of the cache mount.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin spiffe-mcp-gateway \
 && install -D -m 0755 target/release/spiffe-mcp-gateway /out/spiffe-mcp-gateway

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/spiffe-mcp-gateway /usr/local/bin/spiffe-mcp-gateway
# nonroot (65532:65532), numeric so `runAsNonRoot` can verify it.
USER 65532:65532
# 8443: MCP over mTLS; 9090: admin (/metrics, /healthz, /readyz).
EXPOSE 8443 9090
ENTRYPOINT ["/usr/local/bin/spiffe-mcp-gateway"]
CMD ["--help"]

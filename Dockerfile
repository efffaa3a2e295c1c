# syntax=docker/dockerfile:1
# tidegate container image: the release binary alone on distroless, running as non-root 65532.
#
#   docker build -t tidegate:0.1.0 .
#   docker run --rm -p 8080:8080 -p 9090:9090 \
#     -v "$PWD/config:/etc/tidegate:ro" --tmpfs /var/lib/tidegate:uid=65532,gid=65532 \
#     tidegate:0.1.0 serve --config /etc/tidegate/demo.yaml --state-dir /var/lib/tidegate
# (the demo config listens on 127.0.0.1 only: copy it and set server.listen to 0.0.0.0:8080 to reach it from the host.)
# Kubernetes: helm/tidegate and docs/kubernetes.md.

FROM rust:1.95-bookworm AS builder
WORKDIR /src

# PGO=1 (the default): the profile-guided build of scripts/pgo-build (what it does and costs:
# the script's header and docs/kubernetes.md, "The image"). `--build-arg PGO=0`: the plain
# release build.
ARG PGO=1

# 1. Dependencies only, cached until Cargo.toml or Cargo.lock change: with PGO=0, build a stub
#    crate with the real manifest; with PGO=1, whose builds compile every crate with their own
#    flags, only download the crates and add rustup's llvm-tools (llvm-profdata). The stubs
#    also satisfy the manifest's declared bench and test targets.
#    (rust-toolchain.toml is not copied: the image's own toolchain builds it.)
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches tests/it \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && echo 'fn main() {}' > benches/overhead.rs \
    && echo 'fn main() {}' > benches/translate.rs \
    && echo 'fn main() {}' > benches/limits.rs \
    && touch tests/it/main.rs \
    && if [ "$PGO" = 1 ]; then \
         rustup component add llvm-tools && cargo fetch --locked; \
       else \
         cargo build --release --locked --bin tidegate; \
       fi \
    && rm -rf src

# 2. The real sources (config/ holds the demo config that src/demo.rs embeds). Touch them so
#    cargo rebuilds the crate over the stub, whatever mtimes the build context carried.
COPY src ./src
COPY config ./config
COPY benches ./benches
COPY scripts/pgo-build ./scripts/pgo-build
RUN find src benches -name '*.rs' -exec touch {} + \
    && if [ "$PGO" = 1 ]; then \
         scripts/pgo-build && install -D -m 0755 target/pgo/release/tidegate /out/tidegate; \
       else \
         cargo build --release --locked --bin tidegate \
         && install -D -m 0755 target/release/tidegate /out/tidegate; \
       fi

FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="tidegate" \
      org.opencontainers.image.description="Transparent LLM gateway (OpenAI/Anthropic-compatible HTTP proxy)" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /out/tidegate /usr/local/bin/tidegate
USER 65532:65532
# 8080: data plane (OpenAI/Anthropic API). 9090: admin plane (/healthz /readyz /metrics /admin/*).
EXPOSE 8080 9090
# No HEALTHCHECK: distroless has no shell or curl to run one, and Kubernetes ignores it (the
# chart probes /readyz and /healthz on port 9090). See docs/kubernetes.md, "The image".
ENTRYPOINT ["/usr/local/bin/tidegate"]
CMD ["serve", "--config", "/etc/tidegate/tidegate.yaml", "--state-dir", "/var/lib/tidegate"]

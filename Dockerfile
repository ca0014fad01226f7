# The kube-balancer image: the binary built in a Rust stage, then copied into a small Debian
# runtime where it runs as an unprivileged user. The Helm chart (charts/kube-balancer) runs it as
# `kube-balancer run ...` with runAsUser 65532 and a read-only root filesystem; it writes nothing
# to disk.
#
#   docker build -t REGISTRY/kube-balancer:0.1.0 .
#
# The Rust version is Cargo.toml's rust-version; builder and runtime share one Debian release,
# so the binary finds the glibc it was linked against.
ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=trixie

FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS build
WORKDIR /build
# The profile-guided build (scripts/build-release.sh) trains on loopback with h2load and the
# training mix of tools/loadgen; it needs rustup's llvm-tools for llvm-profdata.
# `--build-arg PGO=0` builds without it.
ARG PGO=1
RUN if [ "$PGO" != 0 ]; then \
      apt-get update -qq && apt-get install -y -qq --no-install-recommends nghttp2-client \
      && rm -rf /var/lib/apt/lists/* && rustup component add llvm-tools; \
    fi
# Only what the binary is built from (see .dockerignore); examples/ holds the embedded
# standalone configuration.
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY examples ./examples
COPY scripts/build-release.sh ./scripts/
COPY tools/loadgen ./tools/loadgen
RUN install -D -m 0755 "$(PGO=$PGO scripts/build-release.sh)" /out/kube-balancer

FROM debian:${DEBIAN_RELEASE}-slim
# The system's CA certificates: https:// members of clusters that name no CA are verified
# against them (docs/tls.md).
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/kube-balancer /usr/local/bin/kube-balancer
# mimalloc gives freed memory back to the system at once instead of a second later, and only on
# later activity: after a burst of connections that then sit idle, the process keeps none of
# what the burst used (0.5 KiB per idle client connection instead of 0.7 to 1.4), at no measured
# cost in CPU (docs/benchmarks.md, issue 23). bench/run.sh runs kube-balancer with this line.
ENV MIMALLOC_PURGE_DELAY=0
# A numeric user that exists nowhere: no home, no shell, no privileges (the chart's runAsUser).
USER 65532:65532
# Traffic and the admin server (/healthz, /readyz, /metrics, /balancer-manager).
EXPOSE 8000 9901
ENTRYPOINT ["/usr/local/bin/kube-balancer"]
CMD ["--help"]

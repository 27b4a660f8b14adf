# syntax=docker/dockerfile:1
# The vitrina service image: `docker build -t vitrina:local .` (docs/deployment.md).

FROM rust:1-bookworm AS builder
WORKDIR /src
# The bundled SQLite's compile flags live here; without it the image would build a different
# SQLite than every other build of the service.
COPY .cargo .cargo
COPY Cargo.toml Cargo.lock ./
# Cargo parses the whole workspace even for `-p vitrina`: the manifest's [[test]] and [[bench]]
# targets and both member crates must be present for it to load.
COPY src src
COPY crates crates
COPY benches benches
COPY examples examples
COPY tests tests
# crates/cluster compiles these two files in (include_str!).
COPY deploy/prometheus deploy/prometheus
COPY deploy/alertmanager deploy/alertmanager
# The caches keep the registry and built dependencies between builds; the binary is copied out
# in the same step because a cache mount is not part of the resulting layer.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p vitrina \
    && install -D -m 0755 target/release/vitrina /out/vitrina

FROM debian:bookworm-slim
# Outbound webhooks and span export may go to HTTPS endpoints. Not version-pinned: bookworm's
# point releases replace old versions, so a pin would break the build, not make it repeatable.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
# A fixed numeric id: Kubernetes can only enforce runAsNonRoot against a numeric USER.
RUN groupadd --system --gid 10001 vitrina \
    && useradd --system --uid 10001 --gid vitrina --home-dir /var/lib/vitrina --no-create-home \
        --shell /usr/sbin/nologin vitrina \
    && install -d -o vitrina -g vitrina -m 0750 /var/lib/vitrina
COPY --from=builder /out/vitrina /usr/local/bin/vitrina

# With store = "postgres" the data dir holds only a generated admin token (none when
# VITRINA_ADMIN_TOKEN is set), so it is scratch space: no VOLUME, the orchestrator decides.
ENV VITRINA_LISTEN=0.0.0.0:8080 VITRINA_DATA_DIR=/var/lib/vitrina
WORKDIR /var/lib/vitrina
USER 10001:10001
EXPOSE 8080
# No HEALTHCHECK: the slim base has no HTTP client, and the callers that matter probe the
# service themselves (HAProxy and Kubernetes on /health/ready and /health/live; Kubernetes
# ignores an image HEALTHCHECK anyway).
# SIGTERM starts the drain: /health/ready answers 503 for shutdown_drain_secs, then in-flight
# requests get shutdown_grace_secs.
STOPSIGNAL SIGTERM
ENTRYPOINT ["vitrina"]
CMD ["serve"]

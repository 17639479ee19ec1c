# syntax=docker/dockerfile:1
# crmsync: one image for every role (`crmsync serve --role api|worker|all`).
#
#   docker build -t crmsync .
#
# Build stage: the release binary. sqlx's queries are checked at run time (no
# compile-time database), and SQLX_OFFLINE keeps any macro from looking for one.
FROM rust:1-bookworm AS build
WORKDIR /src
ENV SQLX_OFFLINE=true CARGO_TERM_COLOR=never
COPY . .
# No BuildKit cache mounts: Railway's builder refuses mounts without its own ids.
RUN cargo build --release --locked -p crmsync-engine --bin crmsync \
    && install -D -m 0755 target/release/crmsync /out/crmsync

# Runtime stage: glibc, CA certificates and nothing else; no shell, non-root.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/crmsync /usr/local/bin/crmsync
# The nonroot user of the distroless image (uid 65532).
USER 65532:65532
ENV PORT=8080 CRM_BIND=0.0.0.0 CRM_LOG_FORMAT=json
EXPOSE 8080
# /readyz checks Postgres (migrations applied) and NATS; `crmsync check` asks it
# over loopback, so the image needs no curl.
HEALTHCHECK --interval=10s --timeout=6s --start-period=30s --retries=3 \
    CMD ["crmsync", "check"]
# Let in-flight batches finish: give `docker stop` more than CRM_SHUTDOWN_TIMEOUT_SECS
# (docker stop --time 40, or stop_grace_period in compose).
STOPSIGNAL SIGTERM
CMD ["crmsync", "serve", "--role", "all"]

#!/usr/bin/env bash
# Runs the whole test suite against real NATS JetStream and Postgres, starting them
# first when they are not running (scripts/services.sh).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
command -v cargo >/dev/null || { echo "test: cargo is required (https://rustup.rs)" >&2; exit 1; }
services_env=$(scripts/services.sh)
eval "$services_env"
export RUST_BACKTRACE=${RUST_BACKTRACE:-0}
cargo run -q -p crmsync-testkit --bin testkit-clean
cargo test -q --workspace --doc
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@"
else
  echo "test: cargo-nextest not found; using cargo test (cargo install cargo-nextest for a faster run)" >&2
  cargo test --workspace --no-fail-fast "$@"
fi

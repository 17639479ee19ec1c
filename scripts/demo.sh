#!/usr/bin/env bash
# Quick start: starts (or reuses) NATS with JetStream and Postgres, builds crmsync,
# migrates, serves, sends a signed sample HubSpot webhook batch to the engine and
# prints the projected contacts; then keeps serving until Ctrl-C.
# Arguments go to `crmsync demo` (e.g. --exit).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
command -v cargo >/dev/null || { echo "demo: cargo is required (https://rustup.rs)" >&2; exit 1; }
services_env=$(scripts/services.sh)
eval "$services_env"
cargo build -q -p crmsync-engine --bin crmsync
exec target/debug/crmsync demo "$@"

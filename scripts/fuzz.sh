#!/usr/bin/env bash
# Fuzzes the webhook parsers, signature checks, subject escaping and CloudEvents
# decoding with cargo fuzz (libFuzzer; needs a nightly toolchain).
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# Each target runs SECONDS (default 20) starting from fuzz/corpus/<target>. New
# inputs go to a scratch directory unless FUZZ_KEEP=1, which writes them into the
# corpus to commit (minimise first: cargo +nightly fuzz cmin <target>). A crash
# leaves its input in fuzz/artifacts/<target>/ and fails the run; copy it into the
# corpus once fixed, and the stable suite (fuzzing/tests/corpus.rs) keeps checking it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
seconds=${1:-20}
shift || true
# libFuzzer takes 0 as "no limit": only a positive number of seconds.
if ! [[ "$seconds" =~ ^[1-9][0-9]*$ ]]; then
  echo "fuzz: SECONDS must be a positive whole number, not '$seconds'" >&2
  exit 2
fi
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(hubspot_webhook zoho_notification subject_token cloudevent_binary)
fi

toolchain=${FUZZ_TOOLCHAIN:-nightly}
if ! cargo "+$toolchain" --version >/dev/null 2>&1; then
  echo "fuzz: no $toolchain toolchain (rustup toolchain install $toolchain); cargo fuzz needs one" >&2
  exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked --quiet
fi

# Safe Rust (every crate forbids unsafe code): coverage-guided search without a
# sanitizer, which would only slow each run.
echo "fuzz: building the targets" >&2
cargo "+$toolchain" fuzz build --sanitizer none
log=$(mktemp)
for target in "${targets[@]}"; do
  corpus=fuzz/corpus/$target
  scratch=$(mktemp -d)
  dirs=("$scratch" "$corpus")
  [ "${FUZZ_KEEP:-0}" = 1 ] && dirs=("$corpus")
  echo "fuzz: $target for ${seconds}s from $(find "$corpus" -type f | wc -l) inputs" >&2
  status=0
  cargo "+$toolchain" fuzz run --sanitizer none "$target" "${dirs[@]}" -- \
    -max_total_time="$seconds" -max_len=65536 -timeout=10 -print_final_stats=1 >"$log" 2>&1 || status=$?
  rm -rf "$scratch"
  if [ "$status" -ne 0 ]; then
    grep -A6 "panicked at" "$log" >&2 || tail -n 40 "$log" >&2
    echo "fuzz: $target failed (exit $status); its input is in fuzz/artifacts/$target/" >&2
    exit 1
  fi
  grep -E "^stat::(number_of_executed_units|new_units_added)" "$log" | sed "s/^/fuzz:   /" >&2 || true
done
rm -f "$log"
echo "fuzz: ${#targets[@]} targets ran ${seconds}s each without a failure" >&2

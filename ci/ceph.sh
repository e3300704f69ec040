#!/usr/bin/env bash
# A throwaway single-node Ceph cluster (mon + mgr + 1 OSD on memstore + RADOS Gateway) for
# the S3 object-store tests (tests/s3/, tests/scaleout/).
#
#   bash ci/ceph.sh start   # prints one line: the S3 endpoint URL http://127.0.0.1:PORT
#   bash ci/ceph.sh stop    # stops the daemons and removes their files
#
#   export EBSCRYPT_TEST_S3_URL="$(bash ci/ceph.sh start)"
#
# The gateway has one S3 user whose keys are written to $state/credentials (an AWS shared
# credentials file, profile "default") and also printed to stderr; the tests read them
# from EBSCRYPT_TEST_S3_CREDENTIALS (the file) or use the fixed test keys below.
# start installs the Debian packages when missing, and never fails: when Ceph cannot be
# had it prints `unavailable: <why>` instead of a URL and exits 0; the tests then skip
# with that reason. Loopback only; every port is a free one (mon, gateway, and a range of
# 20 for the OSD/mgr messengers). The state directory (EBSCRYPT_CEPH_DIR, default one per
# checkout under /tmp) pairs a stop with its start. memstore: data lives in the OSD's
# memory (lost when it stops), which is what a test cluster wants (fast, no 4 GiB file).
set -uo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
state="${EBSCRYPT_CEPH_DIR:-/tmp/ebscrypt-ceph-$(printf '%s' "$here" | md5sum | cut -c1-10)}"
ACCESS_KEY=EBSCRYPTTEST
SECRET_KEY=ebscrypttestsecret
TIMEOUT="${EBSCRYPT_CEPH_TIMEOUT:-120}"   # seconds each stage may take

say() { echo "ci/ceph.sh: $*" >&2; }

unavailable() {
    say "Ceph unavailable: $*"
    stop_daemons
    echo "unavailable: $*"
    exit 0
}

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; else sudo -n "$@"; fi
}

have_ceph() {
    command -v ceph-mon >/dev/null && command -v ceph-osd >/dev/null && command -v ceph-mgr >/dev/null &&
        command -v radosgw >/dev/null && command -v radosgw-admin >/dev/null && command -v uuidgen >/dev/null
}

install_ceph() {
    say "installing Ceph from Debian"
    export DEBIAN_FRONTEND=noninteractive
    as_root apt-get update -qq >/dev/null 2>&1 || say "apt-get update failed (trying the install anyway)"
    as_root apt-get install -y -qq --no-install-recommends \
        ceph-mon ceph-osd ceph-mgr radosgw ceph-common uuid-runtime >/dev/null 2>&1
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# A base port with 20 free ports after it (the messengers' ms_bind_port range).
free_range() {
    python3 - <<'PY'
import random, socket
for _ in range(200):
    base = random.randrange(20000, 60000)
    socks = []
    try:
        for p in range(base, base + 20):
            s = socket.socket(); s.bind(("127.0.0.1", p)); socks.append(s)
    except OSError:
        continue
    finally:
        for s in socks:
            s.close()
    print(base)
    break
PY
}

# wait_for SECONDS CMD...: until CMD succeeds; non-zero on time-out
wait_for() {
    local limit=$1; shift
    local end=$((SECONDS + limit))
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $end ] || return 1
        sleep 0.2
    done
}

http_up() {
    python3 -c "import urllib.request, sys
try:
    urllib.request.urlopen(sys.argv[1], timeout=2)
except urllib.error.HTTPError:
    pass" "$1"
}

start() {
    if [ -f "$state/url" ] && [ -f "$state/run/client.rgw.gw.pid" ] && kill -0 "$(cat "$state/run/client.rgw.gw.pid")" 2>/dev/null; then
        cat "$state/url"  # already running for this checkout
        return 0
    fi
    if ! have_ceph; then
        install_ceph || unavailable "apt-get install of the Ceph packages failed (no root/sudo, or Debian unreachable)"
        have_ceph || unavailable "ceph-mon/ceph-osd/ceph-mgr/radosgw/uuidgen missing after installing them"
    fi
    stop  # a cluster left behind by a killed run
    local t0=$SECONDS D=$state
    mkdir -p "$D"/{run,log,mon,osd,mgr,rgw} || unavailable "cannot create $D"
    chmod 700 "$D"
    local mon1 mon2 rgw base fsid
    mon1="$(free_port)" && mon2="$(free_port)" && rgw="$(free_port)" && base="$(free_range)" ||
        unavailable "no free loopback ports"
    [ -n "$base" ] || unavailable "no free range of 20 loopback ports"
    fsid="$(uuidgen)"
    cat >"$D/ceph.conf" <<CONF
[global]
fsid = $fsid
mon_host = [v2:127.0.0.1:$mon1,v1:127.0.0.1:$mon2]
public_network = 127.0.0.0/8
ms_bind_port_min = $base
ms_bind_port_max = $((base + 19))
auth_cluster_required = cephx
auth_service_required = cephx
auth_client_required = cephx
keyring = $D/keyring
run_dir = $D/run
admin_socket = $D/run/\$name.asok
pid_file = $D/run/\$name.pid
log_file = $D/log/\$name.log
mon_data = $D/mon/\$cluster-\$id
osd_data = $D/osd/\$cluster-\$id
mgr_data = $D/mgr/\$cluster-\$id
rgw_data = $D/rgw/\$cluster-\$id
osd_pool_default_size = 1
osd_pool_default_min_size = 1
osd_pool_default_pg_num = 8
osd_pool_default_pgp_num = 8
osd_crush_chooseleaf_type = 0
mon_allow_pool_size_one = true
mon_warn_on_pool_no_redundancy = false
mon_max_pg_per_osd = 1000
mgr_initial_modules = iostat
osd_objectstore = memstore
memstore_device_bytes = 4294967296
osd_memory_target = 1073741824
debug_ms = 0
[client.rgw.gw]
rgw_frontends = beast endpoint=127.0.0.1:$rgw
rgw_dns_name = 127.0.0.1
CONF
    local C="ceph -c $D/ceph.conf --connect-timeout 10"
    {
        ceph-authtool --create-keyring "$D/keyring" --gen-key -n mon. --cap mon 'allow *' &&
        ceph-authtool "$D/keyring" --gen-key -n client.admin --cap mon 'allow *' --cap osd 'allow *' --cap mgr 'allow *' --cap mds 'allow *' &&
        ceph-authtool "$D/keyring" --gen-key -n mgr.x --cap mon 'allow profile mgr' --cap osd 'allow *' --cap mds 'allow *' &&
        ceph-authtool "$D/keyring" --gen-key -n osd.0 --cap mon 'allow profile osd' --cap mgr 'allow profile osd' --cap osd 'allow *' &&
        ceph-authtool "$D/keyring" --gen-key -n client.rgw.gw --cap mon 'allow rw' --cap osd 'allow rwx' --cap mgr 'allow rw' &&
        monmaptool --create --addv a "[v2:127.0.0.1:$mon1,v1:127.0.0.1:$mon2]" --fsid "$fsid" "$D/monmap"
    } >"$D/log/setup.log" 2>&1 || unavailable "keyring/monmap setup failed: $(tail -n 1 "$D/log/setup.log")"
    ceph-mon -c "$D/ceph.conf" --mkfs -i a --monmap "$D/monmap" --keyring "$D/keyring" >>"$D/log/setup.log" 2>&1 &&
        ceph-mon -c "$D/ceph.conf" -i a >>"$D/log/setup.log" 2>&1 || unavailable "ceph-mon did not start: $(tail -n 1 "$D/log/setup.log")"
    wait_for "$TIMEOUT" $C mon stat || unavailable "the monitor did not answer within ${TIMEOUT}s"
    mkdir -p "$D/mgr/ceph-x"
    ceph-mgr -c "$D/ceph.conf" -i x >>"$D/log/setup.log" 2>&1 || say "ceph-mgr did not start (going on without it)"
    local osd_uuid id
    osd_uuid="$(uuidgen)"
    id="$($C osd new "$osd_uuid" 2>>"$D/log/setup.log")" || unavailable "ceph osd new failed"
    mkdir -p "$D/osd/ceph-$id"
    ceph-osd -c "$D/ceph.conf" -i "$id" --mkfs --osd-uuid "$osd_uuid" >>"$D/log/setup.log" 2>&1 &&
        ceph-osd -c "$D/ceph.conf" -i "$id" >>"$D/log/setup.log" 2>&1 || unavailable "ceph-osd did not start: $(tail -n 1 "$D/log/setup.log")"
    osd_up() { $C osd stat 2>/dev/null | grep -q "1 up"; }
    wait_for "$TIMEOUT" osd_up || unavailable "the OSD did not come up within ${TIMEOUT}s"
    mkdir -p "$D/rgw/ceph-rgw.gw"
    radosgw -c "$D/ceph.conf" -n client.rgw.gw >>"$D/log/setup.log" 2>&1 || unavailable "radosgw did not start"
    wait_for "$TIMEOUT" http_up "http://127.0.0.1:$rgw/" || unavailable "the gateway did not answer within ${TIMEOUT}s"
    radosgw-admin -c "$D/ceph.conf" user create --uid=ebscrypt --display-name=ebscrypt \
        --access-key="$ACCESS_KEY" --secret-key="$SECRET_KEY" >>"$D/log/setup.log" 2>&1 ||
        unavailable "radosgw-admin user create failed: $(tail -n 1 "$D/log/setup.log")"
    printf '[default]\naws_access_key_id = %s\naws_secret_access_key = %s\n' "$ACCESS_KEY" "$SECRET_KEY" >"$D/credentials"
    chmod 600 "$D/credentials"
    echo "http://127.0.0.1:$rgw" >"$D/url"
    say "Ceph RGW on http://127.0.0.1:$rgw (ready in $((SECONDS - t0))s; credentials in $D/credentials; data in $D)"
    cat "$D/url"
}

# Stop by pid files, in reverse order of start (SIGKILL after 10 s).
stop_daemons() {
    local n f pid i
    for n in client.rgw.gw osd.0 mgr.x mon.a; do
        f="$state/run/$n.pid"
        [ -f "$f" ] || continue
        pid="$(cat "$f")"
        kill "$pid" 2>/dev/null || continue
        for i in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && { say "$n ($pid) still alive, SIGKILL"; kill -9 "$pid" 2>/dev/null; }
    done
}

stop() {
    [ -d "$state" ] || return 0
    stop_daemons
    rm -rf "$state"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# Install the real NBD clients tests/integration/test_nbd_*.py drive against `ebscrypt serve`'s
# NBD server (attached volumes), from Debian:
#   - qemu-utils   qemu-img, qemu-io
#   - libnbd-bin   nbdinfo, nbdcopy
#   - e2fsprogs    mkfs.ext4, e2fsck (a filesystem round trip through snapshots)
#   - nbdkit       the file plugin, only as the protocol ceiling in bench/bench_nbd.py
# Idempotent: nothing is installed when every command is there already. Never fails the CI
# (exit 0 always): a missing client makes its tests skip with the reason.
# Options (environment): EBSCRYPT_SKIP_NBD_TOOLS=1 installs nothing.
cd "$(dirname "$0")/.." || exit 0
say() { printf 'install-nbd: %s\n' "$*"; }
[ "${EBSCRYPT_SKIP_NBD_TOOLS:-}" = 1 ] && { say "skipped (EBSCRYPT_SKIP_NBD_TOOLS=1)"; exit 0; }
missing=""
for pair in qemu-img:qemu-utils qemu-io:qemu-utils nbdinfo:libnbd-bin nbdcopy:libnbd-bin \
            mkfs.ext4:e2fsprogs e2fsck:e2fsprogs nbdkit:nbdkit; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || PATH=$PATH:/sbin:/usr/sbin command -v "${pair%%:*}" >/dev/null 2>&1 \
        || case " $missing " in *" ${pair#*:} "*) ;; *) missing="$missing ${pair#*:}";; esac
done
if [ -z "$missing" ]; then say "qemu-utils, libnbd-bin, e2fsprogs, nbdkit already installed"; exit 0; fi
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo -n"
say "installing:$missing"
export DEBIAN_FRONTEND=noninteractive
timeout 600 $SUDO apt-get update -qq >/dev/null 2>&1 || say "apt-get update failed (continuing)"
# shellcheck disable=SC2086
timeout 900 $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null 2>&1 \
    || say "apt-get install failed:$missing — their tests will skip"
exit 0

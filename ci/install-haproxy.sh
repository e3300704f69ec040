#!/usr/bin/env bash
# HAProxy (Debian) for tests/scaleout/: the load balancer in front of three `ebscrypt serve`
# processes. Idempotent; never fails the CI (exit 0 always): without it those tests skip
# with the reason. Options (environment): EBSCRYPT_SKIP_HAPROXY=1 installs nothing.
say() { printf 'install-haproxy: %s\n' "$*"; }
[ "${EBSCRYPT_SKIP_HAPROXY:-}" = 1 ] && { say "skipped (EBSCRYPT_SKIP_HAPROXY=1)"; exit 0; }
if command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ]; then
    say "haproxy already installed"; exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    say "no apt-get: haproxy not installed, tests/scaleout will skip"; exit 0
fi
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo -n"
export DEBIAN_FRONTEND=noninteractive
say "installing haproxy (apt-get)"
timeout 600 $SUDO apt-get install -y -qq --no-install-recommends haproxy >/dev/null 2>&1 || {
    timeout 600 $SUDO apt-get update -qq >/dev/null 2>&1
    timeout 600 $SUDO apt-get install -y -qq --no-install-recommends haproxy >/dev/null 2>&1 \
        || say "apt-get install haproxy failed: tests/scaleout will skip"
}
exit 0

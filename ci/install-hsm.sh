#!/usr/bin/env bash
# SoftHSM2 (a software PKCS#11 token) and OpenSC's pkcs11-tool for the PKCS#11 key-store
# tests (tests/unit/test_kms_keystore.py, tests/integration/test_keystore_pkcs11*.py).
# The Python binding (python-pkcs11) comes with the project's `test` extra (pyproject.toml).
#
# Tokens are not made here: each test initializes its own token in a temp dir (its own
# softhsm2.conf, named by SOFTHSM2_CONF), so nothing is shared between tests or runs.
#
# Idempotent (nothing to do when libsofthsm2.so and pkcs11-tool are there). Never fails the
# CI: if apt-get cannot install them, the tests skip with the reason. Exit code is always 0.
# Options (environment): EBSCRYPT_SKIP_HSM=1 installs nothing.
say() { printf 'install-hsm: %s\n' "$*"; }

if [ "${EBSCRYPT_SKIP_HSM:-}" = 1 ]; then
    say "EBSCRYPT_SKIP_HSM=1: nothing installed (the PKCS#11 tests will skip)"
    exit 0
fi
have_softhsm() {
    for p in /usr/lib/softhsm/libsofthsm2.so /usr/lib/*-linux-gnu/softhsm/libsofthsm2.so; do
        [ -e "$p" ] && return 0
    done
    return 1
}
if have_softhsm && command -v softhsm2-util >/dev/null && command -v pkcs11-tool >/dev/null; then
    say "softhsm2 and opensc already installed"
    exit 0
fi
SUDO=
if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null; then SUDO="sudo -n"; else
        say "not root and no sudo: softhsm2/opensc not installed (the PKCS#11 tests will skip)"; exit 0
    fi
fi
export DEBIAN_FRONTEND=noninteractive
if ! timeout 600 $SUDO apt-get install -y -q --no-install-recommends softhsm2 opensc >/dev/null 2>&1; then
    timeout 300 $SUDO apt-get update -q >/dev/null 2>&1
    timeout 600 $SUDO apt-get install -y -q --no-install-recommends softhsm2 opensc >/dev/null 2>&1 \
        || say "apt-get install softhsm2 opensc failed (the PKCS#11 tests will skip)"
fi
have_softhsm && say "softhsm2 $(softhsm2-util --version 2>/dev/null) installed"
exit 0

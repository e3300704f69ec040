#!/usr/bin/env bash
# Install what tests/console/ needs to drive the web console in a real browser:
#   - Chromium      Debian package `chromium` (apt-get), used headless at /usr/bin/chromium
#   - Playwright    PyPI package `playwright` (the Python driver only). `playwright install`
#                   (its browser download) is NOT used: the tests launch the system Chromium
#                   with executable_path=/usr/bin/chromium.
#   - Jinja2        a runtime dependency of the console (pyproject.toml), checked here too.
#
# Idempotent (a version check when present). Never fails the CI: anything missing makes
# the browser tests skip with the reason. Exit code is always 0.
# Options (environment): EBSCRYPT_SKIP_CONSOLE=1 installs nothing; EBSCRYPT_CONSOLE_TIMEOUT=secs
# bounds each registry step (default 600).
cd "$(dirname "$0")/.." || exit 0
PYTHON=${PYTHON:-python3}
STEP_TIMEOUT=${EBSCRYPT_CONSOLE_TIMEOUT:-600}
say() { printf 'install-console: %s\n' "$*"; }

if [ "${EBSCRYPT_SKIP_CONSOLE:-0}" = 1 ]; then
    say "EBSCRYPT_SKIP_CONSOLE=1: nothing installed"
    exit 0
fi

if command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ]; then
    say "chromium present: $(chromium --version 2>/dev/null | head -1)"
elif command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" = 0 ] || SUDO="sudo -n"
    say "installing chromium (apt-get)"
    timeout "$STEP_TIMEOUT" $SUDO apt-get update -qq >/dev/null 2>&1 || say "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive timeout "$STEP_TIMEOUT" $SUDO apt-get install -y -qq --no-install-recommends \
        chromium >/dev/null 2>&1 || say "apt-get install chromium failed: the browser tests will skip"
else
    say "no apt-get: chromium not installed, the browser tests will skip"
fi

for pkg in playwright jinja2; do
    if "$PYTHON" -c "import $pkg" >/dev/null 2>&1; then
        say "$pkg present"
    else
        say "installing $pkg (pip)"
        timeout "$STEP_TIMEOUT" "$PYTHON" -m pip install --quiet "$pkg" >/dev/null 2>&1 \
            || say "pip install $pkg failed: the tests that need it will skip"
    fi
done
exit 0

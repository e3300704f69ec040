#!/usr/bin/env bash
# Install the third-party tools that tests/integration/test_tools_*.py drive against ebscrypt:
#   - Packer 1.6.x           Debian package `packer` (apt-get), amazon-ebs builder built in
#   - Ansible 12.3.0         PyPI, in a venv made with --system-site-packages (so the modules
#                            use the boto3/botocore already installed); bundles amazon.aws and
#                            community.aws
#   - AWS SDK for JS v3      npm, pinned in tests/tools/js/package.json (+ package-lock.json),
#                            into tests/tools/js/node_modules
#   - AWS CLI                nothing to do: awscli comes with the project's test extras
#
# Idempotent and quick when everything is there already (a few version checks). Prints what
# it did. Never fails the CI: a registry that cannot be reached leaves that tool missing and
# its tests skip with the reason. Exit code is always 0.
#
# Where things go (the tests look in the same places):
#   EBSCRYPT_TOOLS_HOME (default ~/.cache/ebscrypt-tools)/ansible-<version>   the Ansible venv
#   tests/tools/js/node_modules                                               the npm packages
#
# Measured here (2 cores): a first install takes about 2.5 minutes (apt-get update + packer ~10 s,
# the Ansible wheel ~115 s with an empty pip cache or ~35 s with a warm one, npm ci ~15 s);
# with everything in place the script takes ~3 s.
#
# Options (environment): EBSCRYPT_SKIP_TOOLS=1 installs nothing; EBSCRYPT_TOOLS_TIMEOUT=secs
# bounds each registry step (default 600).
# No `set -e`/`set -u`: whatever goes wrong here must not fail the CI run (exit is always 0).
cd "$(dirname "$0")/.." || exit 0
ROOT=$PWD

ANSIBLE_VERSION=12.3.0
HOME=${HOME:-$(cd ~ 2>/dev/null && pwd || echo /tmp)}
TOOLS_HOME=${EBSCRYPT_TOOLS_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/ebscrypt-tools}
ANSIBLE_VENV=$TOOLS_HOME/ansible-$ANSIBLE_VERSION
JS_DIR=$ROOT/tests/tools/js
STEP_TIMEOUT=${EBSCRYPT_TOOLS_TIMEOUT:-600}
PYTHON=${PYTHON:-python3}

say() { printf 'install-tools: %s\n' "$*"; }
now() { date +%s; }
t0=$(now)

if [ "${EBSCRYPT_SKIP_TOOLS:-}" = 1 ]; then
    say "EBSCRYPT_SKIP_TOOLS=1: nothing installed (the tool tests will skip)"
    exit 0
fi

SUDO=
if [ "$(id -u)" != 0 ]; then SUDO="sudo -n"; fi

apt_updated=0
apt_update_once() {
    [ $apt_updated = 1 ] && return 0
    apt_updated=1
    DEBIAN_FRONTEND=noninteractive timeout "$STEP_TIMEOUT" $SUDO apt-get update -qq >/tmp/ebscrypt-apt-update.log 2>&1
}

# ---------------------------------------------------------------- Packer (Debian)
packer_ok() { command -v packer >/dev/null 2>&1 && packer version >/dev/null 2>&1; }
s=$(now)
if packer_ok; then
    say "packer: already installed ($(packer version | head -1))"
elif ! command -v apt-get >/dev/null 2>&1; then
    say "packer: NOT installed (no apt-get on this machine); test_tools_packer will skip"
else
    say "packer: installing the Debian package (apt-get install packer)..."
    if apt_update_once && DEBIAN_FRONTEND=noninteractive timeout "$STEP_TIMEOUT" \
            $SUDO apt-get install -y -qq --no-install-recommends packer >/tmp/ebscrypt-apt-packer.log 2>&1 \
            && packer_ok; then
        say "packer: installed $(packer version | head -1) in $(( $(now) - s ))s"
    else
        say "packer: NOT installed (apt-get failed, see /tmp/ebscrypt-apt-packer.log); test_tools_packer will skip"
        tail -3 /tmp/ebscrypt-apt-packer.log 2>/dev/null | sed 's/^/install-tools:   /'
    fi
fi

# ---------------------------------------------------------------- Node.js (Debian), for the JS SDK
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1; then
        s=$(now)
        say "node/npm: installing the Debian packages nodejs npm..."
        if apt_update_once && DEBIAN_FRONTEND=noninteractive timeout "$STEP_TIMEOUT" \
                $SUDO apt-get install -y -qq --no-install-recommends nodejs npm >/tmp/ebscrypt-apt-node.log 2>&1; then
            say "node/npm: installed node $(node --version 2>/dev/null) in $(( $(now) - s ))s"
        else
            say "node/npm: NOT installed (see /tmp/ebscrypt-apt-node.log)"
        fi
    fi
fi

# ---------------------------------------------------------------- Ansible (PyPI, venv)
ansible_ok() {
    [ -x "$ANSIBLE_VENV/bin/ansible-playbook" ] && "$ANSIBLE_VENV/bin/python" - "$ANSIBLE_VERSION" <<'EOF' >/dev/null 2>&1
import importlib.metadata as md, sys
assert md.version("ansible") == sys.argv[1]
EOF
}
# the amazon.aws modules need boto3/botocore; the venv sees the system ones (the project's extras)
ansible_boto_check() {
    "$ANSIBLE_VENV/bin/python" -c 'import boto3, botocore' >/dev/null 2>&1 \
        || say "ansible: WARNING boto3/botocore not importable in the venv: install the project first (pip install -e '.[test]')"
}
s=$(now)
if ansible_ok; then
    say "ansible: already installed (ansible $ANSIBLE_VERSION in $ANSIBLE_VENV)"
    ansible_boto_check
else
    say "ansible: installing ansible==$ANSIBLE_VERSION into $ANSIBLE_VENV (venv --system-site-packages)..."
    mkdir -p "$TOOLS_HOME"
    rm -rf "$ANSIBLE_VENV"
    if "$PYTHON" -m venv --system-site-packages "$ANSIBLE_VENV" >/tmp/ebscrypt-ansible.log 2>&1 \
            && PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore timeout "$STEP_TIMEOUT" \
               "$ANSIBLE_VENV/bin/python" -m pip install --quiet "ansible==$ANSIBLE_VERSION" >>/tmp/ebscrypt-ansible.log 2>&1 \
            && ansible_ok; then
        say "ansible: installed $("$ANSIBLE_VENV/bin/ansible" --version 2>/dev/null | head -1) in $(( $(now) - s ))s"
        ansible_boto_check
    else
        say "ansible: NOT installed (see /tmp/ebscrypt-ansible.log); test_tools_ansible will skip"
        tail -3 /tmp/ebscrypt-ansible.log 2>/dev/null | sed 's/^/install-tools:   /'
        rm -rf "$ANSIBLE_VENV"
    fi
fi

# ---------------------------------------------------------------- AWS SDK for JavaScript v3 (npm)
js_ok() {
    command -v node >/dev/null 2>&1 && (cd "$JS_DIR" && node check-installed.mjs) >/dev/null 2>&1
}
s=$(now)
if ! command -v npm >/dev/null 2>&1; then
    say "js sdk: NOT installed (no node/npm); test_tools_js will skip"
elif js_ok; then
    say "js sdk: already installed ($(cd "$JS_DIR" && node check-installed.mjs 2>/dev/null))"
else
    say "js sdk: npm ci in tests/tools/js (versions pinned in package.json / package-lock.json)..."
    if (cd "$JS_DIR" && timeout "$STEP_TIMEOUT" npm ci --no-audit --no-fund --loglevel=error) >/tmp/ebscrypt-npm.log 2>&1 \
            && js_ok; then
        say "js sdk: installed ($(cd "$JS_DIR" && node check-installed.mjs 2>/dev/null)) in $(( $(now) - s ))s"
    else
        say "js sdk: NOT installed (npm failed, see /tmp/ebscrypt-npm.log); test_tools_js will skip"
        tail -3 /tmp/ebscrypt-npm.log 2>/dev/null | sed 's/^/install-tools:   /'
    fi
fi

# ---------------------------------------------------------------- AWS CLI
if command -v aws >/dev/null 2>&1; then
    say "aws cli: $(aws --version 2>&1 | head -1)"
else
    say "aws cli: not on PATH (pip install awscli); test_tools_awscli will skip"
fi

say "done in $(( $(now) - t0 ))s"
exit 0

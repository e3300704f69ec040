"""SoftHSM2 tokens for the PKCS#11 key-store tests: each test (or module) gets its own token
directory and ``softhsm2.conf``, named by ``SOFTHSM2_CONF`` (set in this process's
environment, so servers and CLI commands started by the test see the same token).

Missing SoftHSM2 (``ci/install-hsm.sh`` installs it) or python-pkcs11 → the tests skip with
the reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

MODULE_CANDIDATES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
)
ROOT_LABEL = "ebscrypt-root"
USER_PIN = "4711-ebscrypt"
SO_PIN = "0815-so"


def softhsm_module() -> str | None:
    return next((p for p in MODULE_CANDIDATES if os.path.exists(p)), None)


def missing_reason() -> str | None:
    if softhsm_module() is None:
        return "SoftHSM2 is not installed (libsofthsm2.so not found; ci/install-hsm.sh installs it)"
    if shutil.which("softhsm2-util") is None:
        return "softhsm2-util is not installed (ci/install-hsm.sh)"
    try:
        import pkcs11  # noqa: F401
    except ImportError:
        return "python-pkcs11 is not installed (pip install '.[hsm]')"
    return None


def require_softhsm() -> None:
    reason = missing_reason()
    if reason:
        pytest.skip(reason)


@dataclass
class SoftHsm:
    """One SoftHSM2 token directory with one initialized token."""

    dir: Path
    conf: Path
    pin_file: Path
    module: str
    token: str

    def uri(self, label: str = ROOT_LABEL, *, pin_in_uri: bool = False, **extra: str) -> str:
        query = {"module-path": self.module}
        if pin_in_uri:
            query["pin-value"] = USER_PIN
        else:
            query["pin-source"] = f"file:{self.pin_file}"
        query.update(extra)
        q = "&".join(f"{k}={urllib.parse.quote(v, safe='/:')}" for k, v in query.items())
        return f"pkcs11:token={self.token};object={label}?{q}"

    def env(self) -> dict[str, str]:
        return {**os.environ, "SOFTHSM2_CONF": str(self.conf)}

    def activate(self, mp: pytest.MonkeyPatch) -> None:
        """Point this process at the token (servers and commands it starts inherit it); an
        already loaded PKCS#11 module re-reads the configuration."""
        mp.setenv("SOFTHSM2_CONF", str(self.conf))
        if "pkcs11" in sys.modules:
            import pkcs11

            lib: Any = pkcs11.lib(self.module)
            lib.reinitialize()

    def list_objects(self) -> str:
        out = subprocess.run(
            ["pkcs11-tool", "--module", self.module, "--token-label", self.token, "--login",
             "--pin", USER_PIN, "--list-objects"],
            env=self.env(), capture_output=True, text=True, timeout=60,
        )
        return out.stdout + out.stderr


def make_token(base: Path, token: str = "ebscrypt") -> SoftHsm:
    """A fresh token in ``base`` (its own softhsm2.conf and token directory)."""
    require_softhsm()
    module = softhsm_module()
    assert module is not None
    tokens = base / "tokens"
    tokens.mkdir(parents=True, exist_ok=True)
    conf = base / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n")
    pin_file = base / "user.pin"
    pin_file.write_text(USER_PIN + "\n")
    pin_file.chmod(0o600)
    subprocess.run(
        ["softhsm2-util", "--init-token", "--free", "--label", token, "--so-pin", SO_PIN, "--pin", USER_PIN],
        env={**os.environ, "SOFTHSM2_CONF": str(conf)}, check=True, capture_output=True, timeout=60,
    )
    return SoftHsm(dir=base, conf=conf, pin_file=pin_file, module=module, token=token)


def ebscrypt(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``python -m ebscrypt ARGS`` from the worktree (the copy under test)."""
    return subprocess.run(
        [sys.executable, "-m", "ebscrypt", *args], env=env, capture_output=True, text=True, timeout=timeout,
        cwd=Path(__file__).resolve().parent.parent,
    )

"""The file key store at the command line (issue 14): the start check of the root key file's
mode, a passphrase-sealed root key (from an environment variable, never an argument), and
`ebscrypt keystore migrate` between two file stores (R-KEY-1)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

from tests.conftest import ServerProcess
from tests.hsm_support import ebscrypt


def test_serve_refuses_a_readable_root_key_or_a_lost_one(tmp_path: Path, server_factory: Callable[..., ServerProcess]) -> None:
    data = tmp_path / "data"
    srv = server_factory([], data_dir=data)
    kms = srv.client("kms")
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    blob = kms.encrypt(KeyId=key_id, Plaintext=b"kept")["CiphertextBlob"]
    srv.stop()
    (data / "root.key").chmod(0o644)
    out = ebscrypt("serve", "--data-dir", str(data), "--port", "0", "--nbd-port", "0", timeout=60)
    assert out.returncode == 2
    assert "has mode 0644: group or others may read it; run: chmod 600" in out.stderr
    (data / "root.key").chmod(0o600)
    # a database with key material and no root key file: refused (no new key made)
    moved = tmp_path / "root.key.moved"
    (data / "root.key").rename(moved)
    out = ebscrypt("serve", "--data-dir", str(data), "--port", "0", "--nbd-port", "0", timeout=60)
    assert out.returncode == 2 and "does not exist" in out.stderr
    assert not (data / "root.key").exists()
    moved.rename(data / "root.key")
    srv.start()
    assert srv.client("kms").decrypt(CiphertextBlob=blob)["Plaintext"] == b"kept"


def test_migrate_to_a_passphrase_sealed_file(tmp_path: Path, server_factory: Callable[..., ServerProcess]) -> None:
    data = tmp_path / "data"
    srv = server_factory([], data_dir=data)
    kms = srv.client("kms")
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    blob = kms.encrypt(KeyId=key_id, Plaintext=b"sealed")["CiphertextBlob"]
    srv.stop()
    sealed = tmp_path / "sealed.key"
    uri = f"file:{sealed}?passphrase-env=EBSCRYPT_TEST_PASS"
    env = {**os.environ, "EBSCRYPT_TEST_PASS": "a long passphrase"}
    out = ebscrypt("keystore", "migrate", "--data-dir", str(data), "--to", uri, env=env)
    assert out.returncode == 0, out.stderr
    assert sealed.read_bytes()[:4] == b"ERK1" and oct(sealed.stat().st_mode)[-3:] == "600"
    out = ebscrypt("keystore", "status", "--json", "--data-dir", str(data), "--key-store", uri, env=env)
    st = json.loads(out.stdout)
    assert out.returncode == 0 and st["canUnwrapAll"] and st["rowsUnwrapped"] >= 1
    # without the passphrase, or with a wrong one: a clear refusal at start
    out = ebscrypt("serve", "--data-dir", str(data), "--port", "0", "--nbd-port", "0", "--key-store", uri, timeout=60)
    assert out.returncode == 2 and "EBSCRYPT_TEST_PASS is not set" in out.stderr
    out = ebscrypt("serve", "--data-dir", str(data), "--port", "0", "--nbd-port", "0", "--key-store", uri,
                   env={**os.environ, "EBSCRYPT_TEST_PASS": "wrong"}, timeout=60)
    assert out.returncode == 2 and "wrong passphrase" in out.stderr
    os.environ["EBSCRYPT_TEST_PASS"] = "a long passphrase"
    try:
        srv = ServerProcess(data, ["--key-store", uri]).start()
        try:
            assert srv.client("kms").decrypt(CiphertextBlob=blob)["Plaintext"] == b"sealed"
        finally:
            srv.stop()
    finally:
        del os.environ["EBSCRYPT_TEST_PASS"]

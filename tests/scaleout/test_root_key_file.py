"""``serve --root-key-file PATH``: the KMS root key every server sharing a database is given,
and the start check that refuses a database whose keys that root key cannot unwrap (clear
message, non-zero exit) instead of serving keys it cannot use. On SQLite here (the check is
the same on any database); tests/scaleout/test_haproxy.py shares one file among servers on
PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ServerProcess, free_port


def _root_key(path: Path) -> Path:
    path.write_bytes(os.urandom(32))
    path.chmod(0o600)
    return path


def test_root_key_file_is_used_and_a_wrong_one_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    key_a = _root_key(tmp_path / "a.key")
    srv = ServerProcess(data, ["--root-key-file", str(key_a)]).start()
    try:
        kms = srv.client("kms")
        key_id = kms.create_key()["KeyMetadata"]["KeyId"]
        blob = kms.encrypt(KeyId=key_id, Plaintext=b"shared secret")["CiphertextBlob"]
    finally:
        srv.stop()
    assert not (data / "root.key").exists()  # the file given, not the data dir's default

    # The same database with another root key: refused, with the reason, non-zero exit.
    key_b = _root_key(tmp_path / "b.key")
    cmd = [sys.executable, "-m", "ebscrypt", "serve", "--port", str(free_port()), "--data-dir", str(data),
           "--root-key-file", str(key_b)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "unwrap this database's key material" in done.stderr and str(key_b) in done.stderr
    assert "--root-key-file" in done.stderr

    # A copy of the right file (another host's) serves the same keys.
    copy = tmp_path / "copy.key"
    copy.write_bytes(key_a.read_bytes())
    copy.chmod(0o600)  # a root key file readable by others is refused at start
    srv = ServerProcess(data, ["--root-key-file", str(copy)]).start()
    try:
        assert srv.client("kms").decrypt(CiphertextBlob=blob)["Plaintext"] == b"shared secret"
    finally:
        srv.stop()

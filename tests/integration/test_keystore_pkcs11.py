"""The root of trust in a PKCS#11 token (issue 14), end to end against SoftHSM2: servers
started with ``--key-store pkcs11:…``, ``ebscrypt keystore init/status/migrate/rotate``,
a kill -9 in the middle of a migration, a database without its token. Each test makes its
own token (own SOFTHSM2_CONF); without SoftHSM2 they skip with the reason. R-KEY-1
(material at rest only wrapped), R-DATA-1 (blocks readable only with their keys)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pytest
from botocore.exceptions import ClientError

from tests.conftest import ServerProcess
from tests.hsm_support import SoftHsm, ebscrypt, make_token
from tests.integration.test_ebs import BLOCK, download, upload

A = "141414141414"
CONTEXT = {"purpose": "issue-14"}


@pytest.fixture
def hsm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SoftHsm:
    token = make_token(tmp_path / "hsm")
    token.activate(monkeypatch)
    return token


def keystore(*args: str, hsm: SoftHsm | None = None) -> subprocess.CompletedProcess[str]:
    return ebscrypt("keystore", *args, env=hsm.env() if hsm else None)


def init(hsm: SoftHsm, data_dir: Path) -> None:
    out = keystore("init", "--data-dir", str(data_dir), "--key-store", hsm.uri(), hsm=hsm)
    assert out.returncode == 0, out.stderr


def status(data_dir: Path, key_store: str | None, hsm: SoftHsm | None = None) -> tuple[int, dict[str, Any]]:
    args = ["status", "--json", "--data-dir", str(data_dir)]
    if key_store:
        args += ["--key-store", key_store]
    out = keystore(*args, hsm=hsm)
    return out.returncode, (json.loads(out.stdout) if out.stdout.strip() else {"stderr": out.stderr})


def make_workload(srv: ServerProcess, keys: int = 2) -> dict[str, Any]:
    """Keys of several kinds, ciphertexts under them (one after a rotation), a snapshot."""
    kms, ebs = srv.client("kms", account=A), srv.client("ebs", account=A)
    w: dict[str, Any] = {"blobs": [], "data_keys": []}
    for _ in range(keys):
        key_id = kms.create_key(Description="issue 14")["KeyMetadata"]["KeyId"]
        w["blobs"].append((kms.encrypt(KeyId=key_id, Plaintext=b"before rotation", EncryptionContext=CONTEXT)
                           ["CiphertextBlob"], b"before rotation"))
        kms.rotate_key_on_demand(KeyId=key_id)
        w["blobs"].append((kms.encrypt(KeyId=key_id, Plaintext=b"after rotation", EncryptionContext=CONTEXT)
                           ["CiphertextBlob"], b"after rotation"))
        dk = kms.generate_data_key(KeyId=key_id, KeySpec="AES_256", EncryptionContext=CONTEXT)
        w["blobs"].append((dk["CiphertextBlob"], dk["Plaintext"]))
        w["data_keys"].append(dk["Plaintext"])
    rsa = kms.create_key(KeySpec="RSA_2048", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["KeyId"]
    sig = kms.sign(KeyId=rsa, Message=b"m", SigningAlgorithm="RSASSA_PSS_SHA_256")["Signature"]
    w["signature"] = (rsa, sig)
    key_arn = kms.describe_key(KeyId=key_id)["KeyMetadata"]["Arn"]
    blocks = {0: os.urandom(BLOCK), 3: os.urandom(BLOCK)}
    w["snapshot"] = (upload(ebs, blocks, Encrypted=True, KmsKeyArn=key_arn), blocks)
    w["default_snapshot"] = (upload(ebs, {1: blocks[0]}, Encrypted=True), {1: blocks[0]})
    return w


def check_workload(srv: ServerProcess, w: dict[str, Any]) -> None:
    kms, ebs = srv.client("kms", account=A), srv.client("ebs", account=A)
    for blob, plain in w["blobs"]:
        assert kms.decrypt(CiphertextBlob=blob, EncryptionContext=CONTEXT)["Plaintext"] == plain
    rsa, sig = w["signature"]
    assert kms.verify(KeyId=rsa, Message=b"m", Signature=sig, SigningAlgorithm="RSASSA_PSS_SHA_256")["SignatureValid"]
    for sid, blocks in (w["snapshot"], w["default_snapshot"]):
        assert download(ebs, sid) == blocks


def materials_in_db(data_dir: Path, key_store: str) -> list[bytes]:
    """Every KMS key material of the database, unwrapped through the key store in a child
    process (the test process keeps no PKCS#11 state), hex on stdout."""
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from sqlalchemy import select\n"
        "from ebscrypt.context import Settings\n"
        "from ebscrypt.engines.kms.keystore import open_key_store\n"
        "from ebscrypt.storage.db import Database\n"
        "from ebscrypt.storage.tables.kms import kms_key_material as t\n"
        "d = Path(sys.argv[1]); store = open_key_store(sys.argv[2], d, create=False)\n"
        "db = Database(Settings(data_dir=d).database_url)\n"
        "with db.read() as c:\n"
        "    for r in c.execute(select(t)):\n"
        "        print(store.unwrap(r.key_id, r.material_id, r.wrapped, r.wrapped_by).hex())\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(data_dir), key_store], capture_output=True, text=True,
                         timeout=120, cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr
    return [bytes.fromhex(line) for line in out.stdout.split()]


def files_content(data_dir: Path) -> list[tuple[Path, bytes]]:
    return [(p, p.read_bytes()) for p in data_dir.rglob("*") if p.is_file()]


def test_kms_and_ebs_with_the_root_key_in_the_token(
    hsm: SoftHsm, tmp_path: Path, server_factory: Callable[..., ServerProcess]
) -> None:
    data = tmp_path / "data"
    init(hsm, data)
    srv = server_factory(["--key-store", hsm.uri()], data_dir=data)
    w = make_workload(srv)
    check_workload(srv, w)
    srv.stop()
    # restart: material unwrapped again by the token
    srv.start()
    check_workload(srv, w)
    srv.stop()

    # the root key: in the token only, sensitive and never extractable
    listing = hsm.list_objects()
    assert "label:      ebscrypt-root" in listing
    assert "sensitive" in listing and "never extractable" in listing
    assert not (data / "root.key").exists()
    code, st = status(data, hsm.uri(), hsm)
    assert code == 0 and st["canUnwrapAll"] and st["rowsNotUnwrapped"] == 0
    assert st["rootObjects"] == [{"ref": st["currentRootKey"], "sensitive": True, "extractable": False, "token": True}]
    assert list(st["rowsByRootKey"]) == [st["currentRootKey"]]

    # no plaintext key material, no data key in the data dir or the database
    secrets = materials_in_db(data, hsm.uri())
    assert len(secrets) >= 5
    secrets += w["data_keys"]
    for path, content in files_content(data):
        for s in secrets:
            assert s[:16] not in content, f"key bytes found in {path}"

    # the audit trail has the key-store operations
    events = [json.loads(line) for line in (data / "audit" / "kms-audit.jsonl").read_text().splitlines()]
    names = {e["eventName"] for e in events if e["eventSource"] == "ebscrypt.keystore"}
    assert {"KeyStoreInit", "KeyStoreStatus"} <= names


def test_database_without_its_token_cannot_be_read(
    hsm: SoftHsm, tmp_path: Path, server_factory: Callable[..., ServerProcess], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    init(hsm, data)
    srv = server_factory(["--key-store", hsm.uri()], data_dir=data)
    make_workload(srv, keys=1)
    srv.stop()
    copy = tmp_path / "copied"
    shutil.copytree(data, copy)

    # another machine: a token of the same name with its own root key
    other = make_token(tmp_path / "other-hsm")
    other.activate(monkeypatch)
    init(other, tmp_path / "scratch")
    out = ebscrypt("serve", "--data-dir", str(copy), "--port", "0", "--nbd-port", "0", "--key-store", other.uri(), env=other.env(),
                   timeout=60)
    assert out.returncode == 2
    assert "cannot unwrap this database's key material" in out.stderr
    assert "pkcs11:token=ebscrypt;serial=" in out.stderr
    # no token at all
    out = ebscrypt("serve", "--data-dir", str(copy), "--port", "0", "--nbd-port", "0",
                   "--key-store", other.uri().replace("token=ebscrypt", "token=gone"), env=other.env(), timeout=60)
    assert out.returncode == 2 and "no PKCS#11 token labelled 'gone'" in out.stderr
    # wrong PIN
    bad_pin = other.uri().split("?")[0] + f"?module-path={other.module}&pin-value=1111"
    out = ebscrypt("serve", "--data-dir", str(copy), "--port", "0", "--nbd-port", "0", "--key-store", bad_pin, env=other.env(), timeout=60)
    assert out.returncode == 2 and "wrong PIN" in out.stderr
    # and the default file store: no root key file is made for a database with key material
    out = ebscrypt("serve", "--data-dir", str(copy), "--port", "0", "--nbd-port", "0", timeout=60)
    assert out.returncode == 2 and "root.key does not exist" in out.stderr
    assert "this database's key material is wrapped by pkcs11:token=ebscrypt;serial=" in out.stderr
    assert not (copy / "root.key").exists()
    code, st = status(copy, other.uri(), other)
    assert code == 1 and st["rowsUnwrapped"] == 0 and not st["canUnwrapAll"]


def test_migrate_file_to_pkcs11_then_rotate_then_back_keeps_everything_readable(
    hsm: SoftHsm, tmp_path: Path, server_factory: Callable[..., ServerProcess]
) -> None:
    data = tmp_path / "data"
    srv = server_factory([], data_dir=data)  # today's default: file:<data>/root.key
    w = make_workload(srv)
    srv.stop()
    assert (data / "root.key").exists()

    out = keystore("migrate", "--data-dir", str(data), "--to", hsm.uri(), hsm=hsm)
    assert out.returncode == 0, out.stderr
    assert "re-wrapped" in out.stdout
    srv = ServerProcess(data, ["--key-store", hsm.uri()]).start()
    try:
        check_workload(srv, w)
        kms = srv.client("kms", account=A)
        new_key = kms.create_key()["KeyMetadata"]["KeyId"]
        w["blobs"].append((kms.encrypt(KeyId=new_key, Plaintext=b"made under the hsm",
                                       EncryptionContext=CONTEXT)["CiphertextBlob"], b"made under the hsm"))
    finally:
        srv.stop()
    code, st = status(data, hsm.uri(), hsm)
    assert code == 0 and st["canUnwrapAll"] and list(st["rowsByRootKey"]) == [st["currentRootKey"]]
    first_root = st["currentRootKey"]
    # the old file store no longer holds this database: refused with the reason
    out = ebscrypt("serve", "--data-dir", str(data), "--port", "0", "--nbd-port", "0", timeout=60)
    assert out.returncode == 2 and "cannot unwrap" in out.stderr

    out = keystore("rotate", "--data-dir", str(data), "--key-store", hsm.uri(), hsm=hsm)
    assert out.returncode == 0, out.stderr
    assert "retired 1 old root key" in out.stdout
    code, st = status(data, hsm.uri(), hsm)
    assert code == 0 and st["currentRootKey"] != first_root
    assert [r["ref"] for r in st["rootObjects"]] == [st["currentRootKey"]]  # old object destroyed
    srv = ServerProcess(data, ["--key-store", hsm.uri()]).start()
    try:
        check_workload(srv, w)
    finally:
        srv.stop()
    # and back to a file store (a new file): the HSM can be retired the same way
    back = f"file:{tmp_path / 'back.key'}"
    out = keystore("migrate", "--data-dir", str(data), "--key-store", hsm.uri(), "--to", back, hsm=hsm)
    assert out.returncode == 0, out.stderr
    srv = ServerProcess(data, ["--key-store", back]).start()
    try:
        check_workload(srv, w)
    finally:
        srv.stop()
    events = [json.loads(line) for line in (data / "audit" / "kms-audit.jsonl").read_text().splitlines()]
    names = [e["eventName"] for e in events if e["eventSource"] == "ebscrypt.keystore"]
    assert names.count("KeyStoreMigrate") == 4 and names.count("KeyStoreRotate") == 2
    assert "KeyStoreRetireRootKey" in names


def test_kill_9_mid_migration_resumes(hsm: SoftHsm, tmp_path: Path, server_factory: Callable[..., ServerProcess]) -> None:
    data = tmp_path / "data"
    srv = server_factory([], data_dir=data)
    kms = srv.client("kms", account=A)
    blobs = []
    for i in range(12):
        key_id = kms.create_key()["KeyMetadata"]["KeyId"]
        blobs.append((kms.encrypt(KeyId=key_id, Plaintext=f"secret {i}".encode())["CiphertextBlob"], f"secret {i}".encode()))
    srv.stop()

    proc = subprocess.Popen(
        [sys.executable, "-m", "ebscrypt", "keystore", "migrate", "--data-dir", str(data), "--to", hsm.uri(),
         "--pause", "0.3"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=hsm.env(),
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.stdout is not None
    done = 0
    for line in proc.stdout:
        if line.startswith("re-wrapped"):
            done += 1
            if done == 3:
                proc.send_signal(signal.SIGKILL)
                break
    proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    # half way: rows under both stores, each readable by its own
    code, st = status(data, hsm.uri(), hsm)
    assert len(st["rowsByRootKey"]) == 2 and st["rowsUnwrapped"] >= 3 and st["rowsNotUnwrapped"] >= 1
    code, st = status(data, None)
    assert st["rowsUnwrapped"] + 3 <= 12 + 3 and st["rowsNotUnwrapped"] >= 3

    out = keystore("migrate", "--data-dir", str(data), "--to", hsm.uri(), hsm=hsm)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("re-wrapped") <= 12 - 3  # only the rows not yet moved
    code, st = status(data, hsm.uri(), hsm)
    assert code == 0 and st["canUnwrapAll"] and st["rowsUnwrapped"] == 12
    srv = ServerProcess(data, ["--key-store", hsm.uri()]).start()
    try:
        kms = srv.client("kms", account=A)
        for blob, plain in blobs:
            assert kms.decrypt(CiphertextBlob=blob)["Plaintext"] == plain
    finally:
        srv.stop()


def test_token_gone_at_run_time_is_a_retryable_error_then_recovers(
    hsm: SoftHsm, tmp_path: Path, server_factory: Callable[..., ServerProcess]
) -> None:
    """The token's files taken away under a running server (as a token pulled out): KMS
    answers KeyUnavailableException (HTTP 500, retryable) and the server lives on; the token
    put back, the same calls succeed again."""
    data = tmp_path / "data"
    init(hsm, data)
    srv = server_factory(["--key-store", hsm.uri()], data_dir=data)
    kms = srv.client("kms", account=A)
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    blob = kms.encrypt(KeyId=key_id, Plaintext=b"x")["CiphertextBlob"]
    kms.disable_key(KeyId=key_id)  # its material leaves the cache: the next use asks the token
    kms.enable_key(KeyId=key_id)
    tokens = hsm.dir / "tokens"
    away = hsm.dir / "tokens-away"
    tokens.rename(away)
    tokens.mkdir()
    try:
        with pytest.raises(ClientError) as exc:
            kms.decrypt(CiphertextBlob=blob)
        assert exc.value.response["Error"]["Code"] == "KeyUnavailableException"
        assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500
        assert srv.proc is not None and srv.proc.poll() is None  # no crash
        assert kms.list_keys()["Keys"]  # and it still serves what needs no key material
    finally:
        tokens.rmdir()
        away.rename(tokens)
    # back: the server reconnects by itself (a retry or two while the module restarts)
    deadline = time.monotonic() + 10
    while True:
        try:
            assert kms.decrypt(CiphertextBlob=blob)["Plaintext"] == b"x"
            break
        except ClientError as e:
            assert e.response["Error"]["Code"] == "KeyUnavailableException"
            assert time.monotonic() < deadline, "the server did not recover after the token came back"
            time.sleep(0.3)


def test_two_servers_share_one_token_through_a_rotation(
    hsm: SoftHsm, tmp_path: Path, server_factory: Callable[..., ServerProcess]
) -> None:
    """Several processes on one database and one token (as with a network HSM): what one
    wraps the other unwraps, and a root key rotation under them keeps both working."""
    data = tmp_path / "data"
    init(hsm, data)
    one = server_factory(["--key-store", hsm.uri()], data_dir=data)
    two = server_factory(["--key-store", hsm.uri()], data_dir=data)
    k1, k2 = one.client("kms", account=A), two.client("kms", account=A)
    made = [k1.create_key()["KeyMetadata"]["KeyId"] for _ in range(3)]
    blobs = [(k1.encrypt(KeyId=k, Plaintext=k.encode())["CiphertextBlob"], k.encode()) for k in made]
    for blob, plain in blobs:  # server two unwraps what server one wrapped
        assert k2.decrypt(CiphertextBlob=blob)["Plaintext"] == plain
    out = keystore("rotate", "--data-dir", str(data), "--key-store", hsm.uri(), hsm=hsm)
    assert out.returncode == 0, out.stderr
    # a key made after the rotation is wrapped under the new root key and read by both
    time.sleep(2.1)  # servers re-read the token's root objects before a wrap at most every 2 s
    late = k2.create_key()["KeyMetadata"]["KeyId"]
    blob = k2.encrypt(KeyId=late, Plaintext=b"late")["CiphertextBlob"]
    assert k1.decrypt(CiphertextBlob=blob)["Plaintext"] == b"late"
    for blob, plain in blobs:
        assert k1.decrypt(CiphertextBlob=blob)["Plaintext"] == plain
        assert k2.decrypt(CiphertextBlob=blob)["Plaintext"] == plain
    one.stop()
    two.stop()
    code, st = status(data, hsm.uri(), hsm)
    assert code == 0 and list(st["rowsByRootKey"]) == [st["currentRootKey"]] and len(st["rootObjects"]) == 1

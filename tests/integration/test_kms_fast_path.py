"""The KMS data-key calls run on the event loop (issue 15; ebscrypt/blocking.py) through a
real server: every use is still checked against key state and policy and recorded once
in the audit trail (SPEC R-KEY-3, R-KEY-7), including the uses that must leave the loop
(key material not yet unwrapped after a restart; the alias/aws/ebs key made on first use).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import pytest
from botocore.exceptions import ClientError

from tests.conftest import ServerProcess

A = "111122223333"


def _records(srv: ServerProcess) -> list[dict[str, Any]]:
    path = Path(srv.data_dir) / "audit" / "kms-audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _by_request(srv: ServerProcess, request_id: str) -> list[str]:
    return [r["eventName"] for r in _records(srv) if r["requestID"] == request_id]


def _code(fn: Callable[..., Any], **kw: Any) -> str:
    with pytest.raises(ClientError) as exc:
        fn(**kw)
    return str(exc.value.response["Error"]["Code"])


def test_uses_after_a_restart_and_state_changes(server_factory: Callable[..., ServerProcess]) -> None:
    srv = server_factory()
    kms = srv.client("kms", account=A)
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    dk = kms.generate_data_key(KeyId=key_id, KeySpec="AES_256", EncryptionContext={"v": "1"})
    srv.stop()
    srv.start()  # nothing unwrapped yet: the first Decrypt unwraps in a worker thread
    kms = srv.client("kms", account=A)
    for _ in range(2):
        out = kms.decrypt(CiphertextBlob=dk["CiphertextBlob"], EncryptionContext={"v": "1"})
        assert out["Plaintext"] == dk["Plaintext"]
        assert _by_request(srv, out["ResponseMetadata"]["RequestId"]) == ["Decrypt"]
    assert _code(kms.decrypt, CiphertextBlob=dk["CiphertextBlob"], EncryptionContext={"v": "2"}) == \
        "InvalidCiphertextException"
    kms.disable_key(KeyId=key_id)
    assert _code(kms.decrypt, CiphertextBlob=dk["CiphertextBlob"], EncryptionContext={"v": "1"}) == \
        "DisabledException"
    assert _code(kms.generate_data_key, KeyId=key_id, KeySpec="AES_256") == "DisabledException"
    kms.enable_key(KeyId=key_id)
    assert kms.decrypt(CiphertextBlob=dk["CiphertextBlob"], EncryptionContext={"v": "1"})["Plaintext"] == \
        dk["Plaintext"]
    kms.schedule_key_deletion(KeyId=key_id, PendingWindowInDays=7)
    assert _code(kms.encrypt, KeyId=key_id, Plaintext=b"x") == "KMSInvalidStateException"
    refused = [r for r in _records(srv) if r["eventName"] == "Encrypt"]
    assert refused[-1]["errorCode"] == "KMSInvalidStateException"


def test_the_ebs_key_made_on_first_use_is_recorded_once(server_factory: Callable[..., ServerProcess]) -> None:
    srv = server_factory()
    kms = srv.client("kms", account=A)
    out = kms.describe_key(KeyId="alias/aws/ebs")  # makes the key (a write): leaves the loop
    assert out["KeyMetadata"]["KeyManager"] == "AWS"
    assert _by_request(srv, out["ResponseMetadata"]["RequestId"]) == ["DescribeKey"]
    again = kms.describe_key(KeyId="alias/aws/ebs")
    assert again["KeyMetadata"]["KeyId"] == out["KeyMetadata"]["KeyId"]
    assert _by_request(srv, again["ResponseMetadata"]["RequestId"]) == ["DescribeKey"]
    assert len([r for r in _records(srv) if r["eventName"] == "DescribeKey"]) == 2
    # its policy allows encryption only through EC2: refused directly, and recorded
    assert _code(kms.encrypt, KeyId="alias/aws/ebs", Plaintext=b"x") == "AccessDeniedException"
    assert [r.get("errorCode") for r in _records(srv) if r["eventName"] == "Encrypt"] == ["AccessDeniedException"]

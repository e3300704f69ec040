"""The KMS audit record written from pre-encoded parts (engines/kms/audit.py
``record_line``, issue 15) is byte for byte the CloudTrail record ``cloudtrail_record``
builds, encoded (R-KMS audit trail): every caller kind, via-service uses, errors,
read-only events, any number of resources."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pytest

from ebscrypt.context import Caller
from ebscrypt.engines.kms import audit

CALLERS = [
    Caller(account="111122223333", region="us-east-1"),
    Caller(account="111122223333", region="eu-west-1", access_key="AKIAEXAMPLE",
           arn="arn:aws:iam::111122223333:user/alice", user_id="AIDAEXAMPLE"),
    Caller(account="444455556666", region="us-east-1", access_key="ASIAEXAMPLE",
           arn="arn:aws:sts::444455556666:assumed-role/r/s", user_id="AROA:s"),
]
ARN = "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
OTHER = "arn:aws:kms:us-east-1:444455556666:key/0000abcd-12ab-34cd-56ef-1234567890ab"


@pytest.fixture(autouse=True)
def fixed_event_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(audit, "uuid4_str", lambda: "event-id")


def _event(caller: Caller, name: str, params: dict[str, Any], via: str | None, resources: list[str],
           error: tuple[str, str] | None) -> audit.AuditEvent:
    return audit.AuditEvent(
        caller=caller, name=name, params=audit.audit_params(params), via_service=via, request_id="req-1",
        read_only=name in audit.READ_ONLY_EVENTS, time=datetime(2026, 1, 2, 3, 4, 5, 678, tzinfo=timezone.utc),
        resources=resources, error=error,
    )


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize("name, params", [
    ("GenerateDataKey", {"KeyId": "alias/x", "KeySpec": "AES_256", "EncryptionContext": {"é": "\"q\"\n"}}),
    ("Decrypt", {"CiphertextBlob": b"secret", "EncryptionContext": {}}),
    ("DescribeKey", {"KeyId": ARN}),
    ("ListKeys", {}),
    ("CreateKey", {"Description": "d", "Tags": [{"TagKey": "k", "TagValue": "v"}],
                   "ValidTo": datetime(2030, 1, 1, tzinfo=timezone.utc)}),
])
@pytest.mark.parametrize("via", [None, "ec2.us-east-1.amazonaws.com"])
@pytest.mark.parametrize("resources", [[], [ARN], [ARN, ARN], [ARN, OTHER]])
@pytest.mark.parametrize("error", [None, ("AccessDeniedException", "User: x is not \"authorized\"")])
def test_record_line_is_the_encoded_record(caller: Caller, name: str, params: dict[str, Any], via: str | None,
                                            resources: list[str], error: tuple[str, str] | None) -> None:
    ev = _event(caller, name, params, via, resources, error)
    expected = (audit._encode(audit.cloudtrail_record(ev)) + "\n").encode()
    assert audit.record_line(ev) == expected
    assert audit.record_line(ev) == expected  # again, from the parts encoded once

"""The one data-key step of every create path (engines/ec2/encryption.py
``prepare_data_key``): R-KEY-2 the source's data key when the plan reuses it, R-KEY-1 a
new one under the plan's key otherwise, R-KEY-6 a key KMS refuses fails the plan (the
resource ends in error) — or the request, for EBS StartSnapshot — and a fault of ours
(5xx) is raised, retryable. KMS is a fake here: what is checked is which KMS calls the
step makes and what it returns."""

from __future__ import annotations

import contextlib
from dataclasses import replace
from types import SimpleNamespace
from typing import Any, Iterator

import pytest

from ebscrypt.context import Caller
from ebscrypt.engines.ec2.encryption import EncryptionPlan, prepare_data_key
from ebscrypt.errors import ServiceError

KEY = "arn:aws:kms:us-east-1:111122223333:key/11111111-2222-3333-4444-555555555555"
PLAN = EncryptionPlan(True, KEY, False, "test")


class FakeKms:
    def __init__(self, refuse: ServiceError | None = None, refuse_decrypt: ServiceError | None = None) -> None:
        self.calls: list[str] = []
        self.refuse, self.refuse_decrypt = refuse, refuse_decrypt

    def generate_data_key_without_plaintext(self, caller: Caller, key: str, **kw: Any) -> tuple[str, bytes]:
        self.calls.append("generate")
        if self.refuse is not None:
            raise self.refuse
        assert kw["encryption_context"] == {"aws:ebs:id": "vol-1"}
        return key, b"wrapped"

    @contextlib.contextmanager
    def key_row_scope(self) -> Iterator[None]:
        yield

    def create_grant_for_service(self, *args: Any, **kw: Any) -> None:
        self.calls.append("grant")

    def decrypt(self, caller: Caller, blob: bytes, **kw: Any) -> tuple[str, bytes]:
        self.calls.append("decrypt")
        if self.refuse_decrypt is not None:
            raise self.refuse_decrypt
        return KEY, b"\0" * 32


def _ctx(kms: FakeKms) -> Any:
    return SimpleNamespace(caller=Caller("111122223333", "us-east-1"), runtime=SimpleNamespace(kms=kms))


def _source() -> Any:
    return SimpleNamespace(kms_key_arn=KEY, data_key_id="dk-source", data_key_blob=b"source-blob",
                           encryption_context={"aws:ebs:id": "vol-0"})


def test_unencrypted_or_doomed_plans_get_no_key_and_call_no_kms() -> None:
    kms = FakeKms()
    plain = EncryptionPlan(False, None, False, "test")
    assert prepare_data_key(_ctx(kms), plain, None, "vol-1") == (plain, None)
    doomed = PLAN.failed("disabled")
    assert prepare_data_key(_ctx(kms), doomed, None, "vol-1") == (doomed, None)
    assert kms.calls == []


def test_reused_source_key_is_the_sources_own() -> None:  # R-KEY-2
    kms = FakeKms()
    plan, key = prepare_data_key(_ctx(kms), replace(PLAN, reuse_source_data_key=True), _source(), "vol-1")
    assert key is not None and (key.data_key_id, key.blob) == ("dk-source", b"source-blob")
    assert plan.problem is None and kms.calls == []


def test_new_key_and_its_proof() -> None:  # R-KEY-1
    kms = FakeKms()
    plan, key = prepare_data_key(_ctx(kms), PLAN, None, "vol-1")
    assert key is not None and key.blob == b"wrapped" and key.context == {"aws:ebs:id": "vol-1"}
    assert kms.calls == ["generate"]
    kms = FakeKms()
    prepare_data_key(_ctx(kms), PLAN, None, "vol-1", prove=True)
    assert kms.calls == ["generate", "grant", "decrypt"]


@pytest.mark.parametrize("stage", ["generate", "decrypt"])
def test_a_refused_key_fails_the_plan(stage: str) -> None:  # R-KEY-6
    refusal = ServiceError("Key is disabled", code="DisabledException")
    kms = FakeKms(refuse=refusal) if stage == "generate" else FakeKms(refuse_decrypt=refusal)
    plan, key = prepare_data_key(_ctx(kms), PLAN, None, "vol-1", prove=True)
    assert key is None
    assert plan.problem == (f"Client.InvalidKMSKey.InvalidState: The KMS key {KEY} cannot be used "
                            "(DisabledException: Key is disabled)")


def test_a_refusal_is_the_requests_error_when_asked_and_a_fault_always() -> None:
    refusal = ServiceError("Key is disabled", code="DisabledException")
    with pytest.raises(ServiceError) as err:
        prepare_data_key(_ctx(FakeKms(refuse=refusal)), PLAN, None, "vol-1", refusal_fails_plan=False)
    assert err.value.code == "DisabledException"
    fault = ServiceError("disk full", code="InternalFailure", status=500)
    with pytest.raises(ServiceError) as err:
        prepare_data_key(_ctx(FakeKms(refuse=fault)), PLAN, None, "vol-1")
    assert err.value.status == 500

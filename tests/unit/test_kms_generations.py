"""Authorization generations (issue 10 item 5; R-KEY-7, R-KEY-8): every change that can take
a use of a key away bumps the key's generation in the same transaction; additions do not;
a deleted key has none. And a database from before the counter is upgraded in place."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import pytest
from sqlalchemy import text

from ebscrypt.engines.kms import KeyEngine
from ebscrypt.errors import ServiceError
from ebscrypt.storage.db import Database
from tests.unit.test_kms_engine import CA, CB, A, B, cmk, make_engine
from tests.helpers import kms_op


@pytest.fixture
def engine(tmp_path: Path) -> KeyEngine:
    eng = make_engine(tmp_path / "data")
    yield eng
    eng.close()
    eng.db.dispose()


def _policy(*accounts: str) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"AWS": [f"arn:aws:iam::{a}:root" for a in accounts]},
         "Action": "kms:*", "Resource": "*"}]})


def _grant(engine: KeyEngine, key: str) -> dict[str, Any]:
    return kms_op(engine, "CreateGrant", CA, {"KeyId": key, "GranteePrincipal": f"arn:aws:iam::{B}:root",
                                      "RetiringPrincipal": f"arn:aws:iam::{A}:root", "Operations": ["Decrypt"]})


def _disable_then_enable(engine: KeyEngine, key: str) -> None:
    kms_op(engine, "DisableKey", CA, {"KeyId": key})
    kms_op(engine, "EnableKey", CA, {"KeyId": key})


CHANGES: dict[str, Callable[[KeyEngine, str], Any]] = {
    "DisableKey": lambda e, k: kms_op(e, "DisableKey", CA, {"KeyId": k}),
    "EnableKey": _disable_then_enable,
    "ScheduleKeyDeletion": lambda e, k: kms_op(e, "ScheduleKeyDeletion", CA, {"KeyId": k, "PendingWindowInDays": 7}),
    "PutKeyPolicy": lambda e, k: kms_op(e, "PutKeyPolicy", CA, {"KeyId": k, "PolicyName": "default", "Policy": _policy(A)}),
    "RevokeGrant": lambda e, k: kms_op(e, "RevokeGrant", CA, {"KeyId": k, "GrantId": _grant(e, k)["GrantId"]}),
    "RetireGrant": lambda e, k: kms_op(e, "RetireGrant", CA, {"GrantToken": _grant(e, k)["GrantToken"]}),
    "CreateAlias": lambda e, k: kms_op(e, "CreateAlias", CA, {"AliasName": "alias/g", "TargetKeyId": k}),
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_each_change_that_can_take_a_use_away_bumps_the_generation(engine: KeyEngine, change: str) -> None:
    key = cmk(engine)["Arn"]
    before = engine.authorization_generation(key)
    assert before is not None
    CHANGES[change](engine, key)
    after = engine.authorization_generation(key)
    assert after is not None and after > before


def test_alias_moves_and_deletes_bump_both_keys(engine: KeyEngine) -> None:
    k1, k2 = cmk(engine)["Arn"], cmk(engine)["Arn"]
    kms_op(engine, "CreateAlias", CA, {"AliasName": "alias/move", "TargetKeyId": k1})
    g1, g2 = engine.authorization_generation(k1), engine.authorization_generation(k2)
    kms_op(engine, "UpdateAlias", CA, {"AliasName": "alias/move", "TargetKeyId": k2})
    assert engine.authorization_generation(k1) > g1 and engine.authorization_generation(k2) > g2  # type: ignore[operator]
    g2 = engine.authorization_generation(k2)
    kms_op(engine, "DeleteAlias", CA, {"AliasName": "alias/move"})
    assert engine.authorization_generation(k2) > g2  # type: ignore[operator]


def test_uses_and_additions_do_not_bump(engine: KeyEngine) -> None:
    """Only what can take a use away counts: using a key, creating a grant or failing to
    change a key leaves remembered authorizations valid (and the hot path cheap)."""
    key = cmk(engine, Policy=_policy(A, B))["Arn"]
    g = engine.authorization_generation(key)
    _grant(engine, key)
    engine.generate_data_key_without_plaintext(CB, key, encryption_context={"a": "b"}, via_service=None)
    with pytest.raises(ServiceError):
        kms_op(engine, "RevokeGrant", CA, {"KeyId": key, "GrantId": "0" * 64})  # no such grant
    assert engine.authorization_generation(key) == g


def test_a_deleted_key_has_no_generation(engine: KeyEngine) -> None:
    key = cmk(engine)["Arn"]
    kms_op(engine, "ScheduleKeyDeletion", CA, {"KeyId": key, "PendingWindowInDays": 7})
    engine.clock.advance(8 * 86400)
    assert engine.sweep_deletions() == 1
    assert engine.authorization_generation(key) is None


def test_a_database_from_before_the_counter_is_upgraded_and_reads_generation_0(tmp_path: Path) -> None:
    eng = make_engine(tmp_path)
    try:
        key = cmk(eng)["Arn"]
    finally:
        eng.close()
        eng.db.dispose()
    # As schema version 3 left it: no auth_generation column.
    db = Database(f"sqlite:///{tmp_path / 'metadata.db'}")
    with db.begin() as conn:
        conn.execute(text("ALTER TABLE kms_keys DROP COLUMN auth_generation"))
        conn.execute(text("UPDATE schema_version SET version = 3"))
    db.dispose()
    eng = make_engine(tmp_path)
    try:
        assert eng.authorization_generation(key) == 0
        kms_op(eng, "DisableKey", CA, {"KeyId": key})
        assert eng.authorization_generation(key) == 1
    finally:
        eng.close()
        eng.db.dispose()

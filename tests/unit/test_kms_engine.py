"""The KMS key engine directly (no HTTP): the API the EC2/EBS side calls "via ec2", the key
store at rest, lazy deletion, and the audit trail. SPEC R-KEY-1, R-KEY-3, R-KEY-5..8."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from ebscrypt.clock import Clock
from ebscrypt.context import Caller, Runtime, Settings
from ebscrypt.engines.kms import KeyEngine, open_engine
from ebscrypt.engines.kms.audit import print_log, read_events
from ebscrypt.engines.kms.keystore import RootKeyError
from ebscrypt.errors import ServiceError
from ebscrypt.storage.db import Database
from tests.helpers import kms_op, kms_op_of

A, B = "111111111111", "222222222222"
REGION = "us-east-1"
VIA = f"ec2.{REGION}.amazonaws.com"
CA = Caller(A, REGION)
CB = Caller(B, REGION)


def make_engine(data_dir: Path, clock: Clock | None = None) -> KeyEngine:
    settings = Settings(data_dir=data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    rt = Runtime(settings=settings, db=Database(settings.database_url), clock=clock or Clock(), jobs=None)  # type: ignore[arg-type]
    return open_engine(rt)


@pytest.fixture
def engine(tmp_path: Path) -> KeyEngine:
    eng = make_engine(tmp_path / "data")
    yield eng
    eng.close()
    eng.db.dispose()


def code_of(fn, *a, **kw) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(ServiceError) as exc:
        fn(*a, **kw)
    return exc.value.code


def cmk(engine: KeyEngine, caller: Caller = CA, **params) -> dict:  # type: ignore[no-untyped-def]
    return kms_op(engine, "CreateKey", caller, params)["KeyMetadata"]


# ------------------------------------------------------------------ cross-member API


def test_default_ebs_key_is_created_once_per_account_and_region(engine: KeyEngine) -> None:
    k1 = engine.default_ebs_key(A, REGION)
    k2 = engine.default_ebs_key(A, REGION)
    assert k1 == k2
    assert k1.key_manager == "AWS" and k1.key_spec == "SYMMETRIC_DEFAULT" and k1.state == "Enabled"
    assert k1.arn == f"arn:aws:kms:{REGION}:{A}:key/{k1.key_id}"
    assert engine.default_ebs_key(B, REGION).key_id != k1.key_id
    assert engine.default_ebs_key(A, "eu-west-1").key_id != k1.key_id
    assert engine.describe_key(CA, "alias/aws/ebs").key_id == k1.key_id


def test_data_key_round_trip_via_ec2_with_the_managed_key(engine: KeyEngine) -> None:
    ec = {"aws:ebs:id": "vol-0123456789abcdef0"}
    arn, blob = engine.generate_data_key_without_plaintext(CA, "alias/aws/ebs", encryption_context=ec, via_service=VIA)
    key_arn, plaintext = engine.decrypt(CA, blob, encryption_context=ec, via_service=VIA)
    assert key_arn == arn and len(plaintext) == 32
    # the same call made directly (not through EC2) is refused by the managed key's policy
    assert code_of(engine.decrypt, CA, blob, encryption_context=ec, via_service=None) == "AccessDeniedException"
    # another account cannot use A's managed key even through EC2
    assert code_of(engine.decrypt, CB, blob, encryption_context=ec, via_service=VIA) in (
        "AccessDeniedException",
        "InvalidCiphertextException",
    )
    # a different context fails
    assert code_of(engine.decrypt, CA, blob, encryption_context={}, via_service=VIA) == "InvalidCiphertextException"


def test_describe_key_accepts_all_reference_forms(engine: KeyEngine) -> None:
    md = cmk(engine)
    kms_op(engine, "CreateAlias", CA, {"AliasName": "alias/golden", "TargetKeyId": md["KeyId"]})
    for ref in (md["KeyId"], md["Arn"], "alias/golden", f"arn:aws:kms:{REGION}:{A}:alias/golden"):
        assert engine.describe_key(CA, ref).key_id == md["KeyId"]
    assert code_of(engine.describe_key, CA, "alias/nope") == "NotFoundException"
    assert code_of(engine.describe_key, CA, "00000000-0000-0000-0000-000000000000") == "NotFoundException"
    # a bare key id names a key of the caller's own account only
    assert code_of(engine.describe_key, CB, md["KeyId"]) == "NotFoundException"
    # a key ARN of another account is found, then its policy decides (default: refused)
    assert code_of(engine.describe_key, CB, md["Arn"]) == "AccessDeniedException"


def test_cross_account_use_needs_the_key_policy(engine: KeyEngine) -> None:
    md = cmk(engine)
    arn, blob = engine.generate_data_key_without_plaintext(CA, md["Arn"], encryption_context=None, via_service=VIA)
    assert code_of(engine.decrypt, CB, blob, encryption_context=None, via_service=VIA) == "AccessDeniedException"
    assert code_of(engine.create_grant_for_service, CB, md["Arn"], via_service=VIA, operations=["Decrypt"]) == (
        "AccessDeniedException"
    )
    policy = json.loads(kms_op(engine, "GetKeyPolicy", CA, {"KeyId": md["KeyId"]})["Policy"])
    policy["Statement"].append(
        {
            "Sid": "share with B",
            "Effect": "Allow",
            "Principal": {"AWS": f"arn:aws:iam::{B}:root"},
            "Action": ["kms:Decrypt", "kms:DescribeKey", "kms:CreateGrant", "kms:ReEncrypt*",
                       "kms:GenerateDataKeyWithoutPlaintext"],
            "Resource": "*",
        }
    )
    kms_op(engine, "PutKeyPolicy", CA, {"KeyId": md["KeyId"], "Policy": json.dumps(policy)})
    assert engine.decrypt(CB, blob, encryption_context=None, via_service=VIA)[0] == arn
    assert engine.describe_key(CB, md["Arn"]).key_id == md["KeyId"]
    grant_id = engine.create_grant_for_service(CB, md["Arn"], via_service=VIA, operations=["Decrypt"])
    assert len(grant_id) == 64
    # asking again (every attach does) returns the same grant instead of piling up grants
    assert engine.create_grant_for_service(CB, md["Arn"], via_service=VIA, operations=["Decrypt"]) == grant_id
    assert engine.create_grant_for_service(CA, md["Arn"], via_service=VIA, operations=["Decrypt"]) != grant_id
    grants = kms_op(engine, "ListGrants", CA, {"KeyId": md["KeyId"]})["Grants"]
    assert len(grants) == 2
    mine = next(g for g in grants if g["GrantId"] == grant_id)
    assert mine["GranteePrincipal"] == VIA and mine["IssuingAccount"] == f"arn:aws:iam::{B}:root"


def test_service_grant_alone_lets_ec2_decrypt(engine: KeyEngine) -> None:
    # A key policy that allows account A only CreateGrant (for AWS resources) + management.
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Principal": {"AWS": A}, "Resource": "*",
             "Action": ["kms:PutKeyPolicy", "kms:GetKeyPolicy", "kms:DescribeKey", "kms:Encrypt"]},
            {"Effect": "Allow", "Principal": {"AWS": A}, "Resource": "*", "Action": "kms:CreateGrant",
             "Condition": {"Bool": {"kms:GrantIsForAWSResource": "true"}}},
        ],
    }
    md = cmk(engine, Policy=json.dumps(policy))
    blob = kms_op(engine, "Encrypt", CA, {"KeyId": md["KeyId"], "Plaintext": b"k" * 32})["CiphertextBlob"]
    assert code_of(engine.decrypt, CA, blob, encryption_context=None, via_service=VIA) == "AccessDeniedException"
    # CreateGrant directly (GrantIsForAWSResource false) is refused; via the service it works
    assert code_of(
        kms_op_of(engine, "CreateGrant"), CA, {"KeyId": md["KeyId"], "GranteePrincipal": VIA, "Operations": ["Decrypt"]}
    ) == "AccessDeniedException"
    engine.create_grant_for_service(CA, md["KeyId"], via_service=VIA, operations=["Decrypt"])
    assert engine.decrypt(CA, blob, encryption_context=None, via_service=VIA)[1] == b"k" * 32
    # the grant is for the service: the same principal directly is still refused
    assert code_of(engine.decrypt, CA, blob, encryption_context=None, via_service=None) == "AccessDeniedException"


def test_key_states_disabled_pending_and_destroyed(tmp_path: Path) -> None:
    clock = Clock()
    engine = make_engine(tmp_path / "d", clock)
    md = cmk(engine)
    _arn, blob = engine.generate_data_key_without_plaintext(CA, md["KeyId"], encryption_context=None, via_service=VIA)
    kms_op(engine, "DisableKey", CA, {"KeyId": md["KeyId"]})
    assert code_of(engine.decrypt, CA, blob, encryption_context=None, via_service=VIA) == "DisabledException"
    assert code_of(
        engine.generate_data_key_without_plaintext, CA, md["KeyId"], encryption_context=None, via_service=VIA
    ) == "DisabledException"
    kms_op(engine, "EnableKey", CA, {"KeyId": md["KeyId"]})
    out = kms_op(engine, "ScheduleKeyDeletion", CA, {"KeyId": md["KeyId"], "PendingWindowInDays": 7})
    assert out["KeyState"] == "PendingDeletion"
    assert code_of(engine.decrypt, CA, blob, encryption_context=None, via_service=VIA) == "KMSInvalidStateException"
    clock.advance(6 * 86400)
    assert engine.describe_key(CA, md["KeyId"]).state == "PendingDeletion"
    clock.advance(1 * 86400 + 1)
    assert code_of(engine.describe_key, CA, md["KeyId"]) == "NotFoundException"
    assert code_of(engine.decrypt, CA, blob, encryption_context=None, via_service=VIA) == "InvalidCiphertextException"
    engine.close()


def test_expired_keys_are_destroyed_when_the_engine_opens(tmp_path: Path) -> None:
    clock = Clock()
    engine = make_engine(tmp_path / "d", clock)
    md = cmk(engine)
    kms_op(engine, "ScheduleKeyDeletion", CA, {"KeyId": md["KeyId"], "PendingWindowInDays": 30})
    engine.close()
    clock.advance(31 * 86400)
    engine2 = make_engine(tmp_path / "d", clock)
    from sqlalchemy import select

    from ebscrypt.storage.tables.kms import kms_key_material, kms_keys

    with engine2.db.read() as conn:
        assert conn.execute(select(kms_keys)).all() == []
        assert conn.execute(select(kms_key_material)).all() == []


def test_asymmetric_keys_are_refused_for_data_keys(engine: KeyEngine) -> None:
    md = cmk(engine, KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")
    assert code_of(
        engine.generate_data_key_without_plaintext, CA, md["KeyId"], encryption_context=None, via_service=VIA
    ) == "InvalidKeyUsageException"
    assert engine.describe_key(CA, md["KeyId"]).key_spec == "ECC_NIST_P256"


# --------------------------------------------------------------------- key store


def test_root_key_file_is_0600_and_reused(tmp_path: Path) -> None:
    d = tmp_path / "d"
    engine = make_engine(d)
    mode = stat.S_IMODE(os.stat(d / "root.key").st_mode)
    assert mode == 0o600
    assert len((d / "root.key").read_bytes()) == 32
    md = cmk(engine)
    blob = kms_op(engine, "Encrypt", CA, {"KeyId": md["KeyId"], "Plaintext": b"secret"})["CiphertextBlob"]
    engine.close()
    engine2 = make_engine(d)  # a restart: same root key, material unwrapped again
    assert kms_op(engine2, "Decrypt", CA, {"CiphertextBlob": blob})["Plaintext"] == b"secret"


def test_wrong_root_key_cannot_unwrap(tmp_path: Path) -> None:
    d = tmp_path / "d"
    engine = make_engine(d)
    md = cmk(engine)
    blob = kms_op(engine, "Encrypt", CA, {"KeyId": md["KeyId"], "Plaintext": b"secret"})["CiphertextBlob"]
    engine.close()
    (d / "root.key").chmod(0o600)
    (d / "root.key").write_bytes(os.urandom(32))
    # the database's material is wrapped by another root key: refused at start, with why
    with pytest.raises(RootKeyError, match="cannot unwrap this database's key material"):
        make_engine(d)
    assert blob


def test_no_key_material_or_data_key_on_disk_in_plaintext(tmp_path: Path) -> None:
    d = tmp_path / "d"
    engine = make_engine(d)
    md = cmk(engine)
    out = kms_op(engine, "GenerateDataKey", CA, {"KeyId": md["KeyId"], "KeySpec": "AES_256"})
    engine.default_ebs_key(A, REGION)
    rsa = cmk(engine, KeySpec="RSA_2048", KeyUsage="ENCRYPT_DECRYPT")
    secrets = [out["Plaintext"], *engine.materials.plaintexts()]
    assert len(secrets) >= 4
    engine.close()
    engine.db.dispose()
    blobs = b"".join(p.read_bytes() for p in d.rglob("*") if p.is_file() and p.name != "root.key")
    for s in secrets:
        assert s not in blobs
        assert s[:16] not in blobs
    assert rsa["KeySpec"] == "RSA_2048"


# -------------------------------------------------------------------------- audit


def test_audit_records_engine_use_with_invoked_by(engine: KeyEngine, capsys: pytest.CaptureFixture[str]) -> None:
    ec = {"aws:ebs:id": "vol-1"}
    _arn, blob = engine.generate_data_key_without_plaintext(CA, "alias/aws/ebs", encryption_context=ec, via_service=VIA)
    engine.decrypt(CA, blob, encryption_context=ec, via_service=VIA)
    with pytest.raises(ServiceError):
        engine.decrypt(CA, blob, encryption_context=ec, via_service=None)
    events = list(read_events(engine.runtime.settings.data_dir))
    assert [e["eventName"] for e in events] == ["GenerateDataKeyWithoutPlaintext", "Decrypt", "Decrypt"]
    gen, dec, refused = events
    assert gen["eventSource"] == "kms.amazonaws.com" and gen["awsRegion"] == REGION
    assert gen["userIdentity"]["invokedBy"] == "ec2.amazonaws.com"
    assert gen["userIdentity"]["accountId"] == A
    assert gen["requestParameters"]["encryptionContext"] == ec
    assert gen["resources"][0]["type"] == "AWS::KMS::Key"
    assert "errorCode" not in dec
    assert refused["errorCode"] == "AccessDeniedException"
    assert "invokedBy" not in refused["userIdentity"]
    for e in events:
        assert {"eventVersion", "eventTime", "eventID", "requestID", "readOnly"} <= set(e)
    assert print_log(engine.runtime.settings.data_dir) == 3
    assert capsys.readouterr().out.count("\n") == 3


def test_concurrent_use_keeps_audit_lines_whole(engine: KeyEngine) -> None:
    import threading

    md = cmk(engine)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(20):
                with engine.audited(CA, "GenerateDataKey", {"KeyId": md["KeyId"], "Policy": "p" * 9000}):
                    out = kms_op(engine, "GenerateDataKey", CA, {"KeyId": md["KeyId"], "NumberOfBytes": 32})
                _arn, pt = engine.decrypt(CA, out["CiphertextBlob"], encryption_context=None, via_service=None)
                assert pt == out["Plaintext"]
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    events = list(read_events(engine.runtime.settings.data_dir))  # every line parses
    assert len(events) == 4 * 20 * 2


def test_destroyed_key_leaves_no_wrapped_material_in_the_database(tmp_path: Path) -> None:
    """R-KEY-8: after the waiting period even the wrapped material is gone from the file."""
    from sqlalchemy import select

    from ebscrypt.storage.tables.kms import kms_key_material

    clock = Clock()
    engine = make_engine(tmp_path / "d", clock)
    md = cmk(engine)
    with engine.db.read() as conn:
        wrapped = conn.execute(
            select(kms_key_material.c.wrapped).where(kms_key_material.c.key_id == md["KeyId"])
        ).scalar_one()
    kms_op(engine, "ScheduleKeyDeletion", CA, {"KeyId": md["KeyId"], "PendingWindowInDays": 7})
    clock.advance(8 * 86400)
    assert engine.sweep_deletions() == 1
    raw = engine.db.engine.raw_connection()
    try:
        raw.cursor().execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        raw.close()
    engine.db.dispose()
    data = b"".join(p.read_bytes() for p in (tmp_path / "d").iterdir() if p.is_file())
    assert wrapped not in data


def test_grant_with_create_grant_only_delegates_a_subset(engine: KeyEngine) -> None:
    md = cmk(engine)
    kms_op(engine, "CreateGrant",
        CA, {"KeyId": md["KeyId"], "GranteePrincipal": f"arn:aws:iam::{B}:root", "Operations": ["Decrypt", "CreateGrant"]}
    )
    c = Caller("333333333333", REGION)
    ok = kms_op(engine, "CreateGrant",
        CB, {"KeyId": md["Arn"], "GranteePrincipal": f"arn:aws:iam::{c.account}:root", "Operations": ["Decrypt"]}
    )
    assert len(ok["GrantId"]) == 64
    assert code_of(
        kms_op_of(engine, "CreateGrant"),
        CB,
        {"KeyId": md["Arn"], "GranteePrincipal": f"arn:aws:iam::{c.account}:root", "Operations": ["Encrypt"]},
    ) == "AccessDeniedException"
    blob = kms_op(engine, "Encrypt", CA, {"KeyId": md["KeyId"], "Plaintext": b"abc"})["CiphertextBlob"]
    assert kms_op(engine, "Decrypt", c, {"CiphertextBlob": blob})["Plaintext"] == b"abc"


def test_two_engines_on_one_database_share_the_managed_key(tmp_path: Path) -> None:
    """Scale-out: several server processes over one metadata store make one alias/aws/ebs."""
    import threading

    d = tmp_path / "d"
    engines = [make_engine(d), make_engine(d)]
    found: list[str] = []

    def get(e: KeyEngine) -> None:
        found.append(e.default_ebs_key("555555555555", REGION).key_id)

    threads = [threading.Thread(target=get, args=(engines[i % 2],)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(found) == 6 and len(set(found)) == 1
    # what one engine wraps, the other (same root key file) unwraps
    md = cmk(engines[0])
    blob = kms_op(engines[0], "Encrypt", CA, {"KeyId": md["KeyId"], "Plaintext": b"shared"})["CiphertextBlob"]
    assert kms_op(engines[1], "Decrypt", CA, {"CiphertextBlob": blob})["Plaintext"] == b"shared"

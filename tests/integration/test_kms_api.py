"""KMS through real boto3 clients against a live server (SPEC §4: R-KEY-3, R-KEY-5..8, R-WIRE).

Each test uses its own account ids where listing results matter, so tests do not see each
other's keys on the shared session server. Tests that move the clock start their own server.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any, Callable

import pytest
from botocore.exceptions import ClientError
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding

A = "111111111111"
B = "222222222222"
C = "333333333333"
REGION = "us-east-1"


def unvalidated(client: Any) -> Any:
    """The same identity without botocore's client-side checks, to reach server validation."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "kms",
        endpoint_url=client.meta.endpoint_url,
        region_name=client.meta.region_name,
        aws_access_key_id=client._request_signer._credentials.access_key,
        aws_secret_access_key="ebscrypt-dev-secret",
        config=Config(parameter_validation=False, retries={"max_attempts": 1}),
    )


def err(fn: Callable[..., Any], **kw: Any) -> tuple[str, str]:
    with pytest.raises(ClientError) as exc:
        fn(**kw)
    e = exc.value.response["Error"]
    return e["Code"], e.get("Message", "")


def policy_with(account: str, *extra: dict) -> str:
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": "Enable IAM User Permissions",
                    "Effect": "Allow",
                    "Principal": {"AWS": f"arn:aws:iam::{account}:root"},
                    "Action": "kms:*",
                    "Resource": "*",
                },
                *extra,
            ],
        }
    )


@pytest.fixture
def kms_a(aws: Callable[..., Any]) -> Any:
    return aws("kms", account=A)


@pytest.fixture
def kms_b(aws: Callable[..., Any]) -> Any:
    return aws("kms", account=B)


# ------------------------------------------------------------------ keys and aliases


def test_create_describe_list_keys_with_paging(aws: Callable[..., Any]) -> None:
    kms = aws("kms", account="444444444401")
    ids = [kms.create_key(Description=f"k{i}")["KeyMetadata"]["KeyId"] for i in range(5)]
    md = kms.describe_key(KeyId=ids[0])["KeyMetadata"]
    assert md["KeyState"] == "Enabled" and md["Enabled"] is True
    assert md["KeyManager"] == "CUSTOMER" and md["KeySpec"] == "SYMMETRIC_DEFAULT"
    assert md["Arn"] == f"arn:aws:kms:{REGION}:444444444401:key/{ids[0]}"
    assert md["EncryptionAlgorithms"] == ["SYMMETRIC_DEFAULT"]
    page1 = kms.list_keys(Limit=2)
    assert page1["Truncated"] is True and len(page1["Keys"]) == 2
    seen = [k["KeyId"] for k in page1["Keys"]]
    marker = page1["NextMarker"]
    while marker:
        page = kms.list_keys(Limit=2, Marker=marker)
        seen += [k["KeyId"] for k in page["Keys"]]
        marker = page.get("NextMarker")
    assert sorted(seen) == sorted(ids)
    all_ids = [k["KeyId"] for p in kms.get_paginator("list_keys").paginate(PaginationConfig={"PageSize": 3}) for k in p["Keys"]]
    assert sorted(all_ids) == sorted(ids)
    # keys are regional
    assert aws("kms", account="444444444401", region="eu-west-1").list_keys()["Keys"] == []
    assert err(aws("kms", account="444444444401", region="eu-west-1").describe_key, KeyId=ids[0])[0] == "NotFoundException"
    kms.update_key_description(KeyId=ids[1], Description="renamed")
    assert kms.describe_key(KeyId=ids[1])["KeyMetadata"]["Description"] == "renamed"
    assert err(kms.list_keys, Marker="garbage!")[0] == "InvalidMarkerException"


def test_aliases(aws: Callable[..., Any]) -> None:
    kms = aws("kms", account="444444444402")
    k1 = kms.create_key()["KeyMetadata"]
    k2 = kms.create_key()["KeyMetadata"]
    kms.create_alias(AliasName="alias/app", TargetKeyId=k1["KeyId"])
    kms.create_alias(AliasName="alias/other", TargetKeyId=k1["Arn"])
    assert kms.describe_key(KeyId="alias/app")["KeyMetadata"]["KeyId"] == k1["KeyId"]
    alias_arn = f"arn:aws:kms:{REGION}:444444444402:alias/app"
    assert kms.describe_key(KeyId=alias_arn)["KeyMetadata"]["KeyId"] == k1["KeyId"]
    assert err(kms.create_alias, AliasName="alias/app", TargetKeyId=k2["KeyId"])[0] == "AlreadyExistsException"
    assert err(kms.create_alias, AliasName="alias/aws/mine", TargetKeyId=k2["KeyId"])[0] == "NotAuthorizedException"
    assert err(kms.create_alias, AliasName="noprefix", TargetKeyId=k2["KeyId"])[0] == "ValidationException"
    kms.update_alias(AliasName="alias/app", TargetKeyId=k2["KeyId"])
    assert kms.describe_key(KeyId="alias/app")["KeyMetadata"]["KeyId"] == k2["KeyId"]
    names = {a["AliasName"]: a for a in kms.list_aliases()["Aliases"]}
    assert names["alias/app"]["TargetKeyId"] == k2["KeyId"]
    assert names["alias/app"]["AliasArn"] == alias_arn
    only_k1 = kms.list_aliases(KeyId=k1["KeyId"])["Aliases"]
    assert [a["AliasName"] for a in only_k1] == ["alias/other"]
    page = kms.list_aliases(Limit=1)
    assert page["Truncated"] is True and len(page["Aliases"]) == 1
    kms.delete_alias(AliasName="alias/app")
    assert err(kms.describe_key, KeyId="alias/app")[0] == "NotFoundException"
    assert err(kms.delete_alias, AliasName="alias/app")[0] == "NotFoundException"


def test_tags(kms_a: Any) -> None:
    key = kms_a.create_key(Tags=[{"TagKey": "team", "TagValue": "a"}])["KeyMetadata"]["KeyId"]
    kms_a.tag_resource(KeyId=key, Tags=[{"TagKey": "env", "TagValue": "dev"}, {"TagKey": "team", "TagValue": "b"}])
    tags = kms_a.list_resource_tags(KeyId=key)["Tags"]
    assert tags == [{"TagKey": "env", "TagValue": "dev"}, {"TagKey": "team", "TagValue": "b"}]
    kms_a.untag_resource(KeyId=key, TagKeys=["env"])
    assert kms_a.list_resource_tags(KeyId=key)["Tags"] == [{"TagKey": "team", "TagValue": "b"}]
    assert err(kms_a.tag_resource, KeyId=key, Tags=[{"TagKey": "aws:x", "TagValue": "y"}])[0] == "TagException"


# ------------------------------------------------------------------- cryptography


def test_encrypt_decrypt_with_and_without_key_id(kms_a: Any) -> None:
    key = kms_a.create_key()["KeyMetadata"]
    ct = kms_a.encrypt(KeyId=key["KeyId"], Plaintext=b"hello", EncryptionContext={"purpose": "test"})
    assert ct["KeyId"] == key["Arn"] and ct["EncryptionAlgorithm"] == "SYMMETRIC_DEFAULT"
    out = kms_a.decrypt(CiphertextBlob=ct["CiphertextBlob"], EncryptionContext={"purpose": "test"})
    assert out["Plaintext"] == b"hello" and out["KeyId"] == key["Arn"]
    out = kms_a.decrypt(CiphertextBlob=ct["CiphertextBlob"], EncryptionContext={"purpose": "test"}, KeyId=key["Arn"])
    assert out["Plaintext"] == b"hello"
    other = kms_a.create_key()["KeyMetadata"]["KeyId"]
    code, _ = err(kms_a.decrypt, CiphertextBlob=ct["CiphertextBlob"], EncryptionContext={"purpose": "test"}, KeyId=other)
    assert code == "IncorrectKeyException"


def test_tamper_and_wrong_context_are_refused(kms_a: Any) -> None:
    key = kms_a.create_key()["KeyMetadata"]["KeyId"]
    blob = kms_a.encrypt(KeyId=key, Plaintext=b"x" * 100, EncryptionContext={"a": "1"})["CiphertextBlob"]
    for i in (len(blob) - 1, len(blob) // 2, 40, 0):
        bad = bytearray(blob)
        bad[i] ^= 0x01
        assert err(kms_a.decrypt, CiphertextBlob=bytes(bad), EncryptionContext={"a": "1"})[0] == "InvalidCiphertextException"
    assert err(kms_a.decrypt, CiphertextBlob=blob[:-3], EncryptionContext={"a": "1"})[0] == "InvalidCiphertextException"
    for ctx in ({}, {"a": "2"}, {"a": "1", "b": "2"}, {"A": "1"}):
        assert err(kms_a.decrypt, CiphertextBlob=blob, EncryptionContext=ctx)[0] == "InvalidCiphertextException"
    assert err(kms_a.decrypt, CiphertextBlob=b"not a ciphertext at all")[0] == "InvalidCiphertextException"
    assert kms_a.decrypt(CiphertextBlob=blob, EncryptionContext={"a": "1"})["Plaintext"] == b"x" * 100


def test_generate_data_key_variants(kms_a: Any) -> None:
    key = kms_a.create_key()["KeyMetadata"]["KeyId"]
    r = kms_a.generate_data_key(KeyId=key, KeySpec="AES_256")
    assert len(r["Plaintext"]) == 32
    assert kms_a.decrypt(CiphertextBlob=r["CiphertextBlob"])["Plaintext"] == r["Plaintext"]
    assert len(kms_a.generate_data_key(KeyId=key, KeySpec="AES_128")["Plaintext"]) == 16
    assert len(kms_a.generate_data_key(KeyId=key, NumberOfBytes=64)["Plaintext"]) == 64
    w = kms_a.generate_data_key_without_plaintext(KeyId=key, KeySpec="AES_256", EncryptionContext={"k": "v"})
    assert "Plaintext" not in w
    assert len(kms_a.decrypt(CiphertextBlob=w["CiphertextBlob"], EncryptionContext={"k": "v"})["Plaintext"]) == 32
    assert err(kms_a.generate_data_key, KeyId=key)[0] == "ValidationException"
    assert err(kms_a.generate_data_key, KeyId=key, KeySpec="AES_256", NumberOfBytes=32)[0] == "ValidationException"
    assert err(kms_a.generate_data_key, KeyId=key, NumberOfBytes=2000)[0] == "ValidationException"
    assert len(kms_a.generate_random(NumberOfBytes=48)["Plaintext"]) == 48


def test_reencrypt(kms_a: Any) -> None:
    k1 = kms_a.create_key()["KeyMetadata"]
    k2 = kms_a.create_key()["KeyMetadata"]
    blob = kms_a.encrypt(KeyId=k1["KeyId"], Plaintext=b"move me", EncryptionContext={"s": "1"})["CiphertextBlob"]
    r = kms_a.re_encrypt(CiphertextBlob=blob, SourceEncryptionContext={"s": "1"}, DestinationKeyId=k2["KeyId"],
                         DestinationEncryptionContext={"d": "2"})
    assert r["SourceKeyId"] == k1["Arn"] and r["KeyId"] == k2["Arn"]
    out = kms_a.decrypt(CiphertextBlob=r["CiphertextBlob"], EncryptionContext={"d": "2"})
    assert out["Plaintext"] == b"move me" and out["KeyId"] == k2["Arn"]


def test_encrypt_limits(kms_a: Any) -> None:
    key = kms_a.create_key()["KeyMetadata"]["KeyId"]
    kms_a.encrypt(KeyId=key, Plaintext=b"x" * 4096)
    assert err(kms_a.encrypt, KeyId=key, Plaintext=b"x" * 4097)[0] == "ValidationException"


# ------------------------------------------------------------------ asymmetric keys


def test_rsa_encrypt_decrypt_and_too_large_plaintext(kms_a: Any) -> None:
    key = kms_a.create_key(KeySpec="RSA_2048", KeyUsage="ENCRYPT_DECRYPT")["KeyMetadata"]
    assert key["EncryptionAlgorithms"] == ["RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256"]
    ct = kms_a.encrypt(KeyId=key["KeyId"], Plaintext=b"p" * 190, EncryptionAlgorithm="RSAES_OAEP_SHA_256")
    out = kms_a.decrypt(CiphertextBlob=ct["CiphertextBlob"], KeyId=key["KeyId"], EncryptionAlgorithm="RSAES_OAEP_SHA_256")
    assert out["Plaintext"] == b"p" * 190
    code, msg = err(kms_a.encrypt, KeyId=key["KeyId"], Plaintext=b"p" * 191, EncryptionAlgorithm="RSAES_OAEP_SHA_256")
    assert code == "ValidationException" and "190" in msg
    kms_a.encrypt(KeyId=key["KeyId"], Plaintext=b"p" * 214, EncryptionAlgorithm="RSAES_OAEP_SHA_1")
    # the public key from GetPublicKey encrypts data KMS can decrypt
    pub = serialization.load_der_public_key(kms_a.get_public_key(KeyId=key["KeyId"])["PublicKey"])
    local = pub.encrypt(b"offline", padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None))
    out = kms_a.decrypt(CiphertextBlob=local, KeyId=key["KeyId"], EncryptionAlgorithm="RSAES_OAEP_SHA_256")
    assert out["Plaintext"] == b"offline"
    # symmetric algorithm against an RSA key, and RSA keys for data keys, are refused
    assert err(kms_a.encrypt, KeyId=key["KeyId"], Plaintext=b"x")[0] == "InvalidKeyUsageException"
    assert err(kms_a.generate_data_key, KeyId=key["KeyId"], KeySpec="AES_256")[0] == "InvalidKeyUsageException"


def test_sign_verify_ecc_and_rsa(kms_a: Any) -> None:
    ecc = kms_a.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]
    assert ecc["SigningAlgorithms"] == ["ECDSA_SHA_256"]
    sig = kms_a.sign(KeyId=ecc["KeyId"], Message=b"msg", SigningAlgorithm="ECDSA_SHA_256")["Signature"]
    assert kms_a.verify(KeyId=ecc["KeyId"], Message=b"msg", Signature=sig, SigningAlgorithm="ECDSA_SHA_256")["SignatureValid"]
    code, _ = err(kms_a.verify, KeyId=ecc["KeyId"], Message=b"other", Signature=sig, SigningAlgorithm="ECDSA_SHA_256")
    assert code == "KMSInvalidSignatureException"
    pub = serialization.load_der_public_key(kms_a.get_public_key(KeyId=ecc["KeyId"])["PublicKey"])
    assert isinstance(pub, ec.EllipticCurvePublicKey)
    pub.verify(sig, b"msg", ec.ECDSA(hashes.SHA256()))
    # wrong key usage
    assert err(kms_a.encrypt, KeyId=ecc["KeyId"], Plaintext=b"x")[0] == "InvalidKeyUsageException"
    sym = kms_a.create_key()["KeyMetadata"]["KeyId"]
    assert err(kms_a.sign, KeyId=sym, Message=b"m", SigningAlgorithm="ECDSA_SHA_256")[0] == "InvalidKeyUsageException"
    rsa_key = kms_a.create_key(KeySpec="RSA_3072", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["KeyId"]
    import hashlib

    digest = hashlib.sha256(b"payload").digest()
    sig = kms_a.sign(KeyId=rsa_key, Message=digest, MessageType="DIGEST", SigningAlgorithm="RSASSA_PSS_SHA_256")["Signature"]
    assert kms_a.verify(KeyId=rsa_key, Message=b"payload", Signature=sig, SigningAlgorithm="RSASSA_PSS_SHA_256")["SignatureValid"]
    assert err(kms_a.create_key, KeySpec="ECC_NIST_P256", KeyUsage="ENCRYPT_DECRYPT")[0] == "ValidationException"
    assert err(kms_a.get_public_key, KeyId=sym)[0] == "UnsupportedOperationException"


# ------------------------------------------------------------------------ policies


def test_cross_account_decrypt_refused_then_allowed_after_put_key_policy(
    aws: Callable[..., Any], kms_a: Any, kms_b: Any
) -> None:
    key = kms_a.create_key()["KeyMetadata"]
    blob = kms_a.encrypt(KeyId=key["KeyId"], Plaintext=b"shared secret")["CiphertextBlob"]
    code, msg = err(kms_b.decrypt, CiphertextBlob=blob)
    assert code == "AccessDeniedException"
    assert msg == (
        f"User: arn:aws:iam::{B}:root is not authorized to perform: kms:Decrypt on resource: {key['Arn']} "
        "because no resource-based policy allows the kms:Decrypt action."
    )
    # by bare key id, another account's key does not exist for B
    assert err(kms_b.describe_key, KeyId=key["KeyId"])[0] == "NotFoundException"
    kms_a.put_key_policy(
        KeyId=key["KeyId"],
        PolicyName="default",
        Policy=policy_with(
            A,
            {"Sid": "B may decrypt", "Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{B}:root"},
             "Action": ["kms:Decrypt", "kms:DescribeKey"], "Resource": "*"},
        ),
    )
    assert kms_b.decrypt(CiphertextBlob=blob)["Plaintext"] == b"shared secret"
    assert kms_b.decrypt(CiphertextBlob=blob, KeyId=key["Arn"])["Plaintext"] == b"shared secret"
    assert kms_b.describe_key(KeyId=key["Arn"])["KeyMetadata"]["KeyId"] == key["KeyId"]
    # still no Encrypt for B, and a third account has nothing
    assert err(kms_b.encrypt, KeyId=key["Arn"], Plaintext=b"x")[0] == "AccessDeniedException"
    assert err(aws("kms", account=C).decrypt, CiphertextBlob=blob)[0] == "AccessDeniedException"


def test_explicit_deny_beats_allow(kms_a: Any) -> None:
    key = kms_a.create_key()["KeyMetadata"]
    blob = kms_a.encrypt(KeyId=key["KeyId"], Plaintext=b"x")["CiphertextBlob"]
    kms_a.put_key_policy(
        KeyId=key["KeyId"],
        PolicyName="default",
        Policy=policy_with(
            A,
            {"Sid": "no decrypt", "Effect": "Deny", "Principal": "*", "Action": "kms:Decrypt", "Resource": "*"},
        ),
    )
    code, msg = err(kms_a.decrypt, CiphertextBlob=blob)
    assert code == "AccessDeniedException" and "explicit deny" in msg
    kms_a.encrypt(KeyId=key["KeyId"], Plaintext=b"still allowed")


def test_policy_conditions_on_encryption_context(kms_a: Any) -> None:
    key = kms_a.create_key()["KeyMetadata"]["KeyId"]
    kms_a.put_key_policy(
        KeyId=key,
        PolicyName="default",
        Policy=json.dumps({
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Principal": {"AWS": A}, "Action": "kms:*", "Resource": "*",
                 "Condition": {"StringEqualsIfExists": {"kms:EncryptionContext:dept": "it"}}},
            ],
        }),
    )
    kms_a.encrypt(KeyId=key, Plaintext=b"x", EncryptionContext={"dept": "it"})
    assert err(kms_a.encrypt, KeyId=key, Plaintext=b"x", EncryptionContext={"dept": "hr"})[0] == "AccessDeniedException"


def test_get_list_put_key_policy_and_malformed(kms_a: Any) -> None:
    key = kms_a.create_key()["KeyMetadata"]["KeyId"]
    default = json.loads(kms_a.get_key_policy(KeyId=key, PolicyName="default")["Policy"])
    assert default["Statement"][0]["Principal"] == {"AWS": f"arn:aws:iam::{A}:root"}
    assert default["Statement"][0]["Action"] == "kms:*"
    assert kms_a.list_key_policies(KeyId=key)["PolicyNames"] == ["default"]
    for bad in ("{not json", json.dumps({"Statement": [{"Effect": "Allow", "Principal": "*", "Action": "kms:*",
                                                       "Resource": "*", "Bogus": 1}]})):
        assert err(kms_a.put_key_policy, KeyId=key, PolicyName="default", Policy=bad)[0] == "MalformedPolicyDocumentException"
    assert err(kms_a.create_key, Policy="nope")[0] == "MalformedPolicyDocumentException"
    # lockout safety check: a policy that would lock the caller out is refused unless bypassed
    lockout = json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"AWS": B}, "Action": "kms:*", "Resource": "*"}]})
    code, msg = err(kms_a.put_key_policy, KeyId=key, PolicyName="default", Policy=lockout)
    assert code == "MalformedPolicyDocumentException" and "will not allow you to update the key policy" in msg
    kms_a.put_key_policy(KeyId=key, PolicyName="default", Policy=lockout, BypassPolicyLockoutSafetyCheck=True)
    assert err(kms_a.describe_key, KeyId=key)[0] == "AccessDeniedException"


# --------------------------------------------------------------------------- grants


def test_grant_lets_another_account_use_a_key_and_revoke_ends_it(kms_a: Any, kms_b: Any) -> None:
    key = kms_a.create_key()["KeyMetadata"]
    blob = kms_a.encrypt(KeyId=key["KeyId"], Plaintext=b"for B", EncryptionContext={"vol": "v1"})["CiphertextBlob"]
    assert err(kms_b.decrypt, CiphertextBlob=blob, EncryptionContext={"vol": "v1"})[0] == "AccessDeniedException"
    g = kms_a.create_grant(
        KeyId=key["KeyId"],
        GranteePrincipal=f"arn:aws:iam::{B}:root",
        Operations=["Decrypt", "GenerateDataKey"],
        Constraints={"EncryptionContextSubset": {"vol": "v1"}},
        Name="b-grant",
    )
    assert len(g["GrantId"]) == 64 and g["GrantToken"]
    out = kms_b.decrypt(CiphertextBlob=blob, EncryptionContext={"vol": "v1"}, GrantTokens=[g["GrantToken"]])
    assert out["Plaintext"] == b"for B"
    assert kms_b.decrypt(CiphertextBlob=blob, EncryptionContext={"vol": "v1"})["Plaintext"] == b"for B"
    # the constraint holds: another context is refused
    other = kms_b.generate_data_key(KeyId=key["Arn"], KeySpec="AES_256", EncryptionContext={"vol": "v1", "x": "y"})
    assert len(other["Plaintext"]) == 32
    code, _ = err(kms_b.generate_data_key, KeyId=key["Arn"], KeySpec="AES_256", EncryptionContext={"vol": "v2"})
    assert code == "AccessDeniedException"
    # operations not granted stay refused
    assert err(kms_b.encrypt, KeyId=key["Arn"], Plaintext=b"x", EncryptionContext={"vol": "v1"})[0] == "AccessDeniedException"
    listed = kms_a.list_grants(KeyId=key["KeyId"])["Grants"]
    assert [x["GrantId"] for x in listed] == [g["GrantId"]]
    assert listed[0]["GranteePrincipal"] == f"arn:aws:iam::{B}:root"
    assert listed[0]["IssuingAccount"] == f"arn:aws:iam::{A}:root"
    assert sorted(listed[0]["Operations"]) == ["Decrypt", "GenerateDataKey"]
    assert listed[0]["Constraints"] == {"EncryptionContextSubset": {"vol": "v1"}}
    # idempotent by name
    again = kms_a.create_grant(KeyId=key["KeyId"], GranteePrincipal=f"arn:aws:iam::{B}:root",
                               Operations=["Decrypt", "GenerateDataKey"],
                               Constraints={"EncryptionContextSubset": {"vol": "v1"}}, Name="b-grant")
    assert again["GrantId"] == g["GrantId"]
    kms_a.revoke_grant(KeyId=key["KeyId"], GrantId=g["GrantId"])
    assert err(kms_b.decrypt, CiphertextBlob=blob, EncryptionContext={"vol": "v1"})[0] == "AccessDeniedException"
    assert kms_a.list_grants(KeyId=key["KeyId"])["Grants"] == []
    assert err(kms_a.revoke_grant, KeyId=key["KeyId"], GrantId=g["GrantId"])[0] == "NotFoundException"
    # a revoked grant's token is no longer valid
    code, _ = err(kms_a.encrypt, KeyId=key["KeyId"], Plaintext=b"x", GrantTokens=[g["GrantToken"]])
    assert code == "InvalidGrantTokenException"


def test_retire_grant_and_list_retirable_grants_paging(aws: Callable[..., Any]) -> None:
    owner = aws("kms", account="444444444403")
    retirer = aws("kms", account="444444444404")
    retiring = "arn:aws:iam::444444444404:root"
    key = owner.create_key()["KeyMetadata"]["KeyId"]
    grants = [
        owner.create_grant(KeyId=key, GranteePrincipal="arn:aws:iam::444444444405:root", Operations=["Decrypt"],
                           RetiringPrincipal=retiring)
        for _ in range(3)
    ]
    page = retirer.list_retirable_grants(RetiringPrincipal=retiring, Limit=2)
    assert page["Truncated"] is True and len(page["Grants"]) == 2
    rest = retirer.list_retirable_grants(RetiringPrincipal=retiring, Limit=2, Marker=page["NextMarker"])
    assert rest["Truncated"] is False and len(rest["Grants"]) == 1
    lg = owner.list_grants(KeyId=key, Limit=1)
    assert lg["Truncated"] is True and len(lg["Grants"]) == 1
    assert lg["Grants"][0]["Name"] == ""  # an unnamed grant is listed with an empty Name, as AWS does
    # the grantee (without RetireGrant) may not retire; the retiring principal may, by token or id
    grantee = aws("kms", account="444444444405")
    assert err(grantee.retire_grant, GrantToken=grants[0]["GrantToken"])[0] == "AccessDeniedException"
    retirer.retire_grant(GrantToken=grants[0]["GrantToken"])
    retirer.retire_grant(KeyId=f"arn:aws:kms:{REGION}:444444444403:key/{key}", GrantId=grants[1]["GrantId"])
    assert [g["GrantId"] for g in owner.list_grants(KeyId=key)["Grants"]] == [grants[2]["GrantId"]]
    assert err(retirer.retire_grant, GrantToken="bogus-token")[0] == "InvalidGrantTokenException"
    assert err(owner.revoke_grant, KeyId=key, GrantId="not-a-grant-id")[0] == "InvalidGrantIdException"
    # only the retiring principal's own account may list its retirable grants
    assert err(grantee.list_retirable_grants, RetiringPrincipal=retiring)[0] == "AccessDeniedException"


def test_bad_grant_requests(kms_a: Any) -> None:
    key = kms_a.create_key()["KeyMetadata"]["KeyId"]
    assert err(kms_a.create_grant, KeyId=key, GranteePrincipal="nobody", Operations=["Decrypt"])[0] == "ValidationException"
    code, _ = err(kms_a.create_grant, KeyId=key, GranteePrincipal=f"arn:aws:iam::{B}:root", Operations=["DescribeKey"],
                  Constraints={"EncryptionContextSubset": {"a": "b"}})
    assert code == "ValidationException"


# ------------------------------------------------------------------------- rotation


def test_on_demand_rotation_keeps_old_ciphertexts_readable(kms_a: Any) -> None:
    key = kms_a.create_key()["KeyMetadata"]["KeyId"]
    old = kms_a.encrypt(KeyId=key, Plaintext=b"before rotation")["CiphertextBlob"]
    assert kms_a.list_key_rotations(KeyId=key)["Rotations"] == []
    kms_a.rotate_key_on_demand(KeyId=key)
    new = kms_a.encrypt(KeyId=key, Plaintext=b"after rotation")["CiphertextBlob"]
    assert old[17:33] != new[17:33]  # different backing material
    assert kms_a.decrypt(CiphertextBlob=old)["Plaintext"] == b"before rotation"
    assert kms_a.decrypt(CiphertextBlob=new)["Plaintext"] == b"after rotation"
    rotations = kms_a.list_key_rotations(KeyId=key)["Rotations"]
    assert [r["RotationType"] for r in rotations] == ["ON_DEMAND"]
    assert rotations[0]["KeyMaterialState"] == "CURRENT"
    current = kms_a.describe_key(KeyId=key)["KeyMetadata"]["CurrentKeyMaterialId"]
    assert current == rotations[0]["KeyMaterialId"]
    assert kms_a.decrypt(CiphertextBlob=new)["KeyMaterialId"] == current
    assert kms_a.decrypt(CiphertextBlob=old)["KeyMaterialId"] != current
    status = kms_a.get_key_rotation_status(KeyId=key)
    assert status["KeyRotationEnabled"] is False
    kms_a.enable_key_rotation(KeyId=key, RotationPeriodInDays=90)
    status = kms_a.get_key_rotation_status(KeyId=key)
    assert status["KeyRotationEnabled"] is True and status["RotationPeriodInDays"] == 90
    assert err(unvalidated(kms_a).enable_key_rotation, KeyId=key, RotationPeriodInDays=10)[0] == "ValidationException"
    kms_a.disable_key_rotation(KeyId=key)
    assert kms_a.get_key_rotation_status(KeyId=key)["KeyRotationEnabled"] is False
    rsa = kms_a.create_key(KeySpec="RSA_2048", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["KeyId"]
    assert err(kms_a.enable_key_rotation, KeyId=rsa)[0] == "UnsupportedOperationException"
    assert err(kms_a.rotate_key_on_demand, KeyId=rsa)[0] == "UnsupportedOperationException"


# ------------------------------------------------------------- states and deletion


def test_disable_enable_and_schedule_cancel(kms_a: Any) -> None:
    key = kms_a.create_key()["KeyMetadata"]
    blob = kms_a.encrypt(KeyId=key["KeyId"], Plaintext=b"x")["CiphertextBlob"]
    kms_a.disable_key(KeyId=key["KeyId"])
    assert kms_a.describe_key(KeyId=key["KeyId"])["KeyMetadata"]["KeyState"] == "Disabled"
    code, msg = err(kms_a.decrypt, CiphertextBlob=blob)
    assert code == "DisabledException" and key["Arn"] in msg
    kms_a.enable_key(KeyId=key["KeyId"])
    raw = unvalidated(kms_a)
    assert err(raw.schedule_key_deletion, KeyId=key["KeyId"], PendingWindowInDays=6)[0] == "ValidationException"
    assert err(raw.schedule_key_deletion, KeyId=key["KeyId"], PendingWindowInDays=31)[0] == "ValidationException"
    out = kms_a.schedule_key_deletion(KeyId=key["KeyId"], PendingWindowInDays=7)
    assert out["KeyState"] == "PendingDeletion" and out["PendingWindowInDays"] == 7
    md = kms_a.describe_key(KeyId=key["KeyId"])["KeyMetadata"]
    assert md["KeyState"] == "PendingDeletion" and "DeletionDate" in md
    code, msg = err(kms_a.decrypt, CiphertextBlob=blob)
    assert code == "KMSInvalidStateException" and msg == f"{key['Arn']} is pending deletion."
    assert err(kms_a.enable_key, KeyId=key["KeyId"])[0] == "KMSInvalidStateException"
    assert kms_a.cancel_key_deletion(KeyId=key["KeyId"])["KeyId"] == key["Arn"]
    assert kms_a.describe_key(KeyId=key["KeyId"])["KeyMetadata"]["KeyState"] == "Disabled"
    assert err(kms_a.cancel_key_deletion, KeyId=key["KeyId"])[0] == "KMSInvalidStateException"


def test_key_destroyed_after_waiting_period_and_auto_rotation(server_factory: Callable[..., Any]) -> None:
    srv = server_factory()
    kms = srv.client("kms", account=A)
    key = kms.create_key()["KeyMetadata"]
    rotating = kms.create_key()["KeyMetadata"]["KeyId"]
    kms.enable_key_rotation(KeyId=rotating, RotationPeriodInDays=90)
    before = kms.encrypt(KeyId=rotating, Plaintext=b"old")["CiphertextBlob"]
    blob = kms.encrypt(KeyId=key["KeyId"], Plaintext=b"doomed")["CiphertextBlob"]
    kms.create_alias(AliasName="alias/doomed", TargetKeyId=key["KeyId"])
    kms.schedule_key_deletion(KeyId=key["KeyId"], PendingWindowInDays=7)
    srv.advance_clock(6 * 86400)
    assert kms.describe_key(KeyId=key["KeyId"])["KeyMetadata"]["KeyState"] == "PendingDeletion"
    srv.advance_clock(2 * 86400)
    assert err(kms.describe_key, KeyId=key["KeyId"])[0] == "NotFoundException"
    assert err(kms.decrypt, CiphertextBlob=blob)[0] == "InvalidCiphertextException"
    assert err(kms.describe_key, KeyId="alias/doomed")[0] == "NotFoundException"
    assert key["KeyId"] not in [k["KeyId"] for k in kms.list_keys()["Keys"]]
    # 90+ days later the rotating key has rotated automatically; old data still decrypts
    srv.advance_clock(90 * 86400)
    rotations = kms.list_key_rotations(KeyId=rotating)["Rotations"]
    assert [r["RotationType"] for r in rotations] == ["AUTOMATIC"]
    after = kms.encrypt(KeyId=rotating, Plaintext=b"new")["CiphertextBlob"]
    assert before[17:33] != after[17:33]
    assert kms.decrypt(CiphertextBlob=before)["Plaintext"] == b"old"
    # a restart keeps everything readable (material is unwrapped again from the root key)
    srv.stop()
    srv.start()
    kms2 = srv.client("kms", account=A)
    assert kms2.decrypt(CiphertextBlob=before)["Plaintext"] == b"old"
    assert kms2.decrypt(CiphertextBlob=after)["Plaintext"] == b"new"


# ------------------------------------------------------------- AWS managed EBS key


def test_aws_managed_ebs_key(aws: Callable[..., Any]) -> None:
    kms = aws("kms", account="444444444406")
    md = kms.describe_key(KeyId="alias/aws/ebs")["KeyMetadata"]  # created on first reference
    assert md["KeyManager"] == "AWS" and md["KeyState"] == "Enabled"
    assert kms.describe_key(KeyId="alias/aws/ebs")["KeyMetadata"]["KeyId"] == md["KeyId"]
    # predefined aliases without a key yet have no TargetKeyId (as in AWS)
    aliases = {a["AliasName"]: a.get("TargetKeyId") for a in kms.list_aliases()["Aliases"]}
    assert aliases["alias/aws/ebs"] == md["KeyId"]
    policy = json.loads(kms.get_key_policy(KeyId=md["KeyId"], PolicyName="default")["Policy"])
    cond = policy["Statement"][0]["Condition"]["StringEquals"]
    assert cond == {"kms:ViaService": f"ec2.{REGION}.amazonaws.com", "kms:CallerAccount": "444444444406"}
    # direct cryptographic use and every change are refused
    assert err(kms.encrypt, KeyId="alias/aws/ebs", Plaintext=b"x")[0] == "AccessDeniedException"
    assert err(kms.generate_data_key, KeyId=md["KeyId"], KeySpec="AES_256")[0] == "AccessDeniedException"
    for call, kw in (
        (kms.disable_key, {}),
        (kms.schedule_key_deletion, {"PendingWindowInDays": 7}),
        (kms.put_key_policy, {"PolicyName": "default", "Policy": policy_with("444444444406")}),
        (kms.enable_key_rotation, {}),
        (kms.rotate_key_on_demand, {}),
    ):
        assert err(call, KeyId=md["KeyId"], **kw)[0] == "AccessDeniedException"
    assert kms.get_key_rotation_status(KeyId=md["KeyId"])["KeyRotationEnabled"] is True
    # another account cannot see it by alias (aliases are per account)
    other = aws("kms", account="444444444407").describe_key(KeyId="alias/aws/ebs")["KeyMetadata"]
    assert other["KeyId"] != md["KeyId"]


# ------------------------------------------------------------------- bad input


def test_bad_input_codes(kms_a: Any) -> None:
    assert err(kms_a.describe_key, KeyId="11111111-2222-3333-4444-555555555555")[0] == "NotFoundException"
    assert err(kms_a.describe_key, KeyId="not-a-key")[0] == "NotFoundException"
    assert err(kms_a.encrypt, KeyId="alias/missing", Plaintext=b"x")[0] == "NotFoundException"
    assert err(kms_a.describe_key, KeyId=f"arn:aws:kms:{REGION}:{A}:key/11111111-2222-3333-4444-555555555555")[0] == (
        "NotFoundException"
    )
    assert err(kms_a.create_key, KeySpec="SM2", KeyUsage="SIGN_VERIFY")[0] == "UnsupportedOperationException"
    assert err(kms_a.create_key, KeySpec="HMAC_256", KeyUsage="ENCRYPT_DECRYPT")[0] == "ValidationException"
    raw = unvalidated(kms_a)
    assert err(raw.generate_random, NumberOfBytes=0)[0] == "ValidationException"
    assert err(raw.generate_random, NumberOfBytes=1025)[0] == "ValidationException"
    key = kms_a.create_key()["KeyMetadata"]["KeyId"]
    assert err(raw.list_grants, KeyId=key, Limit=0)[0] == "ValidationException"


# --------------------------------------------------------------- secrets at rest, audit


def test_no_data_key_plaintext_anywhere_in_the_data_dir(server_factory: Callable[..., Any]) -> None:
    srv = server_factory()
    kms = srv.client("kms", account=A)
    key = kms.create_key()["KeyMetadata"]["KeyId"]
    secrets = [kms.generate_data_key(KeyId=key, KeySpec="AES_256")["Plaintext"] for _ in range(3)]
    secrets.append(kms.decrypt(CiphertextBlob=kms.encrypt(KeyId=key, Plaintext=b"Z" * 48)["CiphertextBlob"])["Plaintext"])
    srv.stop()  # flush everything (WAL checkpoint) before grepping
    files = [p for p in Path(srv.data_dir).rglob("*") if p.is_file()]
    assert any(p.name == "root.key" for p in files)
    data = b"".join(p.read_bytes() for p in files)
    for s in secrets:
        for form in (s, base64.b64encode(s), s.hex().encode()):
            assert form not in data


def test_audit_file_has_one_record_per_operation(server_factory: Callable[..., Any]) -> None:
    srv = server_factory()
    kms = srv.client("kms", account=A)
    kms_other = srv.client("kms", account=B)
    key = kms.create_key(Description="audited")["KeyMetadata"]
    dk = kms.generate_data_key(KeyId=key["KeyId"], KeySpec="AES_256", EncryptionContext={"vol": "v-1"})
    kms.decrypt(CiphertextBlob=dk["CiphertextBlob"], EncryptionContext={"vol": "v-1"})
    with pytest.raises(ClientError):
        kms_other.decrypt(CiphertextBlob=dk["CiphertextBlob"], EncryptionContext={"vol": "v-1"})
    with pytest.raises(ClientError):
        kms.describe_key(KeyId="alias/none")
    kms.list_keys()
    path = Path(srv.data_dir) / "audit" / "kms-audit.jsonl"
    lines = path.read_text().splitlines()
    events = [json.loads(line) for line in lines]
    assert [e["eventName"] for e in events] == [
        "CreateKey", "GenerateDataKey", "Decrypt", "Decrypt", "DescribeKey", "ListKeys",
    ]
    create, gen, dec, refused, missing, listing = events
    for e in events:
        assert e["eventSource"] == "kms.amazonaws.com" and e["awsRegion"] == REGION
        assert e["eventVersion"] and e["eventTime"].endswith("Z") and e["requestID"] and e["eventID"]
    assert create["resources"] == [{"accountId": A, "type": "AWS::KMS::Key", "ARN": key["Arn"]}]
    assert gen["requestParameters"] == {"keyId": key["KeyId"], "keySpec": "AES_256", "encryptionContext": {"vol": "v-1"}}
    assert dec["userIdentity"]["accountId"] == A and "errorCode" not in dec
    assert refused["userIdentity"]["accountId"] == B
    assert refused["errorCode"] == "AccessDeniedException" and "kms:Decrypt" in refused["errorMessage"]
    assert missing["errorCode"] == "NotFoundException"
    assert listing["readOnly"] is True and gen["readOnly"] is False
    # no secrets in the trail
    text = path.read_text()
    assert base64.b64encode(dk["Plaintext"]).decode() not in text
    assert base64.b64encode(dk["CiphertextBlob"]).decode() not in text
    # the CLI prints the same trail
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "ebscrypt", "audit-log", "--data-dir", str(srv.data_dir)],
                         capture_output=True, text=True, timeout=60)
    if out.returncode == 0:
        assert out.stdout.count("kms.amazonaws.com") == len(events)


def test_hmac_keys(kms_a: Any) -> None:
    import hashlib
    import hmac as hmac_mod

    key = kms_a.create_key(KeySpec="HMAC_256", KeyUsage="GENERATE_VERIFY_MAC")["KeyMetadata"]
    assert key["MacAlgorithms"] == ["HMAC_SHA_256"]
    mac = kms_a.generate_mac(KeyId=key["KeyId"], Message=b"hello", MacAlgorithm="HMAC_SHA_256")["Mac"]
    assert len(mac) == hashlib.sha256().digest_size
    ok = kms_a.verify_mac(KeyId=key["KeyId"], Message=b"hello", Mac=mac, MacAlgorithm="HMAC_SHA_256")
    assert ok["MacValid"] is True
    code, _ = err(kms_a.verify_mac, KeyId=key["KeyId"], Message=b"hellO", Mac=mac, MacAlgorithm="HMAC_SHA_256")
    assert code == "KMSInvalidMacException"
    assert not hmac_mod.compare_digest(mac, b"\0" * 32)
    assert err(kms_a.generate_mac, KeyId=key["KeyId"], Message=b"m", MacAlgorithm="HMAC_SHA_512")[0] == (
        "InvalidKeyUsageException"
    )
    assert err(kms_a.encrypt, KeyId=key["KeyId"], Plaintext=b"x")[0] == "InvalidKeyUsageException"
    assert err(kms_a.get_public_key, KeyId=key["KeyId"])[0] == "UnsupportedOperationException"


def test_data_key_pairs(kms_a: Any) -> None:
    key = kms_a.create_key()["KeyMetadata"]["KeyId"]
    pair = kms_a.generate_data_key_pair(KeyId=key, KeyPairSpec="ECC_NIST_P256", EncryptionContext={"k": "v"})
    private = serialization.load_der_private_key(pair["PrivateKeyPlaintext"], password=None)
    public = serialization.load_der_public_key(pair["PublicKey"])
    assert private.public_key().public_numbers() == public.public_numbers()
    unwrapped = kms_a.decrypt(CiphertextBlob=pair["PrivateKeyCiphertextBlob"], EncryptionContext={"k": "v"})
    assert unwrapped["Plaintext"] == pair["PrivateKeyPlaintext"]
    w = kms_a.generate_data_key_pair_without_plaintext(KeyId=key, KeyPairSpec="RSA_2048")
    assert "PrivateKeyPlaintext" not in w and w["KeyPairSpec"] == "RSA_2048"
    rsa_priv = kms_a.decrypt(CiphertextBlob=w["PrivateKeyCiphertextBlob"])["Plaintext"]
    assert serialization.load_der_private_key(rsa_priv, password=None).key_size == 2048


def test_key_management_has_no_cross_account_use(kms_a: Any, kms_b: Any) -> None:
    key = kms_a.create_key()["KeyMetadata"]
    # even a policy giving B everything does not let B manage A's key (AWS: no cross-account use)
    kms_a.put_key_policy(KeyId=key["KeyId"], PolicyName="default", Policy=policy_with(
        A, {"Effect": "Allow", "Principal": {"AWS": B}, "Action": "kms:*", "Resource": "*"}))
    for call, kw in (
        (kms_b.disable_key, {}),
        (kms_b.schedule_key_deletion, {"PendingWindowInDays": 7}),
        (kms_b.get_key_policy, {"PolicyName": "default"}),
        (kms_b.tag_resource, {"Tags": [{"TagKey": "k", "TagValue": "v"}]}),
        (kms_b.enable_key_rotation, {}),
    ):
        assert err(call, KeyId=key["Arn"], **kw)[0] == "NotFoundException"
    # cryptographic use and DescribeKey are cross-account
    blob = kms_b.encrypt(KeyId=key["Arn"], Plaintext=b"b")["CiphertextBlob"]
    assert kms_a.decrypt(CiphertextBlob=blob)["Plaintext"] == b"b"
    assert kms_b.describe_key(KeyId=key["Arn"])["KeyMetadata"]["KeyState"] == "Enabled"
    assert kms_b.get_key_rotation_status(KeyId=key["Arn"])["KeyRotationEnabled"] is False


def test_alias_condition_keys(aws: Callable[..., Any]) -> None:
    kms = aws("kms", account="444444444408")
    acct = "444444444408"
    key = kms.create_key()["KeyMetadata"]["KeyId"]
    kms.create_alias(AliasName="alias/app-data", TargetKeyId=key)
    kms.create_alias(AliasName="alias/other", TargetKeyId=key)
    kms.put_key_policy(KeyId=key, PolicyName="default", Policy=json.dumps({
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Principal": {"AWS": acct}, "Resource": "*", "NotAction": ["kms:Encrypt", "kms:Sign"]},
            # Encrypt only when the caller names the key by an app-* alias
            {"Effect": "Allow", "Principal": {"AWS": acct}, "Resource": "*", "Action": "kms:Encrypt",
             "Condition": {"StringLike": {"kms:RequestAlias": "alias/app-*"}}},
        ],
    }))
    kms.encrypt(KeyId="alias/app-data", Plaintext=b"x")
    assert err(kms.encrypt, KeyId="alias/other", Plaintext=b"x")[0] == "AccessDeniedException"
    assert err(kms.encrypt, KeyId=key, Plaintext=b"x")[0] == "AccessDeniedException"
    # kms:ResourceAliases: the key's aliases, whatever the request named it by
    kms.put_key_policy(KeyId=key, PolicyName="default", Policy=json.dumps({
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Principal": {"AWS": acct}, "Resource": "*", "NotAction": ["kms:Encrypt"]},
            {"Effect": "Allow", "Principal": {"AWS": acct}, "Resource": "*", "Action": "kms:Encrypt",
             "Condition": {"ForAnyValue:StringEquals": {"kms:ResourceAliases": "alias/app-data"}}},
        ],
    }))
    kms.encrypt(KeyId=key, Plaintext=b"x")
    kms.delete_alias(AliasName="alias/app-data")
    assert err(kms.encrypt, KeyId=key, Plaintext=b"x")[0] == "AccessDeniedException"

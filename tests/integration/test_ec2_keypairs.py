"""Key pairs through real boto3 EC2 clients (issue 6: Packer's CreateKeyPair/DeleteKeyPair)."""

from __future__ import annotations

import base64
import hashlib
import re
import uuid

import pytest
from botocore.exceptions import ClientError
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

A, B = "111111111111", "222222222222"


def name(prefix: str = "kp") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def err(excinfo: pytest.ExceptionInfo[ClientError]) -> tuple[str, str]:
    e = excinfo.value.response["Error"]
    return e["Code"], e["Message"]


def test_create_rsa_returns_private_key_once_with_aws_fingerprint(aws) -> None:
    ec2 = aws("ec2", account=A)
    n = name()
    out = ec2.create_key_pair(KeyName=n)
    assert re.fullmatch(r"key-[0-9a-f]{17}", out["KeyPairId"])
    assert out["KeyName"] == n
    priv = serialization.load_pem_private_key(out["KeyMaterial"].encode(), None)
    assert isinstance(priv, rsa.RSAPrivateKey) and priv.key_size == 2048
    assert out["KeyMaterial"].startswith("-----BEGIN RSA PRIVATE KEY-----")
    der = priv.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    assert out["KeyFingerprint"] == ":".join(f"{b:02x}" for b in hashlib.sha1(der).digest())

    described = ec2.describe_key_pairs(KeyNames=[n], IncludePublicKey=True)["KeyPairs"]
    assert len(described) == 1
    d = described[0]
    assert d["KeyPairId"] == out["KeyPairId"] and d["KeyFingerprint"] == out["KeyFingerprint"]
    assert d["KeyType"] == "rsa" and "KeyMaterial" not in d and d["CreateTime"].tzinfo is not None
    # the stored public key is the private key's public half
    expected = priv.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                              serialization.PublicFormat.OpenSSH).decode()
    assert d["PublicKey"].split()[:2] == expected.split()[:2]
    assert "PublicKey" not in ec2.describe_key_pairs(KeyNames=[n])["KeyPairs"][0]


def test_private_key_is_not_stored_on_disk(aws, server) -> None:
    ec2 = aws("ec2", account=A)
    out = ec2.create_key_pair(KeyName=name(), KeyType="ed25519")
    secret_line = out["KeyMaterial"].splitlines()[1].encode()
    for path in server.data_dir.rglob("*"):
        if path.is_file():
            assert secret_line not in path.read_bytes(), f"private key material found in {path}"


def test_create_ed25519_pem_and_ppk(aws) -> None:
    ec2 = aws("ec2", account=A)
    out = ec2.create_key_pair(KeyName=name(), KeyType="ed25519")
    priv = serialization.load_ssh_private_key(out["KeyMaterial"].encode(), None)
    assert isinstance(priv, ed25519.Ed25519PrivateKey)
    blob = base64.b64decode(priv.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).split()[1])
    assert out["KeyFingerprint"] == base64.b64encode(hashlib.sha256(blob).digest()).decode()
    ppk = ec2.create_key_pair(KeyName=name(), KeyType="rsa", KeyFormat="ppk")
    assert ppk["KeyMaterial"].startswith("PuTTY-User-Key-File-2: ssh-rsa")


def test_import_openssh_rsa_and_ed25519(aws) -> None:
    ec2 = aws("ec2", account=A)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    line = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    n = name("imp")
    out = ec2.import_key_pair(KeyName=n, PublicKeyMaterial=line + b" someone@example",
                              TagSpecifications=[{"ResourceType": "key-pair", "Tags": [{"Key": "team", "Value": "x"}]}])
    spki = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert out["KeyFingerprint"] == ":".join(f"{b:02x}" for b in hashlib.md5(spki).digest())
    assert out["Tags"] == [{"Key": "team", "Value": "x"}]
    d = ec2.describe_key_pairs(KeyPairIds=[out["KeyPairId"]])["KeyPairs"][0]
    assert d["KeyName"] == n and d["Tags"] == [{"Key": "team", "Value": "x"}]
    ed = ed25519.Ed25519PrivateKey.generate().public_key()
    out2 = ec2.import_key_pair(KeyName=name("imp"), PublicKeyMaterial=ed.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH))
    assert ec2.describe_key_pairs(KeyPairIds=[out2["KeyPairId"]])["KeyPairs"][0]["KeyType"] == "ed25519"


def test_errors_have_aws_codes_and_messages(aws) -> None:
    ec2 = aws("ec2", account=A)
    n = name()
    ec2.create_key_pair(KeyName=n)
    with pytest.raises(ClientError) as e:
        ec2.create_key_pair(KeyName=n)
    assert err(e) == ("InvalidKeyPair.Duplicate", f"The keypair '{n}' already exists.")
    with pytest.raises(ClientError) as e:
        ec2.import_key_pair(KeyName=n, PublicKeyMaterial=b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIj7")
    assert err(e)[0] in ("InvalidKeyPair.Duplicate", "InvalidKey.Format")
    with pytest.raises(ClientError) as e:
        ec2.import_key_pair(KeyName=name(), PublicKeyMaterial=b"this is not a key")
    assert err(e) == ("InvalidKey.Format", "Key is not in valid OpenSSH public key format")
    with pytest.raises(ClientError) as e:
        ec2.describe_key_pairs(KeyNames=["no-such-key-pair"])
    assert err(e) == ("InvalidKeyPair.NotFound", "The key pair 'no-such-key-pair' does not exist")
    with pytest.raises(ClientError) as e:
        ec2.describe_key_pairs(KeyPairIds=["key-0123456789abcdef0"])
    assert err(e)[0] == "InvalidKeyPair.NotFound"
    with pytest.raises(ClientError) as e:
        ec2.create_key_pair(KeyName=name(), DryRun=True)
    assert err(e)[0] == "DryRunOperation"


def test_delete_by_name_and_id_is_idempotent(aws) -> None:
    ec2 = aws("ec2", account=A)
    n1, n2 = name(), name()
    k1 = ec2.create_key_pair(KeyName=n1, KeyType="ed25519")
    k2 = ec2.create_key_pair(KeyName=n2, KeyType="ed25519")
    out = ec2.delete_key_pair(KeyName=n1)
    assert out["Return"] is True and out["KeyPairId"] == k1["KeyPairId"]
    assert ec2.delete_key_pair(KeyName=n1)["Return"] is True  # gone already: still success
    ec2.delete_key_pair(KeyPairId=k2["KeyPairId"])
    with pytest.raises(ClientError) as e:  # an id must name an existing pair
        ec2.delete_key_pair(KeyPairId=k2["KeyPairId"])
    assert err(e) == ("InvalidKeyPair.NotFound", f"The key pair ID '{k2['KeyPairId']}' does not exist")
    names = {k["KeyName"] for k in ec2.describe_key_pairs()["KeyPairs"]}
    assert n1 not in names and n2 not in names
    # the name is free again
    ec2.create_key_pair(KeyName=n1, KeyType="ed25519")


def test_filters(aws) -> None:
    ec2 = aws("ec2", account="333333333333")
    a = ec2.create_key_pair(KeyName="filt-a", KeyType="ed25519",
                            TagSpecifications=[{"ResourceType": "key-pair", "Tags": [{"Key": "env", "Value": "prod"}]}])
    ec2.create_key_pair(KeyName="filt-b", KeyType="ed25519")
    ec2.create_key_pair(KeyName="other", KeyType="ed25519")

    def names(**kw) -> set[str]:
        return {k["KeyName"] for k in ec2.describe_key_pairs(**kw)["KeyPairs"]}

    assert names(Filters=[{"Name": "key-name", "Values": ["filt-*"]}]) == {"filt-a", "filt-b"}
    assert names(Filters=[{"Name": "fingerprint", "Values": [a["KeyFingerprint"]]}]) == {"filt-a"}
    assert names(Filters=[{"Name": "tag:env", "Values": ["prod"]}]) == {"filt-a"}
    assert names(Filters=[{"Name": "tag-key", "Values": ["env"]}]) == {"filt-a"}
    assert names(Filters=[{"Name": "key-pair-id", "Values": [a["KeyPairId"]]}]) == {"filt-a"}
    assert names(Filters=[{"Name": "key-name", "Values": ["filt-?", "other"]},
                          {"Name": "tag:env", "Values": ["prod", "dev"]}]) == {"filt-a"}
    with pytest.raises(ClientError) as e:
        ec2.describe_key_pairs(Filters=[{"Name": "nonsense", "Values": ["x"]}])
    assert err(e)[0] == "InvalidParameterValue"


def test_accounts_and_regions_are_isolated(aws) -> None:
    n = name("iso")
    aws("ec2", account=A).create_key_pair(KeyName=n, KeyType="ed25519")
    b = aws("ec2", account=B)
    assert n not in {k["KeyName"] for k in b.describe_key_pairs()["KeyPairs"]}
    with pytest.raises(ClientError) as e:
        b.describe_key_pairs(KeyNames=[n])
    assert err(e)[0] == "InvalidKeyPair.NotFound"
    b.create_key_pair(KeyName=n, KeyType="ed25519")  # same name, other account: no clash
    b.delete_key_pair(KeyName=n)  # deletes B's, never A's
    assert aws("ec2", account=A).describe_key_pairs(KeyNames=[n])["KeyPairs"]
    other_region = aws("ec2", account=A, region="eu-west-1")
    assert n not in {k["KeyName"] for k in other_region.describe_key_pairs()["KeyPairs"]}

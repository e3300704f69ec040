"""KMS workloads: envelope encryption as EBS uses it, against ebscrypt and moto side by side.

The headline figure is **GenerateDataKey + Decrypt pairs per second** from one boto3
client (one pair = the two calls a volume attach costs: a data key made under a KMS key,
then unwrapped). On ebscrypt each call is a real policy evaluation, AES-256-GCM under
key material unwrapped from the root key, and one audit record appended; moto does none
of these.

    python bench/bench_kms.py                 # starts both servers itself
    python bench/bench_kms.py --rounds 7 --seconds 2
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``bench.common`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Ctx, RawCall, Workload, main

CONTEXT = {"aws:ebs:id": "vol-0123456789abcdef0"}


def make_key(ctx: Ctx) -> None:
    ctx.state["key"] = ctx.client("kms").create_key(Description="bench")["KeyMetadata"]["KeyId"]


def data_key_pair(ctx: Ctx) -> None:
    kms = ctx.client("kms")
    dk = kms.generate_data_key(KeyId=ctx.state["key"], KeySpec="AES_256", EncryptionContext=CONTEXT)
    out = kms.decrypt(CiphertextBlob=dk["CiphertextBlob"], EncryptionContext=CONTEXT)
    assert out["Plaintext"] == dk["Plaintext"], "Decrypt did not return the data key"


def raw_pair(ctx: Ctx) -> list[RawCall]:
    """GenerateDataKey, then Decrypt of a data key made once in setup (replayed as a pair)."""
    if "blob" not in ctx.state:
        ctx.state["blob"] = ctx.client("kms").generate_data_key(
            KeyId=ctx.state["key"], KeySpec="AES_256", EncryptionContext=CONTEXT)["CiphertextBlob"]
    return [RawCall("kms", "generate_data_key", dict(KeyId=ctx.state["key"], KeySpec="AES_256",
                                                     EncryptionContext=CONTEXT)),
            RawCall("kms", "decrypt", dict(CiphertextBlob=ctx.state["blob"], EncryptionContext=CONTEXT))]


def encrypt_1k(ctx: Ctx) -> None:
    blob = ctx.client("kms").encrypt(KeyId=ctx.state["key"], Plaintext=b"x" * 1024)["CiphertextBlob"]
    assert blob


def describe_key(ctx: Ctx) -> None:
    assert ctx.client("kms").describe_key(KeyId=ctx.state["key"])["KeyMetadata"]["Enabled"]


GRANTEE = "arn:aws:iam::123456789012:role/bench"


def create_key(ctx: Ctx) -> None:
    assert ctx.client("kms").create_key(Description="bench")["KeyMetadata"]["Enabled"]


def raw_create_key(ctx: Ctx) -> RawCall:
    return RawCall("kms", "create_key", dict(Description="bench"))


def create_grant(ctx: Ctx) -> None:
    assert ctx.client("kms").create_grant(KeyId=ctx.state["key"], GranteePrincipal=GRANTEE,
                                          Operations=["Decrypt", "GenerateDataKey"])["GrantId"]


def raw_create_grant(ctx: Ctx) -> RawCall:
    """A new (unnamed) grant per call, as each new volume attach makes one."""
    return RawCall("kms", "create_grant", dict(KeyId=ctx.state["key"], GranteePrincipal=GRANTEE,
                                               Operations=["Decrypt", "GenerateDataKey"]))


WORKLOADS = [
    # one iteration = one pair, so the figure reads as pairs/s
    Workload("KMS GenerateDataKey+Decrypt pairs", data_key_pair, setup=make_key, calls_per_iteration=1,
             raw=raw_pair, many_clients=True),
    # the mutating KMS calls of issue 15 (one durable transaction each)
    Workload("KMS CreateKey", create_key, raw=raw_create_key, many_clients=True),
    Workload("KMS CreateGrant", create_grant, setup=make_key, raw=raw_create_grant, many_clients=True),
    Workload("KMS Encrypt(1 KiB)", encrypt_1k, setup=make_key),
    Workload("KMS DescribeKey", describe_key, setup=make_key),
]

if __name__ == "__main__":
    raise SystemExit(main(WORKLOADS))

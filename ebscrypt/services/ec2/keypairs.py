"""CreateKeyPair, ImportKeyPair, DescribeKeyPairs, DeleteKeyPair."""

from __future__ import annotations

from typing import Any

from ebscrypt.context import RequestContext
from ebscrypt.engines.ec2 import keypairs as K
from ebscrypt.engines.ec2.filters import check_filters, matches
from ebscrypt.services.ec2.request import dry_run_check
from ebscrypt.engines.ec2.tags import tag_list, tag_specs
from ebscrypt.errors import MissingParameter
from ebscrypt.services.registry import operation

_FILTERS = {
    "key-pair-id": lambda k: k["id"],
    "key-name": lambda k: k["name"],
    "fingerprint": lambda k: k["fingerprint"],
}


@operation("ec2", "CreateKeyPair")
def create_key_pair(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    dry_run_check(params)
    tags = tag_specs(params.get("TagSpecifications"), "key-pair")
    row, material = K.create_key_pair(ctx, name=params.get("KeyName"), key_type=params.get("KeyType", "rsa"),
                                      key_format=params.get("KeyFormat", "pem"), tags=tags)
    out = {"KeyFingerprint": row["fingerprint"], "KeyMaterial": material, "KeyName": row["name"],
           "KeyPairId": row["id"],
           "Tags": tags or None}
    return out


@operation("ec2", "ImportKeyPair")
def import_key_pair(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    dry_run_check(params)
    material = params.get("PublicKeyMaterial")
    if material is None:
        raise MissingParameter("PublicKeyMaterial")
    if isinstance(material, str):
        material = material.encode()
    tags = tag_specs(params.get("TagSpecifications"), "key-pair")
    row = K.import_key_pair(ctx, name=params.get("KeyName"), material=material, tags=tags)
    out = {"KeyFingerprint": row["fingerprint"], "KeyName": row["name"], "KeyPairId": row["id"],
           "Tags": tags or None}
    return out


def _info(row: dict[str, Any], tags: dict[str, str], include_public: bool) -> dict[str, Any]:
    return {
        "KeyPairId": row["id"],
        "KeyFingerprint": row["fingerprint"],
        "KeyName": row["name"],
        "KeyType": row["key_type"],
        "Tags": tag_list(tags),
        "CreateTime": row["create_time"],
        "PublicKey": f"{row['public_key']} {row['name']}" if include_public else None,
    }


@operation("ec2", "DescribeKeyPairs")
def describe_key_pairs(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    dry_run_check(params)
    filters = params.get("Filters")
    check_filters(filters, _FILTERS, tags=True)
    names = params.get("KeyNames") or []
    ids = params.get("KeyPairIds") or []
    rows, tags = K.key_pairs_of(ctx)
    by_name = {r["name"]: r for r in rows}
    by_id = {r["id"]: r for r in rows}
    for n in names:
        if n not in by_name:
            raise K.not_found(n)
    for i in ids:
        if i not in by_id:
            raise K.not_found_id(i)
    if names or ids:
        wanted = set(names) | {by_id[i]["name"] for i in ids}
        rows = [r for r in rows if r["name"] in wanted]
    rows = [r for r in rows if matches(r, filters, _FILTERS, lambda r: tags[r["id"]])]
    include = bool(params.get("IncludePublicKey"))
    return {"KeyPairs": [_info(r, tags[r["id"]], include) for r in rows]}


@operation("ec2", "DeleteKeyPair")
def delete_key_pair(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    dry_run_check(params)
    name, key_id = params.get("KeyName"), params.get("KeyPairId")
    if not name and not key_id:
        raise MissingParameter("KeyName or KeyPairId")
    deleted = K.delete_key_pair(ctx, name=name, key_id=key_id)
    return {"Return": True, "KeyPairId": deleted or None}

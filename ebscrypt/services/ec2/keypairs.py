"""CreateKeyPair, ImportKeyPair, DescribeKeyPairs, DeleteKeyPair."""

from __future__ import annotations

from typing import Any, Callable

from ebscrypt.context import RequestContext
from ebscrypt.engines.ec2 import keypairs as K
from ebscrypt.engines.ec2.keypairs import KeyPair
from ebscrypt.engines.ec2.filters import check_filters, matches
from ebscrypt.services.ec2.request import dry_run_check
from ebscrypt.engines.ec2.tags import tag_list, tag_specs
from ebscrypt.errors import MissingParameter
from ebscrypt.services.registry import operation

_FILTERS: dict[str, Callable[[KeyPair], Any]] = {
    "key-pair-id": lambda k: k.id,
    "key-name": lambda k: k.name,
    "fingerprint": lambda k: k.fingerprint,
}


@operation("ec2", "CreateKeyPair")
def create_key_pair(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    dry_run_check(params)
    tags = tag_specs(params.get("TagSpecifications"), "key-pair")
    pair, material = K.create_key_pair(ctx, name=params.get("KeyName"), key_type=params.get("KeyType", "rsa"),
                                       key_format=params.get("KeyFormat", "pem"), tags=tags)
    return {"KeyFingerprint": pair.fingerprint, "KeyMaterial": material, "KeyName": pair.name,
            "KeyPairId": pair.id, "Tags": tags or None}


@operation("ec2", "ImportKeyPair")
def import_key_pair(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    dry_run_check(params)
    material = params.get("PublicKeyMaterial")
    if material is None:
        raise MissingParameter("PublicKeyMaterial")
    if isinstance(material, str):
        material = material.encode()
    tags = tag_specs(params.get("TagSpecifications"), "key-pair")
    pair = K.import_key_pair(ctx, name=params.get("KeyName"), material=material, tags=tags)
    return {"KeyFingerprint": pair.fingerprint, "KeyName": pair.name, "KeyPairId": pair.id, "Tags": tags or None}


def _info(pair: KeyPair, tags: dict[str, str], include_public: bool) -> dict[str, Any]:
    """The model's ``KeyPairInfo``."""
    return {
        "KeyPairId": pair.id,
        "KeyFingerprint": pair.fingerprint,
        "KeyName": pair.name,
        "KeyType": pair.key_type,
        "Tags": tag_list(tags),
        "CreateTime": pair.create_time,
        "PublicKey": f"{pair.public_key} {pair.name}" if include_public else None,
    }


@operation("ec2", "DescribeKeyPairs")
def describe_key_pairs(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    dry_run_check(params)
    filters = params.get("Filters")
    check_filters(filters, _FILTERS, tags=True)
    names = params.get("KeyNames") or []
    ids = params.get("KeyPairIds") or []
    pairs, tags = K.key_pairs_of(ctx)
    by_name = {p.name: p for p in pairs}
    by_id = {p.id: p for p in pairs}
    for n in names:
        if n not in by_name:
            raise K.not_found(n)
    for i in ids:
        if i not in by_id:
            raise K.not_found_id(i)
    if names or ids:
        wanted = set(names) | {by_id[i].name for i in ids}
        pairs = [p for p in pairs if p.name in wanted]
    pairs = [p for p in pairs if matches(p, filters, _FILTERS, lambda p: tags[p.id])]
    include = bool(params.get("IncludePublicKey"))
    return {"KeyPairs": [_info(p, tags[p.id], include) for p in pairs]}


@operation("ec2", "DeleteKeyPair")
def delete_key_pair(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    dry_run_check(params)
    name, key_id = params.get("KeyName"), params.get("KeyPairId")
    if not name and not key_id:
        raise MissingParameter("KeyName or KeyPairId")
    deleted = K.delete_key_pair(ctx, name=name, key_id=key_id)
    return {"Return": True, "KeyPairId": deleted or None}

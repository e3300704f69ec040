"""KMS cryptographic handlers: encryption, data keys, random bytes, public keys,
signatures and MACs (engine: :mod:`ebscrypt.engines.kms.crypto_ops`,
:mod:`~ebscrypt.engines.kms.signing`)."""

from __future__ import annotations

from typing import Any

from ebscrypt.context import RequestContext
from ebscrypt.engines.kms import api
from ebscrypt.services.kms.call import audited
from ebscrypt.services.registry import operation


@operation("kms", "Encrypt", inline=True)
def encrypt(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    with audited(ctx, "Encrypt", params) as kms:
        return kms.encrypt(ctx.caller, api.from_members(api.Encrypt, params))


@operation("kms", "Decrypt", inline=True)
def decrypt(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    with audited(ctx, "Decrypt", params) as kms:
        return kms.decrypt_ciphertext(ctx.caller, api.from_members(api.Decrypt, params))


@operation("kms", "ReEncrypt", inline=True)
def re_encrypt(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    with audited(ctx, "ReEncrypt", params) as kms:
        return kms.re_encrypt(ctx.caller, api.from_members(api.ReEncrypt, params))


@operation("kms", "GenerateDataKey", inline=True)
def generate_data_key(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    with audited(ctx, "GenerateDataKey", params) as kms:
        return kms.generate_data_key(ctx.caller, api.from_members(api.GenerateDataKey, params))


@operation("kms", "GenerateDataKeyWithoutPlaintext", inline=True)
def generate_data_key_without_plaintext(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    with audited(ctx, "GenerateDataKeyWithoutPlaintext", params) as kms:
        return kms.generate_data_key_ciphertext(ctx.caller, api.from_members(api.GenerateDataKey, params))


@operation("kms", "GenerateDataKeyPair")
def generate_data_key_pair(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    with audited(ctx, "GenerateDataKeyPair", params) as kms:
        return kms.generate_data_key_pair(ctx.caller, api.from_members(api.GenerateDataKeyPair, params))


@operation("kms", "GenerateDataKeyPairWithoutPlaintext")
def generate_data_key_pair_without_plaintext(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    with audited(ctx, "GenerateDataKeyPairWithoutPlaintext", params) as kms:
        return kms.generate_data_key_pair_without_plaintext(ctx.caller, api.from_members(api.GenerateDataKeyPair, params))


@operation("kms", "GenerateRandom", inline=True)
def generate_random(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    with audited(ctx, "GenerateRandom", params) as kms:
        return kms.generate_random(ctx.caller, api.from_members(api.GenerateRandom, params))


@operation("kms", "GetPublicKey")
def get_public_key(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    with audited(ctx, "GetPublicKey", params) as kms:
        return kms.get_public_key(ctx.caller, api.from_members(api.KeyWithGrantTokens, params))


@operation("kms", "Sign")
def sign(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    with audited(ctx, "Sign", params) as kms:
        return kms.sign(ctx.caller, api.from_members(api.Sign, params))


@operation("kms", "Verify")
def verify(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    with audited(ctx, "Verify", params) as kms:
        return kms.verify(ctx.caller, api.from_members(api.Sign, params))


@operation("kms", "GenerateMac")
def generate_mac(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    with audited(ctx, "GenerateMac", params) as kms:
        return kms.generate_mac(ctx.caller, api.from_members(api.Mac, params))


@operation("kms", "VerifyMac")
def verify_mac(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    with audited(ctx, "VerifyMac", params) as kms:
        return kms.verify_mac(ctx.caller, api.from_members(api.Mac, params))

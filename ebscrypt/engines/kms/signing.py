"""Asymmetric and HMAC key operations: GetPublicKey, Sign, Verify, GenerateMac, VerifyMac
(the primitives are :mod:`.asym`).

A mixin of :class:`ebscrypt.engines.kms.engine.KeyEngine`.
"""

from __future__ import annotations

from typing import Any

from ebscrypt.context import Caller
from ebscrypt.engines.kms import asym
from ebscrypt.engines.kms.errors import incompatible_algorithm, kms_error, stop_if_dry_run
from ebscrypt.engines.kms.metadata import algorithms

MAX_MESSAGE = 4096


def _message(p: dict[str, Any]) -> bytes:
    message = p.get("Message")
    if not isinstance(message, (bytes, bytearray)) or not 1 <= len(message) <= MAX_MESSAGE:
        raise kms_error("ValidationException", f"Message must be between 1 and {MAX_MESSAGE} bytes")
    return bytes(message)


class SigningOperations:
    """GetPublicKey, Sign, Verify, GenerateMac, VerifyMac."""

    def op_GetPublicKey(self, caller: Caller, p: dict[str, Any]) -> dict[str, Any]:
        row = self._resolve(caller, p["KeyId"])
        self._authorize(caller, row, "kms:GetPublicKey", grant_tokens=p.get("GrantTokens"))
        self._require_enabled(row)
        if row.public_key is None:
            raise kms_error(
                "UnsupportedOperationException",
                f"{row.arn} key spec is {row.key_spec}: GetPublicKey is supported only for asymmetric KMS keys.",
            )
        out: dict[str, Any] = {
            "KeyId": row.arn,
            "PublicKey": row.public_key,
            "CustomerMasterKeySpec": row.key_spec,
            "KeySpec": row.key_spec,
            "KeyUsage": row.key_usage,
        }
        out.update(algorithms(row))
        return out

    def _key_for_usage(self, caller: Caller, p: dict[str, Any], action: str, usage: str) -> Any:
        """The enabled key of ``p["KeyId"]``, authorized for ``action``, whose KeyUsage is ``usage``."""
        row = self._resolve(caller, p["KeyId"])
        self._authorize(caller, row, action, grant_tokens=p.get("GrantTokens"))
        self._require_enabled(row)
        self._require_usage(row, usage, action.split(":")[1])
        return row

    # ------------------------------------------------------------------ signatures

    def _signing_key(self, caller: Caller, p: dict[str, Any], action: str) -> tuple[Any, bytes, str, str]:
        row = self._key_for_usage(caller, p, action, "SIGN_VERIFY")
        alg = p["SigningAlgorithm"]
        if alg not in asym.signing_algorithms(row.key_spec):
            raise incompatible_algorithm(alg, row)
        msg_type = p.get("MessageType", "RAW")
        message = _message(p)
        if msg_type == "DIGEST" and len(message) != asym.digest_size(alg):
            raise kms_error(
                "ValidationException",
                f"Digest is invalid length for algorithm {alg}: expected {asym.digest_size(alg)} bytes.",
            )
        return row, message, alg, msg_type

    def op_Sign(self, caller: Caller, p: dict[str, Any]) -> dict[str, Any]:
        row, message, alg, msg_type = self._signing_key(caller, p, "kms:Sign")
        _material_id, material = self._current_key(row)
        sig = asym.sign(material, message, alg, digest=msg_type == "DIGEST")
        return {"KeyId": row.arn, "Signature": sig, "SigningAlgorithm": alg}

    def op_Verify(self, caller: Caller, p: dict[str, Any]) -> dict[str, Any]:
        row, message, alg, msg_type = self._signing_key(caller, p, "kms:Verify")
        sig = p.get("Signature") or b""
        if not asym.verify(row.public_key, message, bytes(sig), alg, digest=msg_type == "DIGEST"):
            raise kms_error("KMSInvalidSignatureException", "The signature is not valid for this message.")
        return {"KeyId": row.arn, "SignatureValid": True, "SigningAlgorithm": alg}

    # ------------------------------------------------------------------ HMAC keys

    def _mac_key(self, caller: Caller, p: dict[str, Any], action: str) -> tuple[Any, bytes, str]:
        row = self._key_for_usage(caller, p, action, "GENERATE_VERIFY_MAC")
        alg = p["MacAlgorithm"]
        if alg not in asym.mac_algorithms(row.key_spec):
            raise incompatible_algorithm(alg, row)
        return row, _message(p), alg

    def op_GenerateMac(self, caller: Caller, p: dict[str, Any]) -> dict[str, Any]:
        row, message, alg = self._mac_key(caller, p, "kms:GenerateMac")
        _material_id, key = self._current_key(row)
        stop_if_dry_run(p.get("DryRun"))
        return {"Mac": asym.generate_mac(key, message, alg), "MacAlgorithm": alg, "KeyId": row.arn}

    def op_VerifyMac(self, caller: Caller, p: dict[str, Any]) -> dict[str, Any]:
        row, message, alg = self._mac_key(caller, p, "kms:VerifyMac")
        _material_id, key = self._current_key(row)
        if not asym.verify_mac(key, message, bytes(p.get("Mac") or b""), alg):
            raise kms_error("KMSInvalidMacException", "The MAC is not valid for this message and key.")
        stop_if_dry_run(p.get("DryRun"))
        return {"KeyId": row.arn, "MacValid": True, "MacAlgorithm": alg}

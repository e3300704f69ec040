"""Asymmetric and HMAC key operations: GetPublicKey, Sign, Verify, GenerateMac, VerifyMac
(the primitives are :mod:`.asym`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from ebscrypt.context import Caller
from ebscrypt.engines.kms import asym, checks
from ebscrypt.engines.kms import api
from ebscrypt.engines.kms.errors import incompatible_algorithm, stop_if_dry_run
from ebscrypt.engines.kms.metadata import algorithms
from ebscrypt.errors import KmsInvalidMac, KmsInvalidSignature, KmsUnsupported, KmsValidation

if TYPE_CHECKING:  # the collaborators, given by the engine (no import cycle)
    from ebscrypt.engines.kms.access import KeyAccess
    from ebscrypt.engines.kms.materials import KeyMaterials

MAX_MESSAGE = 4096


def _message(message: Any) -> bytes:
    if not isinstance(message, (bytes, bytearray)) or not 1 <= len(message) <= MAX_MESSAGE:
        raise KmsValidation(f"Message must be between 1 and {MAX_MESSAGE} bytes")
    return bytes(message)


class SigningOperations:
    """GetPublicKey, Sign, Verify, GenerateMac, VerifyMac."""

    def __init__(self, access: KeyAccess, materials: KeyMaterials) -> None:
        self.access = access
        self.materials = materials

    def get_public_key(self, caller: Caller, args: api.KeyWithGrantTokens) -> dict[str, Any]:
        row = self.access.resolve(caller, args.key_id)
        self.access.authorize(caller, row, "kms:GetPublicKey", grant_tokens=args.grant_tokens)
        checks.require_enabled(row)
        if row.public_key is None:
            raise KmsUnsupported(
                f"{row.arn} key spec is {row.key_spec}: GetPublicKey is supported only for asymmetric KMS keys."
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

    def _key_for_usage(
        self, caller: Caller, key_ref: str, grant_tokens: Sequence[str] | None, action: str, usage: str
    ) -> Any:
        """The enabled key ``key_ref`` names, authorized for ``action``, whose KeyUsage is ``usage``."""
        row = self.access.resolve(caller, key_ref)
        self.access.authorize(caller, row, action, grant_tokens=grant_tokens)
        checks.require_enabled(row)
        checks.require_usage(row, usage, action.split(":")[1])
        return row

    # ------------------------------------------------------------------ signatures

    def _signing_key(self, caller: Caller, args: api.Sign, action: str) -> tuple[Any, bytes, str, str]:
        row = self._key_for_usage(caller, args.key_id, args.grant_tokens, action, "SIGN_VERIFY")
        alg = args.signing_algorithm
        if alg not in asym.signing_algorithms(row.key_spec):
            raise incompatible_algorithm(alg, row)
        msg_type = args.message_type if args.message_type is not None else "RAW"
        message = _message(args.message)
        if msg_type == "DIGEST" and len(message) != asym.digest_size(alg):
            raise KmsValidation(
                f"Digest is invalid length for algorithm {alg}: expected {asym.digest_size(alg)} bytes."
            )
        return row, message, alg, msg_type

    def sign(self, caller: Caller, args: api.Sign) -> dict[str, Any]:
        row, message, alg, msg_type = self._signing_key(caller, args, "kms:Sign")
        _material_id, material = self.materials.of_row(row)
        sig = asym.sign(material, message, alg, digest=msg_type == "DIGEST")
        return {"KeyId": row.arn, "Signature": sig, "SigningAlgorithm": alg}

    def verify(self, caller: Caller, args: api.Sign) -> dict[str, Any]:
        row, message, alg, msg_type = self._signing_key(caller, args, "kms:Verify")
        sig = args.signature or b""
        if not asym.verify(row.public_key, message, bytes(sig), alg, digest=msg_type == "DIGEST"):
            raise KmsInvalidSignature("The signature is not valid for this message.")
        return {"KeyId": row.arn, "SignatureValid": True, "SigningAlgorithm": alg}

    # ------------------------------------------------------------------ HMAC keys

    def _mac_key(self, caller: Caller, args: api.Mac, action: str) -> tuple[Any, bytes, str]:
        row = self._key_for_usage(caller, args.key_id, args.grant_tokens, action, "GENERATE_VERIFY_MAC")
        alg = args.mac_algorithm
        if alg not in asym.mac_algorithms(row.key_spec):
            raise incompatible_algorithm(alg, row)
        return row, _message(args.message), alg

    def generate_mac(self, caller: Caller, args: api.Mac) -> dict[str, Any]:
        row, message, alg = self._mac_key(caller, args, "kms:GenerateMac")
        _material_id, key = self.materials.of_row(row)
        stop_if_dry_run(args.dry_run)
        return {"Mac": asym.generate_mac(key, message, alg), "MacAlgorithm": alg, "KeyId": row.arn}

    def verify_mac(self, caller: Caller, args: api.Mac) -> dict[str, Any]:
        row, message, alg = self._mac_key(caller, args, "kms:VerifyMac")
        _material_id, key = self.materials.of_row(row)
        if not asym.verify_mac(key, message, bytes(args.mac or b""), alg):
            raise KmsInvalidMac("The MAC is not valid for this message and key.")
        stop_if_dry_run(args.dry_run)
        return {"KeyId": row.arn, "MacValid": True, "MacAlgorithm": alg}

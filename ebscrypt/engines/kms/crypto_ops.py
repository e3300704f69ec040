"""Encryption operations: Encrypt, Decrypt, ReEncrypt, GenerateDataKey[WithoutPlaintext],
GenerateDataKeyPair[WithoutPlaintext], GenerateRandom, and the symmetric core (seal/open
of :mod:`.blob` ciphertexts) that the "via ec2" API shares.

Symmetric blobs name their key and backing material, so Decrypt needs no KeyId;
asymmetric (RSA-OAEP) ciphertexts are raw, as in AWS, and need KeyId + algorithm.

A mixin of :class:`ebscrypt.engines.kms.engine.KeyEngine`.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

from ebscrypt.context import Caller
from ebscrypt.engines.kms import asym
from ebscrypt.engines.kms import blob as blobfmt
from ebscrypt.engines.kms.errors import (
    incompatible_algorithm,
    kms_error,
    out_of_range,
    refuse_recipient,
    stop_if_dry_run,
)
from ebscrypt.errors import ServiceError

MAX_PLAINTEXT = 4096


def _invalid_ciphertext() -> ServiceError:
    return kms_error(
        "InvalidCiphertextException",
        "The ciphertext is invalid, was tampered with, or its encryption context does not match.",
    )


def _present(**members: Any) -> dict[str, Any]:
    """Only the members that have a value (absent members are omitted, never None)."""
    return {k: v for k, v in members.items() if v is not None}


def _blob_material_id(blob: Any, row: Any) -> str | None:
    """The backing material id a symmetric blob names (None for asymmetric keys)."""
    if row.key_spec != "SYMMETRIC_DEFAULT" or not isinstance(blob, (bytes, bytearray)):
        return None
    try:
        return blobfmt.parse_header(bytes(blob)).material_id
    except (blobfmt.BadCiphertext, ValueError):
        return None


def _context(ec: Any) -> dict[str, str] | None:
    if ec is None:
        return None
    if not isinstance(ec, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in ec.items()):
        raise kms_error("ValidationException", "EncryptionContext must map strings to strings")
    return ec


def _plaintext(pt: Any) -> bytes:
    if not isinstance(pt, (bytes, bytearray)) or not 1 <= len(pt) <= MAX_PLAINTEXT:
        n = len(pt) if isinstance(pt, (bytes, bytearray)) else 0
        raise kms_error(
            "ValidationException",
            f"1 validation error detected: Value at 'plaintext' failed to satisfy constraint: "
            f"Member must have length between 1 and {MAX_PLAINTEXT} (got {n})",
        )
    return bytes(pt)


class CryptoOperations:
    """Encrypt, Decrypt, ReEncrypt, data keys, data key pairs, GenerateRandom."""

    # ------------------------------------------------------- symmetric crypto core

    def _seal(self, row: Any, plaintext: bytes, context: Mapping[str, str] | None) -> bytes:
        material_id, material = self._current_key(row)
        return blobfmt.seal(row.key_id, material_id, material, plaintext, context)

    def _blob_key(self, caller: Caller, blob: bytes, key_ref: str | None, algorithm: str | None) -> tuple[Any, Any]:
        """(key row, parsed header or None for asymmetric) that ``blob`` is encrypted under."""
        if not isinstance(blob, (bytes, bytearray)) or not blob:
            raise kms_error("ValidationException", "CiphertextBlob must be 1 to 6144 bytes")
        if algorithm not in (None, "SYMMETRIC_DEFAULT"):
            if not key_ref:
                raise kms_error(
                    "ValidationException",
                    "KeyId is required when decrypting with an asymmetric KMS key",
                )
            row = self._resolve(caller, key_ref)
            return row, None
        try:
            header = blobfmt.parse_header(bytes(blob))
        except (blobfmt.BadCiphertext, ValueError):
            raise _invalid_ciphertext() from None
        if key_ref:
            row = self._resolve(caller, key_ref)
            if row.key_id != header.key_id:
                raise kms_error(
                    "IncorrectKeyException",
                    "The key ID in the request does not identify a KMS key that can perform this operation.",
                )
            return row, header
        row = self._load(header.key_id)
        if row is None or row.region != caller.region:
            raise _invalid_ciphertext()
        self._note_resource(row.arn)
        return row, header

    def _open(self, row: Any, header: Any, blob: bytes, context: Mapping[str, str] | None) -> bytes:
        try:
            material = self._material(row.key_id, header.material_id)
            return blobfmt.open_blob(header, bytes(blob), material, context)
        except blobfmt.BadCiphertext:
            raise _invalid_ciphertext() from None

    # ------------------------------------------------------------ encrypt/decrypt

    def _encryption_key(self, caller: Caller, p: dict[str, Any], action: str) -> tuple[Any, dict[str, str] | None]:
        """(key row, encryption context) of a request that encrypts under ``p["KeyId"]``:
        authorized for ``action`` with that context, and enabled."""
        row = self._resolve(caller, p["KeyId"])
        ec = _context(p.get("EncryptionContext"))
        self._authorize(caller, row, action, encryption_context=ec, grant_tokens=p.get("GrantTokens"))
        self._require_enabled(row)
        return row, ec

    def op_Encrypt(self, caller: Caller, p: dict[str, Any]) -> dict[str, Any]:
        row, ec = self._encryption_key(caller, p, "kms:Encrypt")
        plaintext = _plaintext(p.get("Plaintext"))
        alg = p.get("EncryptionAlgorithm", "SYMMETRIC_DEFAULT")
        blob = self._encrypt(row, plaintext, ec, alg)
        stop_if_dry_run(p.get("DryRun"))
        return {"CiphertextBlob": blob, "KeyId": row.arn, "EncryptionAlgorithm": alg}

    def _encrypt(self, row: Any, plaintext: bytes, ec: Mapping[str, str] | None, alg: str) -> bytes:
        self._require_usage(row, "ENCRYPT_DECRYPT", "Encrypt")
        if alg not in asym.encryption_algorithms(row.key_spec, row.key_usage):
            raise incompatible_algorithm(alg, row)
        if row.key_spec == "SYMMETRIC_DEFAULT":
            return self._seal(row, plaintext, ec)
        if ec:
            raise kms_error("ValidationException", "EncryptionContext is not supported with asymmetric KMS keys")
        limit = asym.max_plaintext(row.key_spec, alg)
        if len(plaintext) > limit:
            raise kms_error(
                "ValidationException",
                f"Algorithm {alg} and key spec {row.key_spec} cannot encrypt data larger than {limit} bytes.",
            )
        return asym.rsa_encrypt(row.public_key, plaintext, alg)

    def _decrypt_blob(
        self, caller: Caller, blob: Any, key_ref: str | None, ec: Mapping[str, str] | None, alg: str | None,
        action: str, grant_tokens: Sequence[str] | None = None,
    ) -> tuple[Any, bytes]:
        row, header = self._blob_key(caller, blob, key_ref, alg)
        self._authorize(caller, row, action, encryption_context=ec, grant_tokens=grant_tokens)
        self._require_enabled(row)
        self._require_usage(row, "ENCRYPT_DECRYPT", "Decrypt")
        if header is not None:
            if row.key_spec != "SYMMETRIC_DEFAULT":
                raise _invalid_ciphertext()
            return row, self._open(row, header, blob, ec)
        if alg not in asym.encryption_algorithms(row.key_spec, row.key_usage):
            raise incompatible_algorithm(alg, row)
        _material_id, material = self._current_key(row)
        try:
            return row, asym.rsa_decrypt(material, bytes(blob), alg)
        except ValueError:
            raise _invalid_ciphertext() from None

    def op_Decrypt(self, caller: Caller, p: dict[str, Any]) -> dict[str, Any]:
        ec = _context(p.get("EncryptionContext"))
        alg = p.get("EncryptionAlgorithm")
        refuse_recipient(p)
        row, plaintext = self._decrypt_blob(
            caller, p.get("CiphertextBlob"), p.get("KeyId"), ec, alg, "kms:Decrypt", p.get("GrantTokens")
        )
        stop_if_dry_run(p.get("DryRun"))
        out = {"KeyId": row.arn, "Plaintext": plaintext, "EncryptionAlgorithm": alg or "SYMMETRIC_DEFAULT"}
        material_id = _blob_material_id(p.get("CiphertextBlob"), row)
        if material_id:
            out["KeyMaterialId"] = material_id
        return out

    def op_ReEncrypt(self, caller: Caller, p: dict[str, Any]) -> dict[str, Any]:
        src_ec = _context(p.get("SourceEncryptionContext"))
        dst_ec = _context(p.get("DestinationEncryptionContext"))
        src_alg = p.get("SourceEncryptionAlgorithm")
        dst_alg = p.get("DestinationEncryptionAlgorithm", "SYMMETRIC_DEFAULT")
        src, plaintext = self._decrypt_blob(
            caller, p.get("CiphertextBlob"), p.get("SourceKeyId"), src_ec, src_alg, "kms:ReEncryptFrom",
            p.get("GrantTokens"),
        )
        dst = self._resolve(caller, p["DestinationKeyId"])
        self._authorize(caller, dst, "kms:ReEncryptTo", encryption_context=dst_ec)
        self._require_enabled(dst)
        blob = self._encrypt(dst, plaintext, dst_ec, dst_alg)
        stop_if_dry_run(p.get("DryRun"))
        return {
            "CiphertextBlob": blob,
            "SourceKeyId": src.arn,
            "KeyId": dst.arn,
            "SourceEncryptionAlgorithm": src_alg or "SYMMETRIC_DEFAULT",
            "DestinationEncryptionAlgorithm": dst_alg,
            **_present(
                SourceKeyMaterialId=_blob_material_id(p.get("CiphertextBlob"), src),
                DestinationKeyMaterialId=_blob_material_id(blob, dst),
            ),
        }

    # ------------------------------------------------------------------ data keys

    def _data_key(self, caller: Caller, p: dict[str, Any], action: str) -> tuple[Any, bytes, bytes]:
        row, ec = self._encryption_key(caller, p, action)
        self._require_symmetric(row, action.split(":")[1])
        spec, nbytes = p.get("KeySpec"), p.get("NumberOfBytes")
        if spec is None and nbytes is None:
            raise kms_error("ValidationException", "Please specify either number of bytes or key spec.")
        if spec is not None and nbytes is not None:
            raise kms_error("ValidationException", "Please specify either number of bytes or key spec, not both.")
        if spec is not None:
            if spec not in ("AES_256", "AES_128"):
                raise kms_error(
                    "ValidationException",
                    f"1 validation error detected: Value '{spec}' at 'keySpec' failed to satisfy constraint: "
                    "Member must satisfy enum value set: [AES_256, AES_128]",
                )
            nbytes = 32 if spec == "AES_256" else 16
        if not isinstance(nbytes, int) or not 1 <= nbytes <= 1024:
            raise out_of_range(nbytes, "numberOfBytes", 1, 1024)
        plaintext = os.urandom(nbytes)
        blob = self._seal(row, plaintext, ec)
        stop_if_dry_run(p.get("DryRun"))
        return row, plaintext, blob

    def op_GenerateDataKey(self, caller: Caller, p: dict[str, Any]) -> dict[str, Any]:
        refuse_recipient(p)
        row, plaintext, blob = self._data_key(caller, p, "kms:GenerateDataKey")
        return {"CiphertextBlob": blob, "Plaintext": plaintext, "KeyId": row.arn,
                "KeyMaterialId": _blob_material_id(blob, row)}

    def op_GenerateDataKeyWithoutPlaintext(self, caller: Caller, p: dict[str, Any]) -> dict[str, Any]:
        row, _plaintext, blob = self._data_key(caller, p, "kms:GenerateDataKeyWithoutPlaintext")
        return {"CiphertextBlob": blob, "KeyId": row.arn}

    def _data_key_pair(self, caller: Caller, p: dict[str, Any], action: str) -> dict[str, Any]:
        row, ec = self._encryption_key(caller, p, action)
        self._require_symmetric(row, action.split(":")[1])
        spec = p["KeyPairSpec"]
        if spec not in asym.KEY_PAIR_SPECS:
            raise kms_error("UnsupportedOperationException", f"KeyPairSpec {spec} is not supported by ebscrypt.")
        private_der, public_der = asym.generate(spec)
        blob = self._seal(row, private_der, ec)
        stop_if_dry_run(p.get("DryRun"))
        out = {
            "PrivateKeyCiphertextBlob": blob,
            "PrivateKeyPlaintext": private_der,
            "PublicKey": public_der,
            "KeyId": row.arn,
            "KeyPairSpec": spec,
            "KeyMaterialId": _blob_material_id(blob, row),
        }
        return out

    def op_GenerateDataKeyPair(self, caller: Caller, p: dict[str, Any]) -> dict[str, Any]:
        refuse_recipient(p)
        return self._data_key_pair(caller, p, "kms:GenerateDataKeyPair")

    def op_GenerateDataKeyPairWithoutPlaintext(self, caller: Caller, p: dict[str, Any]) -> dict[str, Any]:
        out = self._data_key_pair(caller, p, "kms:GenerateDataKeyPairWithoutPlaintext")
        del out["PrivateKeyPlaintext"]
        return out

    def op_GenerateRandom(self, caller: Caller, p: dict[str, Any]) -> dict[str, Any]:
        n = p.get("NumberOfBytes")
        if n is None or not isinstance(n, int) or not 1 <= n <= 1024:
            raise out_of_range(n, "numberOfBytes", 1, 1024)
        if p.get("CustomKeyStoreId"):
            raise kms_error("CustomKeyStoreNotFoundException", "Custom key stores are not supported by ebscrypt.")
        return {"Plaintext": os.urandom(n)}

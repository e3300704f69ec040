"""Encryption operations: Encrypt, Decrypt, ReEncrypt, GenerateDataKey[WithoutPlaintext],
GenerateDataKeyPair[WithoutPlaintext], GenerateRandom, and the symmetric core (seal/open
of :mod:`.blob` ciphertexts) that the "via ec2" API shares.

Symmetric blobs name their key and backing material, so Decrypt needs no KeyId;
asymmetric (RSA-OAEP) ciphertexts are raw, as in AWS, and need KeyId + algorithm.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from ebscrypt.context import Caller
from ebscrypt.engines.kms import api, asym, checks
from ebscrypt.engines.kms import blob as blobfmt
from ebscrypt.engines.kms.errors import incompatible_algorithm, refuse_recipient, stop_if_dry_run
from ebscrypt.errors import (
    KmsCustomKeyStoreNotFound,
    KmsIncorrectKey,
    KmsInvalidCiphertext,
    KmsUnsupported,
    KmsValidation,
    ServiceError,
)

if TYPE_CHECKING:  # the collaborators, given by the engine (no import cycle)
    from ebscrypt.engines.kms.access import KeyAccess
    from ebscrypt.engines.kms.materials import KeyMaterials

MAX_PLAINTEXT = 4096


def _invalid_ciphertext() -> ServiceError:
    return KmsInvalidCiphertext(
        "The ciphertext is invalid, was tampered with, or its encryption context does not match."
    )


def _present(**members: Any) -> dict[str, Any]:
    """Only the members that have a value (absent members are omitted, never None)."""
    return {k: v for k, v in members.items() if v is not None}


def _blob_material_id(blob: Any, row: Any) -> str | None:
    """The backing material id a symmetric blob names (None for asymmetric keys)."""
    if row.key_spec != "SYMMETRIC_DEFAULT" or not isinstance(blob, (bytes, bytearray)):
        return None
    return blobfmt.material_id_of(blob)  # the id alone: two of a pair's three header parses


def _context(ec: Any) -> dict[str, str] | None:
    if ec is None:
        return None
    if not isinstance(ec, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in ec.items()):
        raise KmsValidation("EncryptionContext must map strings to strings")
    return ec


def _plaintext(pt: Any) -> bytes:
    if not isinstance(pt, (bytes, bytearray)) or not 1 <= len(pt) <= MAX_PLAINTEXT:
        n = len(pt) if isinstance(pt, (bytes, bytearray)) else 0
        raise KmsValidation(
            f"1 validation error detected: Value at 'plaintext' failed to satisfy constraint: "
            f"Member must have length between 1 and {MAX_PLAINTEXT} (got {n})"
        )
    return bytes(pt)


class CryptoOperations:
    """Encrypt, Decrypt, ReEncrypt, data keys, data key pairs, GenerateRandom."""

    def __init__(self, access: KeyAccess, materials: KeyMaterials) -> None:
        self.access = access
        self.materials = materials

    # ------------------------------------------------------- symmetric crypto core

    def seal(self, row: Any, plaintext: bytes, context: Mapping[str, str] | None) -> bytes:
        material_id, material = self.materials.of_row(row)
        return blobfmt.seal(row.key_id, material_id, material, plaintext, context)

    def blob_key(self, caller: Caller, blob: bytes, key_ref: str | None, algorithm: str | None) -> tuple[Any, Any]:
        """(key row, parsed header or None for asymmetric) that ``blob`` is encrypted under."""
        if not isinstance(blob, (bytes, bytearray)) or not blob:
            raise KmsValidation("CiphertextBlob must be 1 to 6144 bytes")
        if algorithm not in (None, "SYMMETRIC_DEFAULT"):
            if not key_ref:
                raise KmsValidation(
                    "KeyId is required when decrypting with an asymmetric KMS key"
                )
            row = self.access.resolve(caller, key_ref)
            return row, None
        try:
            header = blobfmt.parse_header(bytes(blob))
        except (blobfmt.BadCiphertext, ValueError):
            raise _invalid_ciphertext() from None
        if key_ref:
            row = self.access.resolve(caller, key_ref)
            if row.key_id != header.key_id:
                raise KmsIncorrectKey(
                    "The key ID in the request does not identify a KMS key that can perform this operation."
                )
            return row, header
        row = self.access.load(header.key_id)
        if row is None or row.region != caller.region:
            raise _invalid_ciphertext()
        checks.note_resource(row.arn)
        return row, header

    def open_blob(self, row: Any, header: Any, blob: bytes, context: Mapping[str, str] | None) -> bytes:
        try:
            material = self.materials.get(row.key_id, header.material_id)
            return blobfmt.open_blob(header, bytes(blob), material, context)
        except blobfmt.BadCiphertext:
            raise _invalid_ciphertext() from None

    # ------------------------------------------------------------ encrypt/decrypt

    def _encryption_key(
        self, caller: Caller, key_ref: str, context: Any, grant_tokens: Sequence[str] | None, action: str
    ) -> tuple[Any, dict[str, str] | None]:
        """(key row, encryption context) of a request that encrypts under ``key_ref``:
        authorized for ``action`` with that context, and enabled."""
        row = self.access.resolve(caller, key_ref)
        ec = _context(context)
        self.access.authorize(caller, row, action, encryption_context=ec, grant_tokens=grant_tokens)
        checks.require_enabled(row)
        return row, ec

    def encrypt(self, caller: Caller, args: api.Encrypt) -> dict[str, Any]:
        row, ec = self._encryption_key(caller, args.key_id, args.encryption_context, args.grant_tokens, "kms:Encrypt")
        plaintext = _plaintext(args.plaintext)
        alg = args.encryption_algorithm if args.encryption_algorithm is not None else "SYMMETRIC_DEFAULT"
        blob = self._encrypt(row, plaintext, ec, alg)
        stop_if_dry_run(args.dry_run)
        return {"CiphertextBlob": blob, "KeyId": row.arn, "EncryptionAlgorithm": alg}

    def _encrypt(self, row: Any, plaintext: bytes, ec: Mapping[str, str] | None, alg: str) -> bytes:
        checks.require_usage(row, "ENCRYPT_DECRYPT", "Encrypt")
        if alg not in asym.encryption_algorithms(row.key_spec, row.key_usage):
            raise incompatible_algorithm(alg, row)
        if row.key_spec == "SYMMETRIC_DEFAULT":
            return self.seal(row, plaintext, ec)
        if ec:
            raise KmsValidation("EncryptionContext is not supported with asymmetric KMS keys")
        limit = asym.max_plaintext(row.key_spec, alg)
        if len(plaintext) > limit:
            raise KmsValidation(
                f"Algorithm {alg} and key spec {row.key_spec} cannot encrypt data larger than {limit} bytes."
            )
        return asym.rsa_encrypt(row.public_key, plaintext, alg)

    def _decrypt_blob(
        self, caller: Caller, blob: Any, key_ref: str | None, ec: Mapping[str, str] | None, alg: str | None,
        action: str, grant_tokens: Sequence[str] | None = None,
    ) -> tuple[Any, bytes]:
        row, header = self.blob_key(caller, blob, key_ref, alg)
        self.access.authorize(caller, row, action, encryption_context=ec, grant_tokens=grant_tokens)
        checks.require_enabled(row)
        checks.require_usage(row, "ENCRYPT_DECRYPT", "Decrypt")
        if header is not None:
            if row.key_spec != "SYMMETRIC_DEFAULT":
                raise _invalid_ciphertext()
            return row, self.open_blob(row, header, blob, ec)
        if alg not in asym.encryption_algorithms(row.key_spec, row.key_usage):
            raise incompatible_algorithm(alg, row)
        _material_id, material = self.materials.of_row(row)
        try:
            return row, asym.rsa_decrypt(material, bytes(blob), alg)
        except ValueError:
            raise _invalid_ciphertext() from None

    def decrypt_ciphertext(self, caller: Caller, args: api.Decrypt) -> dict[str, Any]:
        """Decrypt (``decrypt`` is the via-service form, :mod:`.via_service`)."""
        ec = _context(args.encryption_context)
        alg = args.encryption_algorithm
        refuse_recipient(args.recipient)
        row, plaintext = self._decrypt_blob(
            caller, args.ciphertext_blob, args.key_id, ec, alg, "kms:Decrypt", args.grant_tokens
        )
        stop_if_dry_run(args.dry_run)
        out = {"KeyId": row.arn, "Plaintext": plaintext, "EncryptionAlgorithm": alg or "SYMMETRIC_DEFAULT"}
        material_id = _blob_material_id(args.ciphertext_blob, row)
        if material_id:
            out["KeyMaterialId"] = material_id
        return out

    def re_encrypt(self, caller: Caller, args: api.ReEncrypt) -> dict[str, Any]:
        src_ec = _context(args.source_encryption_context)
        dst_ec = _context(args.destination_encryption_context)
        src_alg = args.source_encryption_algorithm
        dst_alg = args.destination_encryption_algorithm
        if dst_alg is None:
            dst_alg = "SYMMETRIC_DEFAULT"
        src, plaintext = self._decrypt_blob(
            caller, args.ciphertext_blob, args.source_key_id, src_ec, src_alg, "kms:ReEncryptFrom",
            args.grant_tokens,
        )
        dst = self.access.resolve(caller, args.destination_key_id)
        self.access.authorize(caller, dst, "kms:ReEncryptTo", encryption_context=dst_ec)
        checks.require_enabled(dst)
        blob = self._encrypt(dst, plaintext, dst_ec, dst_alg)
        stop_if_dry_run(args.dry_run)
        return {
            "CiphertextBlob": blob,
            "SourceKeyId": src.arn,
            "KeyId": dst.arn,
            "SourceEncryptionAlgorithm": src_alg or "SYMMETRIC_DEFAULT",
            "DestinationEncryptionAlgorithm": dst_alg,
            **_present(
                SourceKeyMaterialId=_blob_material_id(args.ciphertext_blob, src),
                DestinationKeyMaterialId=_blob_material_id(blob, dst),
            ),
        }

    # ------------------------------------------------------------------ data keys

    def _data_key(self, caller: Caller, args: api.GenerateDataKey, action: str) -> tuple[Any, bytes, bytes]:
        row, ec = self._encryption_key(caller, args.key_id, args.encryption_context, args.grant_tokens, action)
        checks.require_symmetric(row, action.split(":")[1])
        spec, nbytes = args.key_spec, args.number_of_bytes
        if spec is None and nbytes is None:
            raise KmsValidation("Please specify either number of bytes or key spec.")
        if spec is not None and nbytes is not None:
            raise KmsValidation("Please specify either number of bytes or key spec, not both.")
        if spec is not None:
            if spec not in ("AES_256", "AES_128"):
                raise KmsValidation(
                    f"1 validation error detected: Value '{spec}' at 'keySpec' failed to satisfy constraint: "
                    "Member must satisfy enum value set: [AES_256, AES_128]"
                )
            nbytes = 32 if spec == "AES_256" else 16
        if not isinstance(nbytes, int) or not 1 <= nbytes <= 1024:
            raise KmsValidation.out_of_range(nbytes, "numberOfBytes", 1, 1024)
        plaintext = os.urandom(nbytes)
        blob = self.seal(row, plaintext, ec)
        stop_if_dry_run(args.dry_run)
        return row, plaintext, blob

    def generate_data_key(self, caller: Caller, args: api.GenerateDataKey) -> dict[str, Any]:
        refuse_recipient(args.recipient)
        row, plaintext, blob = self._data_key(caller, args, "kms:GenerateDataKey")
        return {"CiphertextBlob": blob, "Plaintext": plaintext, "KeyId": row.arn,
                "KeyMaterialId": _blob_material_id(blob, row)}

    def generate_data_key_ciphertext(self, caller: Caller, args: api.GenerateDataKey) -> dict[str, Any]:
        """GenerateDataKeyWithoutPlaintext (``generate_data_key_without_plaintext`` is the
        via-service form, :mod:`.via_service`)."""
        row, _plaintext, blob = self._data_key(caller, args, "kms:GenerateDataKeyWithoutPlaintext")
        return {"CiphertextBlob": blob, "KeyId": row.arn}

    def _data_key_pair(self, caller: Caller, args: api.GenerateDataKeyPair, action: str) -> dict[str, Any]:
        row, ec = self._encryption_key(caller, args.key_id, args.encryption_context, args.grant_tokens, action)
        checks.require_symmetric(row, action.split(":")[1])
        spec = args.key_pair_spec
        if spec not in asym.KEY_PAIR_SPECS:
            raise KmsUnsupported(f"KeyPairSpec {spec} is not supported by ebscrypt.")
        private_der, public_der = asym.generate(spec)
        blob = self.seal(row, private_der, ec)
        stop_if_dry_run(args.dry_run)
        out = {
            "PrivateKeyCiphertextBlob": blob,
            "PrivateKeyPlaintext": private_der,
            "PublicKey": public_der,
            "KeyId": row.arn,
            "KeyPairSpec": spec,
            "KeyMaterialId": _blob_material_id(blob, row),
        }
        return out

    def generate_data_key_pair(self, caller: Caller, args: api.GenerateDataKeyPair) -> dict[str, Any]:
        refuse_recipient(args.recipient)
        return self._data_key_pair(caller, args, "kms:GenerateDataKeyPair")

    def generate_data_key_pair_without_plaintext(self, caller: Caller, args: api.GenerateDataKeyPair) -> dict[str, Any]:
        out = self._data_key_pair(caller, args, "kms:GenerateDataKeyPairWithoutPlaintext")
        del out["PrivateKeyPlaintext"]
        return out

    def generate_random(self, caller: Caller, args: api.GenerateRandom) -> dict[str, Any]:
        n = args.number_of_bytes
        if n is None or not isinstance(n, int) or not 1 <= n <= 1024:
            raise KmsValidation.out_of_range(n, "numberOfBytes", 1, 1024)
        if args.custom_key_store_id:
            raise KmsCustomKeyStoreNotFound("Custom key stores are not supported by ebscrypt.")
        return {"Plaintext": os.urandom(n)}

"""The cross-member API (``runtime.kms``) the EC2/EBS side calls on a caller's behalf
("via ec2"): describe_key, default_ebs_key, create_grant_for_service,
generate_data_key_without_plaintext, decrypt, and authorization_generation (whether an
authorization remembered from one of them still holds).

Each is checked exactly as the direct KMS call would be (key state, key policy with
``kms:ViaService``, grants) and recorded in the audit trail with ``invokedBy``.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from sqlalchemy import Connection

from ebscrypt.context import Caller
from ebscrypt.engines.kms import checks, generations
from ebscrypt.engines.kms.metadata import KeyInfo, key_info

if TYPE_CHECKING:  # the collaborators, given by the engine (no import cycle)
    from ebscrypt.engines.kms.access import KeyAccess
    from ebscrypt.engines.kms.audit import AuditTrail
    from ebscrypt.engines.kms.crypto_ops import CryptoOperations
    from ebscrypt.engines.kms.grants import GrantOperations
    from ebscrypt.engines.kms.lifecycle import KeyLifecycle
    from ebscrypt.storage.db import Database


class ViaServiceApi:
    """What the EC2/EBS side may ask of KMS for a caller."""

    def __init__(
        self, db: Database, trail: AuditTrail, access: KeyAccess, lifecycle: KeyLifecycle,
        crypto: CryptoOperations, grants: GrantOperations,
    ) -> None:
        self.db = db
        self.trail = trail
        self.access = access
        self.lifecycle = lifecycle
        self.crypto = crypto
        self.grants = grants
        # (account, region) -> the alias/aws/ebs key id (that alias never changes target)
        self._ebs_key_ids: dict[tuple[str, str], str] = {}

    def describe_key(self, caller: Caller, key_id: str, *, via_service: str | None = None) -> KeyInfo:
        """Key metadata for ``key_id`` (id, ARN, alias, alias ARN); checks kms:DescribeKey."""
        with self.trail.audited(caller, "DescribeKey", {"KeyId": key_id}, via_service=via_service):
            row = self.access.resolve(caller, key_id)
            self.access.authorize(caller, row, "kms:DescribeKey", via_service=via_service)
            return key_info(row)

    def authorization_generation(self, key_ref: str, *, conn: Connection | None = None) -> int | None:
        """The authorization generation of a key (id or key ARN; see :mod:`.generations`),
        None when the key no longer exists. A use authorized at generation *g* may be
        reused while this still returns *g*. One primary-key read — in the caller's read
        transaction when ``conn`` is given (a hot path saves a transaction); not audited
        (it reads no key material and authorizes nothing)."""
        if conn is None:
            with self.db.read() as own:
                return generations.read(own, generations.key_id_of(key_ref))
        return generations.read(conn, generations.key_id_of(key_ref))

    def default_ebs_key(self, account: str, region: str) -> KeyInfo:
        """The AWS managed ``alias/aws/ebs`` key of ``account`` in ``region`` (made on first use)."""
        # alias/aws/ebs never changes target (alias/aws/* names refuse Update/DeleteAlias and
        # AWS managed keys refuse deletion), so its key id is remembered; the key row itself
        # is read as always (state, rotation, lazy deletion).
        key_id = self._ebs_key_ids.get((account, region))
        row = self.access.load(key_id) if key_id is not None else None
        if row is None:
            key_id = self.lifecycle.ebs_alias(account, region).target_key_id
            row = self.access.load(key_id)
            if row is not None:
                self._ebs_key_ids[(account, region)] = key_id
        return key_info(row)

    def create_grant_for_service(
        self,
        caller: Caller,
        key_id: str,
        *,
        via_service: str,
        operations: Sequence[str],
        encryption_context_subset: Mapping[str, str] | None = None,
    ) -> str:
        """A grant to the service principal (GrantIsForAWSResource=true); returns the grant id.

        Idempotent: the same caller account asking again for the same service, operations
        and constraints on the same key gets the existing grant (still checked and audited),
        so repeated attaches do not pile up grants.
        """
        params = {"KeyId": key_id, "GranteePrincipal": via_service, "Operations": list(operations)}
        with self.trail.audited(caller, "CreateGrant", params, via_service=via_service):
            row = self.access.resolve(caller, key_id)
            constraints = (
                {"EncryptionContextSubset": dict(encryption_context_subset)} if encryption_context_subset else None
            )
            grant_id, _token = self.grants.make_grant(
                caller,
                row,
                grantee=via_service,
                operations=list(operations),
                retiring=None,
                constraints=constraints,
                name=None,
                via_service=via_service,
                for_aws_resource=True,
                reuse_identical=True,
            )
            return grant_id

    def generate_data_key_without_plaintext(
        self,
        caller: Caller,
        key_id: str,
        *,
        encryption_context: Mapping[str, str] | None,
        via_service: str | None,
    ) -> tuple[str, bytes]:
        """A fresh AES-256 data key, wrapped under ``key_id``: (key ARN, ciphertext blob)."""
        params = {"KeyId": key_id, "EncryptionContext": dict(encryption_context or {}), "KeySpec": "AES_256"}
        with self.trail.audited(caller, "GenerateDataKeyWithoutPlaintext", params, via_service=via_service):
            row = self.access.resolve(caller, key_id)
            self.access.authorize(
                caller,
                row,
                "kms:GenerateDataKeyWithoutPlaintext",
                via_service=via_service,
                encryption_context=encryption_context,
            )
            checks.require_enabled(row)
            checks.require_symmetric(row, "GenerateDataKeyWithoutPlaintext")
            return row.arn, self.crypto.seal(row, os.urandom(32), encryption_context)

    def decrypt(
        self,
        caller: Caller,
        blob: bytes,
        *,
        encryption_context: Mapping[str, str] | None,
        via_service: str | None,
        key_id: str | None = None,
    ) -> tuple[str, bytes]:
        """Unwrap a data key: (key ARN, plaintext). Checks kms:Decrypt as a direct call would."""
        params: dict[str, Any] = {"EncryptionContext": dict(encryption_context or {})}
        if key_id:
            params["KeyId"] = key_id
        with self.trail.audited(caller, "Decrypt", params, via_service=via_service):
            row, header = self.crypto.blob_key(caller, blob, key_id, None)
            self.access.authorize(caller, row, "kms:Decrypt", via_service=via_service, encryption_context=encryption_context)
            checks.require_enabled(row)
            return row.arn, self.crypto.open_blob(row, header, blob, encryption_context)


"""The KMS key engine (``runtime.kms``): the facade every KMS surface goes through.

:class:`KeyEngine` builds small collaborators, each with its dependencies given
explicitly, and exposes what the services and the EC2/EBS side call:

* shared parts: :class:`.key_rows.KeyRows` (key rows, reused while the database is
  unchanged), :class:`.materials.KeyMaterials` (wrapped at rest by the key store,
  :mod:`.keystore`; unwrapped once and kept in memory while the key is usable),
  :class:`.policy_cache.KeyPolicies` (parsed policies), :class:`.lifecycle.KeyLifecycle`
  (insert, change, rotate, crypto-shred), :class:`.access.KeyAccess` (resolution of key
  ids / key ARNs / aliases / alias ARNs with lazy deletion and rotation; authorization:
  key policy, then grants), :class:`.audit.AuditTrail` (the audit hook, :meth:`audited`);
* the **KMS operations** (``create_key(caller, api.CreateKey) -> dict`` …: typed
  arguments from :mod:`.api`, a result keyed by the model's member names), one family
  per module — :mod:`.keys`, :mod:`.rotation`, :mod:`.policies`, :mod:`.aliases`,
  :mod:`.grants`, :mod:`.crypto_ops`, :mod:`.signing`, :mod:`.tags` — which the handlers
  of :mod:`ebscrypt.services.kms` call inside :meth:`audited`;
* the **cross-member API** the EC2/EBS side calls on a caller's behalf ("via ec2"):
  :mod:`.via_service`.

The key-state checks are the functions of :mod:`.checks`.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, contextmanager
from typing import Iterator

from sqlalchemy import select

from ebscrypt.context import Runtime
from ebscrypt.engines.kms.access import KeyAccess
from ebscrypt.engines.kms.aliases import AliasOperations
from ebscrypt.engines.kms.audit import AuditLog, AuditTrail, audit_path
from ebscrypt.engines.kms.crypto_ops import CryptoOperations
from ebscrypt.engines.kms.grants import DeferredGrants, GrantOperations, deferring_grants
from ebscrypt.engines.kms.key_rows import KeyRows
from ebscrypt.engines.kms.keys import KeyOperations
from ebscrypt.engines.kms.keystore import KeyStore, RootKeyError, open_key_store
from ebscrypt.engines.kms.lifecycle import KeyLifecycle
from ebscrypt.engines.kms.materials import KeyMaterials
from ebscrypt.engines.kms.metadata import KeyInfo
from ebscrypt.engines.kms.policies import PolicyOperations
from ebscrypt.engines.kms.policy_cache import KeyPolicies
from ebscrypt.engines.kms.rotation import RotationOperations
from ebscrypt.engines.kms.signing import SigningOperations
from ebscrypt.engines.kms.tags import TagOperations
from ebscrypt.engines.kms.via_service import ViaServiceApi
from ebscrypt.storage.db import Database
from ebscrypt.storage.space import SpaceMonitor
from ebscrypt.storage.tables.kms import kms_key_material

__all__ = ["KeyEngine", "KeyInfo", "check_key_store"]


def check_key_store(db: Database, store: KeyStore) -> None:
    """At start: every root key the database's material is wrapped by is held by ``store``,
    so a wrong ``--key-store`` (or a database copied without its token) fails at once with
    the reason instead of at the first Decrypt."""
    with db.read() as conn:
        refs = [r.wrapped_by for r in conn.execute(select(kms_key_material.c.wrapped_by).distinct())]
    missing = sorted((ref or "file:<data dir>/root.key (from before key stores)") for ref in refs if not store.holds(ref))
    if missing:
        raise RootKeyError(
            f"the key store {store.uri} cannot unwrap this database's key material, which is wrapped by "
            f"{', '.join(missing)}: start with the --key-store that holds it (or finish "
            "`ebscrypt keystore migrate`); servers sharing a database are all given the same root of trust "
            "(--key-store, or --root-key-file)"
        )
    # One row per root key really unwrapped: a root key of the same name that is not the
    # one that wrapped them (another file, a token re-made under the same name) fails here.
    with db.read() as conn:
        samples = [
            conn.execute(
                select(kms_key_material).where(
                    kms_key_material.c.wrapped_by.is_(None) if ref is None else kms_key_material.c.wrapped_by == ref
                ).limit(1)
            ).first()
            for ref in refs
        ]
    for row in samples:
        if row is None:
            continue
        try:
            store.unwrap(row.key_id, row.material_id, row.wrapped, row.wrapped_by)
        except RootKeyError:
            raise RootKeyError(
                f"the key store {store.uri} does not unwrap this database's key material wrapped by "
                f"{row.wrapped_by or 'the file store'}: its root key is not the one that wrapped it (servers "
                "sharing a database are all given the same root of trust: --key-store, or --root-key-file)"
            ) from None


class KeyEngine:
    """One per server process (``runtime.kms``)."""

    def __init__(self, runtime: Runtime, key_store: KeyStore | None = None) -> None:
        self.runtime = runtime
        self.db: Database = runtime.db
        self.clock = runtime.clock
        data_dir = runtime.settings.data_dir
        self.key_store = key_store or open_key_store(runtime.settings.key_store, data_dir)
        try:
            check_key_store(self.db, self.key_store)
        except Exception:
            self.key_store.close()
            raise
        self.space: SpaceMonitor = runtime.engines.get("space") or SpaceMonitor(data_dir)
        self.audit_log = AuditLog(audit_path(data_dir))

        # The collaborators, lowest first; each is given what it uses.
        self.trail = AuditTrail(self.audit_log, self.space, self.clock)
        self.audited = self.trail.audited  # one KMS event and its audit record
        self.key_rows = KeyRows(self.db)
        self.materials = KeyMaterials(self.db, self.clock, self.key_store)
        self.policies = KeyPolicies()
        self.lifecycle = KeyLifecycle(self.db, self.clock, self.materials)
        self.access = KeyAccess(self.db, self.clock, self.key_rows, self.lifecycle, self.policies)
        keys = KeyOperations(self.db, self.clock, self.access, self.lifecycle, self.materials, self.policies)
        rotation = RotationOperations(self.db, self.clock, self.access, self.lifecycle, self.materials)
        policies = PolicyOperations(self.access, self.lifecycle, self.policies)
        aliases = AliasOperations(self.db, self.clock, self.access, self.lifecycle)
        grants = GrantOperations(self.db, self.clock, self.access)
        crypto = CryptoOperations(self.access, self.materials)
        signing = SigningOperations(self.access, self.materials)
        tags = TagOperations(self.db, self.access)
        via = ViaServiceApi(self.db, self.trail, self.access, self.lifecycle, crypto, grants)

        self._bind_operations(keys, rotation, policies, aliases, grants, crypto, signing, tags)

        # The cross-member API (EC2/EBS, on a caller's behalf).
        self.describe_key = via.describe_key
        self.authorization_generation = via.authorization_generation
        self.default_ebs_key = via.default_ebs_key
        self.create_grant_for_service = via.create_grant_for_service
        self.generate_data_key_without_plaintext = via.generate_data_key_without_plaintext
        self.decrypt = via.decrypt

        # Shared parts the callers use directly.
        self.forget_key = self.materials.forget
        self.sweep_deletions = self.lifecycle.sweep_deletions

        self.sweep_deletions()

    def _bind_operations(
        self, keys: KeyOperations, rotation: RotationOperations, policies: PolicyOperations,
        aliases: AliasOperations, grants: GrantOperations, crypto: CryptoOperations,
        signing: SigningOperations, tags: TagOperations,
    ) -> None:
        """The KMS operations (services/kms), each served by one family: a table."""
        self.create_key = keys.create_key
        self.describe_key_metadata = keys.describe_key_metadata
        self.list_keys = keys.list_keys
        self.update_key_description = keys.update_key_description
        self.enable_key = keys.enable_key
        self.disable_key = keys.disable_key
        self.schedule_key_deletion = keys.schedule_key_deletion
        self.cancel_key_deletion = keys.cancel_key_deletion
        self.enable_key_rotation = rotation.enable_key_rotation
        self.disable_key_rotation = rotation.disable_key_rotation
        self.get_key_rotation_status = rotation.get_key_rotation_status
        self.rotate_key_on_demand = rotation.rotate_key_on_demand
        self.list_key_rotations = rotation.list_key_rotations
        self.get_key_policy = policies.get_key_policy
        self.list_key_policies = policies.list_key_policies
        self.put_key_policy = policies.put_key_policy
        self.create_alias = aliases.create_alias
        self.update_alias = aliases.update_alias
        self.delete_alias = aliases.delete_alias
        self.list_aliases = aliases.list_aliases
        self.create_grant = grants.create_grant
        self.list_grants = grants.list_grants
        self.list_retirable_grants = grants.list_retirable_grants
        self.retire_grant = grants.retire_grant
        self.revoke_grant = grants.revoke_grant
        self.encrypt = crypto.encrypt
        self.decrypt_ciphertext = crypto.decrypt_ciphertext
        self.re_encrypt = crypto.re_encrypt
        self.generate_data_key = crypto.generate_data_key
        self.generate_data_key_ciphertext = crypto.generate_data_key_ciphertext
        self.generate_data_key_pair = crypto.generate_data_key_pair
        self.generate_data_key_pair_without_plaintext = crypto.generate_data_key_pair_without_plaintext
        self.generate_random = crypto.generate_random
        self.get_public_key = signing.get_public_key
        self.sign = signing.sign
        self.verify = signing.verify
        self.generate_mac = signing.generate_mac
        self.verify_mac = signing.verify_mac
        self.tag_resource = tags.tag_resource
        self.untag_resource = tags.untag_resource
        self.list_resource_tags = tags.list_resource_tags

    def deferring_grants(self) -> AbstractContextManager[DeferredGrants]:
        """The service grants made within are stored by the caller, in its own write
        transaction on this database (:func:`.grants.deferring_grants`): a create call's
        grant and resource in one durable commit."""
        return deferring_grants()

    @contextmanager
    def key_row_scope(self) -> Iterator[None]:
        """One request's KMS uses on a caller's behalf: key rows read once
        (:meth:`.access.KeyAccess.key_row_scope`) and their audit records appended together
        when the block ends (:meth:`.audit.AuditTrail.batch`: end it before using what the
        uses produced)."""
        with self.access.key_row_scope(), self.trail.batch():
            yield

    def close(self) -> None:
        self.trail.close()
        self.key_rows.close()
        self.materials.close()

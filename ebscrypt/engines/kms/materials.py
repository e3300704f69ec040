"""Key material: wrapped by the key store at rest, unwrapped once and kept in memory while
the key is usable (see README.md, "Key material").

:class:`KeyMaterials` is the only holder of plaintext key material in the process.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from sqlalchemy import Connection, bindparam, insert, select, update

from ebscrypt.blocking import may_block
from ebscrypt.clock import Clock
from ebscrypt.engines.kms import blob as blobfmt
from ebscrypt.engines.kms.keystore import KeyStore, KeyStoreUnavailable
from ebscrypt.errors import KmsInternal, KmsKeyUnavailable
from ebscrypt.storage.db import Database
from ebscrypt.storage.prepared import PreparedWrite
from ebscrypt.storage.tables.kms import kms_key_material

__all__ = ["KeyMaterials"]

# Statements built once (issue 15: building them per call cost more than running them).
_INSERT_MATERIAL = PreparedWrite(insert(kms_key_material))  # on the driver where plain (storage/prepared.py)
_DEMOTE_MATERIAL = (
    update(kms_key_material).where(kms_key_material.c.key_id == bindparam("k")).values(is_current=False)
)


class KeyMaterials:
    """Plaintext material per (key id, material id): from its first use until the key is
    disabled, scheduled for deletion or deleted (:meth:`forget`), or the process ends.
    Never written anywhere; a key store round trip per use would cost a token call."""

    def __init__(self, db: Database, clock: Clock, key_store: KeyStore) -> None:
        self.db = db
        self.clock = clock
        self.key_store = key_store
        self._held: dict[tuple[str, str], bytes] = {}
        self._lock = threading.Lock()

    def get(self, key_id: str, material_id: str, conn: Connection | None = None) -> bytes:
        """The material ``material_id`` of ``key_id`` (a ciphertext naming another: BadCiphertext)."""
        cache_key = (key_id, material_id)
        m = self._held.get(cache_key)
        if m is not None:
            return m
        may_block()  # the key store (a PKCS#11 token) may wait: not on the event loop
        q = select(kms_key_material.c.wrapped, kms_key_material.c.wrapped_by).where(
            kms_key_material.c.key_id == key_id, kms_key_material.c.material_id == material_id
        )
        if conn is not None:
            row = conn.execute(q).first()
        else:
            with self.db.read() as c:
                row = c.execute(q).first()
        if row is None:
            raise blobfmt.BadCiphertext()
        try:
            m = self.key_store.unwrap(key_id, material_id, row.wrapped, row.wrapped_by)
        except KeyStoreUnavailable as exc:
            raise KmsKeyUnavailable(exc) from None
        self._held[cache_key] = m
        return m

    def current(self, conn: Connection, key_id: str) -> tuple[str, bytes]:
        """(material id, material) of the key's current backing material, as ``conn`` sees it."""
        row = conn.execute(
            select(kms_key_material.c.material_id).where(
                kms_key_material.c.key_id == key_id, kms_key_material.c.is_current.is_(True)
            )
        ).first()
        if row is None:
            raise KmsInternal("key material is missing")
        return row.material_id, self.get(key_id, row.material_id, conn)

    def of_row(self, row: Any) -> tuple[str, bytes]:
        """(material id, material) of the key's current backing material: the id the key
        row was read with (no second read), the material from memory."""
        material_id = getattr(row, "current_material_id", None)
        if material_id is not None:
            return material_id, self.get(row.key_id, material_id)
        with self.db.read() as conn:
            return self.current(conn, row.key_id)

    def add(
        self, conn: Connection, key_id: str, material: bytes, *, rotation_type: str | None = None,
        new_key: bool = False,
    ) -> str:
        """Wrap and store ``material`` as the key's current backing material (``new_key``:
        the key was inserted in this transaction, so it has no other material to demote)."""
        material_id = os.urandom(16).hex()
        try:
            wrapped_by, wrapped = self.key_store.wrap(key_id, material_id, material)
        except KeyStoreUnavailable as exc:
            raise KmsKeyUnavailable(exc) from None
        if not new_key:
            conn.execute(_DEMOTE_MATERIAL, {"k": key_id})
        _INSERT_MATERIAL.run(
            conn,
            {
                "key_id": key_id,
                "material_id": material_id,
                "wrapped": wrapped,
                "wrapped_by": wrapped_by,
                "created_at": self.clock.now(),
                "is_current": True,
                "rotation_type": rotation_type,
            },
        )
        self._held[(key_id, material_id)] = material
        return material_id

    def forget(self, key_id: str) -> None:
        """Drop a key's unwrapped material from memory (it stopped being usable)."""
        with self._lock:
            for cache_key in [k for k in self._held if k[0] == key_id]:
                self._held.pop(cache_key, None)

    def held(self) -> list[tuple[str, str]]:
        """The (key id, material id) pairs in memory (for tests and the status report)."""
        return list(self._held)

    def plaintexts(self) -> list[bytes]:
        """The material in memory (tests check none of it reaches the disk)."""
        return list(self._held.values())

    def close(self) -> None:
        self._held.clear()
        self.key_store.close()

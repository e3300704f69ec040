"""``ebscrypt keystore init|status|migrate|rotate``, and the key-store check ``serve`` runs first.

* ``init``: create the root key (PKCS#11: generated inside the token; file: a new 0600 file,
  sealed if a passphrase is given). Idempotent.
* ``status``: which store and root key, the root objects (PKCS#11: sensitive/extractable as
  the token reports them), how many material rows each root key wraps, and whether this
  store really unwraps every row (each is unwrapped, nothing is printed of it). Exit 1 if not.
* ``migrate --to URI``: re-wrap every KMS key material row from the current store to
  another. One row per write transaction, compare-and-set on the old blob, the new root
  key's name written with it (``wrapped_by``): a kill at any point leaves every row readable
  by one of the two stores, and a rerun continues with the rows not yet moved.
* ``rotate``: a new root object in the token, every row re-wrapped under it (as migrate),
  then each older root object no row refers to is destroyed. Rerun after a kill finishes the
  pending rotation instead of starting another.

Stop the servers of the database first (a running server keeps its store). Every command
appends a record to the KMS audit trail (``eventSource`` ``ebscrypt.keystore``).
"""

from __future__ import annotations

import argparse
import getpass
import json
import socket
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from sqlalchemy import and_, func, select, update

from ebscrypt.context import Settings
from ebscrypt.engines.kms.audit import AuditLog, audit_path
from ebscrypt.engines.kms.engine import check_key_store
from ebscrypt.engines.kms.keystore import KeyStore, KeyStoreUnavailable, RootKeyError, open_key_store
from ebscrypt.storage.db import Database
from ebscrypt.storage.tables.kms import kms_key_material


def preflight(settings: Settings) -> str | None:
    """Open the configured key store and check it holds this database's root keys; the
    problem as one line, or None."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(settings.database_url)
    refs: dict[str | None, int] = {}
    try:
        # A missing root key file is made only for a database without key material: with
        # material, a new root key could not unwrap it (the file was lost or moved).
        refs = rows_by_ref(db)
        store = open_key_store(settings.key_store, settings.data_dir, create=not refs)
    except (RootKeyError, KeyStoreUnavailable) as exc:
        db.dispose()
        named = ", ".join(sorted(r or "file:<data dir>/root.key (from before key stores)" for r in refs)) if refs else ""
        return f"{exc}" + (f" (this database's key material is wrapped by {named})" if named else "")
    try:
        check_key_store(db, store)
    except (RootKeyError, KeyStoreUnavailable) as exc:
        return str(exc)
    finally:
        store.close()
        db.dispose()
    return None


# --------------------------------------------------------------------------- audit


def audit_record(data_dir: Path, name: str, request_parameters: dict[str, Any], *, error: str | None = None) -> None:
    """One CloudTrail-shaped record of a key-store operation (an operator at this host)."""
    user = getpass.getuser()
    rec: dict[str, Any] = {
        "eventVersion": "1.08",
        "userIdentity": {"type": "Operator", "principalId": user, "invokedBy": "ebscrypt keystore"},
        "eventTime": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "eventSource": "ebscrypt.keystore",
        "eventName": name,
        "awsRegion": None,
        "sourceIPAddress": socket.gethostname(),
        "userAgent": "ebscrypt-cli",
        "requestParameters": request_parameters,
        "responseElements": None,
        "requestID": str(uuid.uuid4()),
        "eventID": str(uuid.uuid4()),
        "readOnly": name == "KeyStoreStatus",
        "eventType": "ServiceEvent",
        "managementEvent": True,
        "eventCategory": "Management",
    }
    if error:
        rec["errorCode"], rec["errorMessage"] = "KeyStoreError", error
    log = AuditLog(audit_path(data_dir))
    try:
        log.append(rec)
    finally:
        log.close()


# ----------------------------------------------------------------------- operations


def rows_by_ref(db: Database) -> dict[str | None, int]:
    with db.read() as conn:
        rows = conn.execute(
            select(kms_key_material.c.wrapped_by, func.count()).group_by(kms_key_material.c.wrapped_by)
        ).all()
    return {r[0]: int(r[1]) for r in rows}


def migrate_rows(
    db: Database,
    source: KeyStore,
    target: KeyStore,
    *,
    pause: float = 0.0,
    on_row: Callable[[str, str, int, int], None] | None = None,
) -> tuple[int, int]:
    """Re-wrap every row not yet under ``target``'s current root key; (moved, total).

    A row is unwrapped by the store that holds its root key (``source`` for rows from
    before key stores), wrapped by ``target`` and written back only if its blob is still
    the one read (another migrate or a key deletion in between: the row is read again)."""
    goal = target.current_ref()
    with db.read() as conn:
        todo = conn.execute(
            select(kms_key_material.c.key_id, kms_key_material.c.material_id)
            .where(kms_key_material.c.wrapped_by.is_(None) | (kms_key_material.c.wrapped_by != goal))
            .order_by(kms_key_material.c.key_id, kms_key_material.c.material_id)
        ).all()
    moved = 0
    for i, (key_id, material_id) in enumerate(todo, 1):
        for _attempt in range(3):
            with db.read() as conn:
                row = conn.execute(
                    select(kms_key_material.c.wrapped, kms_key_material.c.wrapped_by).where(
                        kms_key_material.c.key_id == key_id, kms_key_material.c.material_id == material_id
                    )
                ).first()
            if row is None or row.wrapped_by == goal:  # deleted since, or moved by another run
                break
            ref = row.wrapped_by
            holder = source if ref is None or not target.holds(ref) else target
            if not holder.holds(ref):
                raise RootKeyError(
                    f"key material {key_id}/{material_id} is wrapped by {ref}, held by neither "
                    f"{source.uri} nor {target.uri}"
                )
            material = holder.unwrap(key_id, material_id, row.wrapped, ref)
            new_ref, blob = target.wrap(key_id, material_id, material)
            del material
            with db.begin() as conn:
                done = conn.execute(
                    update(kms_key_material)
                    .where(
                        and_(
                            kms_key_material.c.key_id == key_id,
                            kms_key_material.c.material_id == material_id,
                            kms_key_material.c.wrapped == row.wrapped,
                        )
                    )
                    .values(wrapped=blob, wrapped_by=new_ref)
                ).rowcount
            if done:
                moved += 1
                break
        if on_row is not None:
            on_row(key_id, material_id, i, len(todo))
        if pause:
            time.sleep(pause)
    return moved, len(todo)


def retire_unreferenced_roots(db: Database, store: Any) -> list[str]:
    """Destroy the store's older root objects that no row refers to; their refs."""
    refs = rows_by_ref(db)
    retired = []
    current = store.current_ref()
    for root_id in store.root_ids:
        ref = store.root_ref(root_id)
        if ref != current and not refs.get(ref):
            store.destroy_root(ref)
            retired.append(ref)
    return retired


# ------------------------------------------------------------------------ commands


def _settings(args: argparse.Namespace) -> Settings:
    args.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    return Settings(data_dir=args.data_dir, db_url=args.db, key_store=args.key_store)


def _fail(args: argparse.Namespace, name: str, request_parameters: dict[str, Any], exc: BaseException) -> int:
    print(f"ebscrypt keystore: {exc}", file=sys.stderr)
    try:
        audit_record(args.data_dir, name, request_parameters, error=str(exc))
    except OSError:
        pass
    return 2


StoreCommand = Callable[[argparse.Namespace, Settings, KeyStore, dict[str, Any]], int]


def _with_store(event: str, *, param: str = "keyStore",
                create: bool = False) -> Callable[[StoreCommand], Callable[[argparse.Namespace, list[str]], int]]:
    """The frame of a keystore command: its settings, the audit parameters (``param``: the
    key store it names), that store opened and closed afterwards. A store that cannot be
    opened or used (RootKeyError, KeyStoreUnavailable) is said on stderr and audited as
    ``event``: exit 2."""

    def wrap(body: StoreCommand) -> Callable[[argparse.Namespace, list[str]], int]:
        def run(args: argparse.Namespace, _rest: list[str]) -> int:
            s = _settings(args)
            params: dict[str, Any] = {param: args.key_store or "file:<data-dir>/root.key"}
            try:
                store = open_key_store(s.key_store, s.data_dir, create=create)
            except (RootKeyError, KeyStoreUnavailable) as exc:
                return _fail(args, event, params, exc)
            try:
                return body(args, s, store, params)
            except (RootKeyError, KeyStoreUnavailable) as exc:
                return _fail(args, event, params, exc)
            finally:
                store.close()

        return run

    return wrap


@_with_store("KeyStoreInit", create=True)
def cmd_init(args: argparse.Namespace, s: Settings, store: KeyStore, params: dict[str, Any]) -> int:
    created = False
    if store.kind == "pkcs11":
        params["keyStore"] = store.uri
        if not store.root_ids:  # type: ignore[attr-defined]
            store.create_root()  # type: ignore[attr-defined]
            created = True
    params.update(rootKey=store.current_ref(), created=created)
    s.data_dir.mkdir(parents=True, exist_ok=True)
    audit_record(s.data_dir, "KeyStoreInit", params)
    print(f"{store.uri}: root key {store.current_ref()} ({'created' if created else 'already there'})")
    return 0


@_with_store("KeyStoreStatus")
def cmd_status(args: argparse.Namespace, s: Settings, store: KeyStore, params: dict[str, Any]) -> int:
    db = Database(s.database_url)
    try:
        out = _status(db, store)
    finally:
        db.dispose()
    audit_record(s.data_dir, "KeyStoreStatus", {**params, "keyStore": store.uri},
                 error=None if out["canUnwrapAll"] else f"{out['rowsNotUnwrapped']} row(s) do not unwrap")
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k}: {json.dumps(v) if isinstance(v, (dict, list)) else v}")
    return 0 if out["canUnwrapAll"] else 1


def _status(db: Database, store: KeyStore) -> dict[str, Any]:
    """What `keystore status` reports: the store, its root keys, and whether every row unwraps."""
    out: dict[str, Any] = {"keyStore": store.uri, "kind": store.kind}
    try:
        out["currentRootKey"] = store.current_ref()
    except RootKeyError as exc:
        out["currentRootKey"] = None
        out["problem"] = str(exc)
    if store.kind == "pkcs11":
        roots = []
        for root_id in store.root_ids:  # type: ignore[attr-defined]
            attrs = store.describe_root(root_id)  # type: ignore[attr-defined]
            roots.append({"ref": store.root_ref(root_id), **attrs})  # type: ignore[attr-defined]
        out["rootObjects"] = roots
    out["rowsByRootKey"] = {(k or "file (before key stores)"): v for k, v in rows_by_ref(db).items()}
    ok = failed = 0
    problems: list[str] = []
    with db.read() as conn:
        rows = conn.execute(select(kms_key_material)).all()
    for r in rows:
        try:
            store.unwrap(r.key_id, r.material_id, r.wrapped, r.wrapped_by)
            ok += 1
        except (RootKeyError, KeyStoreUnavailable) as exc:
            failed += 1
            if len(problems) < 5:
                problems.append(str(exc))
    out.update(rowsUnwrapped=ok, rowsNotUnwrapped=failed, canUnwrapAll=failed == 0 and "problem" not in out)
    if problems:
        out["problems"] = problems
    return out


def _progress(key_id: str, material_id: str, i: int, n: int) -> None:
    print(f"re-wrapped {key_id}/{material_id} ({i}/{n})", flush=True)


@_with_store("KeyStoreMigrate", param="from")
def cmd_migrate(args: argparse.Namespace, s: Settings, source: KeyStore, params: dict[str, Any]) -> int:
    target = None
    db = Database(s.database_url)
    try:
        target = open_key_store(args.to, s.data_dir)
        if target.kind == "pkcs11" and not target.root_ids:  # type: ignore[attr-defined]
            target.create_root()  # type: ignore[attr-defined]
        params.update({"from": source.uri, "to": target.uri, "toRootKey": target.current_ref()})
        audit_record(s.data_dir, "KeyStoreMigrate", {**params, "phase": "started"})
        moved, total = migrate_rows(db, source, target, pause=args.pause, on_row=_progress)
        left = {k: v for k, v in rows_by_ref(db).items() if k != target.current_ref()}
        audit_record(s.data_dir, "KeyStoreMigrate",
                     {**params, "phase": "completed", "rowsRewrapped": moved, "rowsLeft": sum(left.values())})
        print(f"migrated {moved} of {total} row(s) to {target.uri}; rows not under it: {sum(left.values())}")
        print(f"start the servers with --key-store for {target.uri}; {source.uri} can then be retired")
        return 0 if not left else 1
    finally:
        db.dispose()
        if target is not None:
            target.close()


@_with_store("KeyStoreRotate")
def cmd_rotate(args: argparse.Namespace, s: Settings, store: KeyStore, params: dict[str, Any]) -> int:
    db = Database(s.database_url)
    try:
        if store.kind != "pkcs11":
            raise RootKeyError(
                "rotate works on a pkcs11: key store; for a file key store migrate to a new file: "
                "ebscrypt keystore migrate --to file:NEW_PATH"
            )
        if store.conf.id is not None:  # type: ignore[attr-defined]
            raise RootKeyError("rotate needs a key store URI without id= (the current root key is the newest)")
        params["keyStore"] = store.uri
        pending = {k: v for k, v in rows_by_ref(db).items() if k != store.current_ref()}
        if pending:  # an earlier rotation was cut short: finish it, no new root key
            params["resumed"] = True
        else:
            store.create_root()  # type: ignore[attr-defined]
        params["newRootKey"] = store.current_ref()
        audit_record(s.data_dir, "KeyStoreRotate", {**params, "phase": "started"})
        moved, total = migrate_rows(db, store, store, pause=args.pause, on_row=_progress)
        retired = retire_unreferenced_roots(db, store)
        for ref in retired:
            audit_record(s.data_dir, "KeyStoreRetireRootKey", {"keyStore": store.uri, "rootKey": ref})
        audit_record(s.data_dir, "KeyStoreRotate",
                     {**params, "phase": "completed", "rowsRewrapped": moved, "retired": retired})
        print(f"root key now {store.current_ref()}; re-wrapped {moved} of {total} row(s); "
              f"retired {len(retired)} old root key(s)")
        return 0
    finally:
        db.dispose()

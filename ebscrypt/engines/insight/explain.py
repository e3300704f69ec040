"""``explain``: why a volume, snapshot, image or instance has its encryption.

For a volume or snapshot: its key (with state and aliases), the rule of SPEC §2 that
chose it as recorded at creation (ec2_provenance: the request's Encrypted/KmsKeyId, EBD
and the default key at that moment), the chain of sources back to the first upload or
empty volume, and whether its data key is the parent's (R-KEY-2: same key, same region).
An image is explained through its snapshots, an instance through its volumes.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection

from ebscrypt.engines.insight import resources as res
from ebscrypt.engines.insight.records import UNKNOWN_PROVENANCE, ChainLink, Decision, Explanation
from ebscrypt.errors import UnknownResource
from ebscrypt.storage.db import as_utc

RULE_TEXT = {
    "R-OUT-2": "KmsKeyId given with Encrypted=true: encrypted under that key, whatever the source",
    "R-OUT-3": "no KmsKeyId, source is an encrypted snapshot the caller owns in this region: the source's key",
    "R-OUT-4": "no KmsKeyId, source is an encrypted snapshot shared with the caller or copied from another "
               "region: the caller's default key",
    "R-OUT-5": "no KmsKeyId, new/empty or unencrypted source, and Encrypted=true or encryption by default on: "
               "the caller's default key",
    "R-OUT-6": "no KmsKeyId, unencrypted source, Encrypted not true and encryption by default off: unencrypted",
    "R-SNAP-1": "a snapshot of a volume keeps the volume's encryption, key and data key",
}
# The longest source chain followed (a chain of copies is rarely longer than a few links).
MAX_CHAIN = 64
COPY_VOLUME_ID = "vol-ffffffff"


def explain(conn: Connection, resource_id: str, account: str | None = None) -> Explanation:
    """Explain ``resource_id``. ``account``: the viewer; another account's resource is
    refused as not found (NotFound), as the API would. None: any account (the CLI, which
    reads the database with the operator's rights)."""
    found = res.resource(conn, resource_id)
    if found is None or (account is not None and res.owner_of(found[1]) != account):
        raise UnknownResource(f"The resource '{resource_id}' does not exist.")
    kind, row = found
    if kind == "image":
        return _image(conn, row)
    if kind == "instance":
        return _instance(conn, row)
    return _storage(conn, kind, row)


def _storage(conn: Connection, kind: str, row: Any) -> Explanation:
    out = Explanation(id=row["id"], type=kind, account=row["account"], region=row["region"], state=row["state"],
                      encrypted=bool(row["encrypted"]), key=res.key_info(conn, row["kms_key_arn"]),
                      data_key_id=row["data_key_id"])
    prov = res.provenance(conn, row["id"])
    if prov is None:
        out.decision_note = UNKNOWN_PROVENANCE
    else:
        out.decision = Decision(
            rule=prov["rule"], rule_text=RULE_TEXT.get(prov["rule"], ""), operation=prov["operation"],
            requested_encrypted=prov["requested_encrypted"], requested_kms_key_id=prov["requested_kms_key_id"],
            ebd=prov["ebd"], default_key=prov["default_key"], problem=prov["problem"],
            recorded_at=res_time(prov["created_at"]))
    out.chain = chain(conn, kind, row)
    parent = out.chain[1] if len(out.chain) > 1 else None
    if parent is not None and parent.type in ("volume", "snapshot"):
        out.parent_id = parent.id
        out.data_key_shared_with_parent = bool(row["data_key_id"]) and row["data_key_id"] == parent.data_key_id
    elif prov is not None and prov["source_id"]:
        out.parent_id = prov["source_id"]  # the source is gone: the record still knows
        out.data_key_shared_with_parent = bool(prov["data_key_shared"])
    elif parent is not None:
        out.data_key_shared_with_parent = False  # a first upload or an empty volume: its own key
    return out


def res_time(value: Any) -> str:
    return as_utc(value).isoformat() if value is not None else ""


def _source_of(kind: str, row: Any) -> tuple[str, str | None, str]:
    """(source kind, source id, how this resource was made from it)."""
    if kind == "volume":
        if row["snapshot_id"]:
            return "snapshot", row["snapshot_id"], f"created from {row['snapshot_id']}"
        return "empty", None, "created empty"
    origin = row["origin"]
    if origin == "copy" and row["source_snapshot_id"]:
        where = f" ({row['source_region']})" if row["source_region"] and row["source_region"] != row["region"] else ""
        return "snapshot", row["source_snapshot_id"], f"copied from {row['source_snapshot_id']}{where}"
    if origin == "direct":
        if row["parent_id"]:
            return "snapshot", row["parent_id"], f"uploaded on top of {row['parent_id']}"
        return "upload", None, "uploaded through the EBS direct APIs"
    volume_id = row["volume_id"]
    if volume_id and volume_id != COPY_VOLUME_ID:
        return "volume", volume_id, f"snapshot of {volume_id}"
    return "missing", None, "source not recorded"


def chain(conn: Connection, kind: str, row: Any) -> list[ChainLink]:
    """This resource and its sources, nearest first, ending with how the first was made."""
    links: list[ChainLink] = []
    seen: set[str] = set()
    current: tuple[str, Any] | None = (kind, row)
    while current is not None and len(links) < MAX_CHAIN:
        k, r = current
        seen.add(r["id"])
        source_kind, source_id, how = _source_of(k, r)
        links.append(ChainLink(r["id"], k, r["account"], r["region"], bool(r["encrypted"]), r["kms_key_arn"],
                               r["data_key_id"], how))
        if source_id is None:
            label = {"upload": "(first upload)", "empty": "(empty volume)"}.get(source_kind, "(unknown)")
            links.append(ChainLink(label, source_kind, None, None, None, None, None, how))
            break
        if source_id in seen:
            break
        src = res.snapshot(conn, source_id) if source_kind == "snapshot" else res.volume(conn, source_id)
        if src is None:
            links.append(ChainLink(source_id, "missing", None, None, None, None, None, "deleted since"))
            break
        current = (source_kind, src)
    return links


def _image(conn: Connection, row: Any) -> Explanation:
    out = Explanation(id=row["image_id"], type="image", account=row["account"], region=row["region"],
                      state=row["state"])
    for snap_id in res.image_snapshot_ids(row):
        snap = res.snapshot(conn, snap_id)
        if snap is not None:
            out.parts.append(_storage(conn, "snapshot", snap))
    out.encrypted = all(p.encrypted for p in out.parts) if out.parts else None
    how = (f"copied from {row['source_image_id']}" if row["source_image_id"] else
           f"created from {row['source_instance_id']}" if row["source_instance_id"] else "registered")
    out.chain = [ChainLink(row["image_id"], "image", row["account"], row["region"], out.encrypted, None, None, how)]
    return out


def _instance(conn: Connection, row: Any) -> Explanation:
    out = Explanation(id=row["instance_id"], type="instance", account=row["account"], region=row["region"],
                      state=row["state"], image_id=row["image_id"])
    for vol in res.volumes_of_instance(conn, row["instance_id"]):
        out.parts.append(_storage(conn, "volume", vol))
    out.encrypted = all(p.encrypted for p in out.parts) if out.parts else None
    return out


def render_text(e: Explanation, indent: str = "") -> str:
    """The explanation as a person reads it (``ebscrypt explain`` without --json)."""
    lines = [f"{indent}{e.id} ({e.type}, account {e.account}, {e.region}, {e.state})"]
    if e.type in ("volume", "snapshot"):
        if e.encrypted and e.key:
            alias = f" ({', '.join(e.key.aliases)})" if e.key.aliases else ""
            lines.append(f"{indent}  key:       {e.key.arn}{alias} [{e.key.state}]")
        else:
            lines.append(f"{indent}  key:       none (unencrypted)")
        if e.decision is not None:
            d = e.decision
            lines.append(f"{indent}  rule:      {d.rule}: {d.rule_text}")
            lines.append(f"{indent}  request:   {d.operation} Encrypted={_show(d.requested_encrypted)} "
                         f"KmsKeyId={_show(d.requested_kms_key_id)}")
            if d.ebd is not None:
                lines.append(f"{indent}  settings:  encryption by default {'on' if d.ebd else 'off'}, "
                             f"default key {d.default_key} (at {d.recorded_at})")
            if d.problem:
                lines.append(f"{indent}  problem:   {d.problem}")
        else:
            lines.append(f"{indent}  rule:      {e.decision_note}")
        if e.data_key_shared_with_parent is not None and e.data_key_id:
            shared = "shared with" if e.data_key_shared_with_parent else "not shared with"
            lines.append(f"{indent}  data key:  {e.data_key_id or '-'} ({shared} its parent"
                         f"{' ' + e.parent_id if e.parent_id else ''}; R-KEY-2)")
        lines.append(f"{indent}  lineage:")
        for link in e.chain:
            if link.account is None:  # the start of the chain, or a source deleted since
                lines.append(f"{indent}    {link.id}" + (f"  ({link.how})" if link.type == "missing" else ""))
                continue
            key = f" key {link.kms_key_arn}" if link.kms_key_arn else (" unencrypted" if link.encrypted is False else "")
            owner = f" [{link.account}]" if link.account and link.account != e.account else ""
            lines.append(f"{indent}    {link.id}{owner}{key}  <- {link.how}")
    else:
        if e.image_id:
            lines.append(f"{indent}  image:     {e.image_id}")
        if e.chain:
            lines.append(f"{indent}  made:      {e.chain[0].how}")
        for part in e.parts:
            lines.append(render_text(part, indent + "  "))
    return "\n".join(lines)


def _show(value: Any) -> str:
    return "(absent)" if value is None else str(value).lower() if isinstance(value, bool) else str(value)

"""``report``: the encryption posture of one account or all, as findings with severities.

Findings (code: severity):
  UNENCRYPTED_VOLUME / UNENCRYPTED_SNAPSHOT: medium
  UNENCRYPTED_IMAGE (an image with an unencrypted snapshot): medium; high when public
  EBD_OFF (encryption by default off in a region the account uses): low
  SNAPSHOT_SHARED / IMAGE_SHARED (with whom): low; high when public ("all")
  KEY_PENDING_DELETION with dependants: critical (info without)
  KEY_DISABLED with dependants: high (info without)
  KEY_DELETED_IN_USE (resources under a crypto-shredded key, R-KEY-8): high
  KEY_OPEN_TO_ANY_ACCOUNT (a "*" principal that lets an unnamed account decrypt): high;
      KEY_OPEN_TO_ACCOUNTS (named accounts) and KEY_GRANTED_TO_ACCOUNTS (grants): medium
  IMAGE_MULTIPLE_KEYS (an image whose snapshots use several keys, R-IMG-2): low
Fixing the cause makes the finding disappear on the next report (nothing is stored).
"""

from __future__ import annotations

from collections import defaultdict

from sqlalchemy import Connection

from ebscrypt.domain.exposure import grant_openings, policy_openings
from ebscrypt.engines.insight import resources as res
from ebscrypt.engines.insight.records import Finding, severity_rank
from ebscrypt.storage.tables.ec2 import ec2_snapshots, ec2_volumes
from ebscrypt.storage.tables.ec2_images import ec2_images

# A finding names at most this many dependants (the count is always complete).
SHOWN = 10


def report(conn: Connection, account: str | None = None) -> list[Finding]:
    """Every finding for ``account`` (None: all accounts), most severe first."""
    findings: list[Finding] = []
    volumes = [v for v in res.table_rows(conn, ec2_volumes, account) if v["state"] not in res.GONE_STATES]
    snapshots = res.table_rows(conn, ec2_snapshots, account)
    images = res.table_rows(conn, ec2_images, account)
    snap_by_id = {s["id"]: s for s in snapshots}

    for v in volumes:
        if not v["encrypted"]:
            findings.append(Finding("medium", "UNENCRYPTED_VOLUME", v["account"], v["region"], v["id"],
                                    f"volume {v['id']} is not encrypted"))
    for s in snapshots:
        if not s["encrypted"]:
            findings.append(Finding("medium", "UNENCRYPTED_SNAPSHOT", s["account"], s["region"], s["id"],
                                    f"snapshot {s['id']} is not encrypted"))
    findings += _settings(conn, account)
    findings += _sharing(conn, snapshots, images)
    findings += _images(conn, images, snap_by_id)
    findings += _keys(conn, account)
    findings.sort(key=lambda f: (-severity_rank(f.severity), f.account, f.region, f.code, f.resource))
    return findings


def _settings(conn: Connection, account: str | None) -> list[Finding]:
    settings = res.settings(conn)
    out = []
    for acct, region in sorted(res.accounts_and_regions(conn, account)):
        row = settings.get((acct, region))
        if row is None or not row["ebs_encryption_by_default"]:
            out.append(Finding("low", "EBD_OFF", acct, region, f"{acct}/{region}",
                               f"encryption by default is off for account {acct} in {region}: new volumes "
                               f"are unencrypted unless a request asks (R-OUT-5/6)"))
    return out


def _sharing(conn: Connection, snapshots: list[res.Row], images: list[res.Row]) -> list[Finding]:
    out = []
    snap_grants = res.snapshot_grantees(conn, [s["id"] for s in snapshots]) if snapshots else {}
    for s in snapshots:
        who = snap_grants.get(s["id"])
        if who:
            public = "all" in who
            out.append(Finding("high" if public else "low", "SNAPSHOT_SHARED", s["account"], s["region"], s["id"],
                               f"snapshot {s['id']} is shared with " + (
                                   "everyone (public)" if public else ", ".join(who)),
                               tuple(who)))
    image_grants = res.image_grantees(conn, [i["image_id"] for i in images]) if images else {}
    for i in images:
        who = list(image_grants.get(i["image_id"], []))
        if i["public"]:
            who.insert(0, "all")
        if who:
            public = "all" in who
            out.append(Finding("high" if public else "low", "IMAGE_SHARED", i["account"], i["region"], i["image_id"],
                               f"image {i['image_id']} ({i['name']}) is shared with " + (
                                   "everyone (public)" if public else ", ".join(who)),
                               tuple(who)))
    return out


def _images(conn: Connection, images: list[res.Row], snap_by_id: dict[str, res.Row]) -> list[Finding]:
    out = []
    for i in images:
        found = [snap_by_id.get(sid) or res.snapshot(conn, sid) for sid in res.image_snapshot_ids(i)]
        snaps = [s for s in found if s is not None]
        plain = [s["id"] for s in snaps if not s["encrypted"]]
        if plain:
            out.append(Finding("high" if i["public"] else "medium", "UNENCRYPTED_IMAGE", i["account"], i["region"],
                               i["image_id"], f"image {i['image_id']} ({i['name']}) has unencrypted snapshots: "
                               + ", ".join(plain), tuple(plain)))
        keys = sorted({s["kms_key_arn"] for s in snaps if s["kms_key_arn"]})
        if len(keys) > 1:
            out.append(Finding("low", "IMAGE_MULTIPLE_KEYS", i["account"], i["region"], i["image_id"],
                               f"image {i['image_id']} ({i['name']}) uses {len(keys)} keys: " + ", ".join(keys),
                               tuple(keys)))
    return out


def _keys(conn: Connection, account: str | None) -> list[Finding]:
    out = []
    counts = res.dependant_counts(conn)
    known: set[str] = set()
    for k in res.keys(conn, account):
        arn = k["arn"]
        known.add(arn)
        n = counts.get(arn, 0)
        label = _label(conn, arn)
        if k["state"] in ("PendingDeletion", "Disabled"):
            pending = k["state"] == "PendingDeletion"
            details = _dependant_names(conn, arn) if n else ()
            when = f" (deletion on {k['deletion_date']:%Y-%m-%d})" if pending and k["deletion_date"] else ""
            severity = ("critical" if pending else "high") if n else "info"
            out.append(Finding(severity, "KEY_PENDING_DELETION" if pending else "KEY_DISABLED", k["account"],
                               k["region"], arn,
                               f"key {label} is {'pending deletion' if pending else 'disabled'}{when}; "
                               f"{n} volume(s)/snapshot(s) depend on it"
                               + (" and become unreadable" if pending and n else ""), details))
        openings = policy_openings(k["policy"], k["account"], arn)
        for o in openings:
            if o.who == "*":
                out.append(Finding("high", "KEY_OPEN_TO_ANY_ACCOUNT",
                                   k["account"], k["region"], arn,
                                   f"the {o.how} of key {label} lets any account use it", ("*",)))
        named = [o for o in openings if o.who != "*"]
        if named:
            out.append(Finding("medium", "KEY_OPEN_TO_ACCOUNTS", k["account"], k["region"], arn,
                               f"the key policy of key {label} lets accounts {', '.join(o.who for o in named)} "
                               f"use it", tuple(f"{o.who} ({o.how})" for o in named)))
        granted = grant_openings([(g["grant_id"], g["grantee"]) for g in res.grants_of(conn, k["key_id"])],
                                 k["account"])
        by_account: dict[str, list[str]] = defaultdict(list)
        for o in granted:
            by_account[o.who].append(o.how)
        if by_account:
            out.append(Finding("medium", "KEY_GRANTED_TO_ACCOUNTS", k["account"], k["region"], arn,
                               f"grants on key {label} let accounts {', '.join(sorted(by_account))} use it",
                               tuple(f"{a}: {len(h)} grant(s)" for a, h in sorted(by_account.items()))))
    # Resources whose key row is gone: crypto-shredded (R-KEY-8), their data is unreadable.
    for arn, n in sorted(counts.items()):
        if arn in known:
            continue
        parts = arn.split(":")
        owner = parts[4] if len(parts) > 4 else ""
        if account and owner != account:
            continue
        if res.key_by_id(conn, arn) is None:
            out.append(Finding("high", "KEY_DELETED_IN_USE", owner, parts[3] if len(parts) > 3 else "", arn,
                               f"key {arn} was deleted; {n} volume(s)/snapshot(s) under it are unreadable",
                               _dependant_names(conn, arn)))
    return out


def _label(conn: Connection, arn: str) -> str:
    key = res.key_info(conn, arn)
    return f"{key.key_id} ({', '.join(key.aliases)})" if key and key.aliases else arn


def _dependant_names(conn: Connection, arn: str) -> tuple[str, ...]:
    vols, snaps = res.dependants(conn, arn, SHOWN)
    names = [f"{r['id']} [{r['account']}]" for r in (*vols, *snaps)]
    image_ids = sorted({i for ids in res.images_using(conn, [s["id"] for s in snaps]).values() for i in ids})
    names += [f"{i} (image)" for i in image_ids]
    return tuple(names)


def at_or_above(findings: list[Finding], severity: str) -> list[Finding]:
    floor = severity_rank(severity)
    return [f for f in findings if severity_rank(f.severity) >= floor]

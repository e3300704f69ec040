"""The KMS audit trail (CloudTrail records, engines/kms/audit.py) filtered for people.

A record matches ``account`` when that account made the call or owns a key it used;
``key`` matches a key id or ARN among its resources or request parameters; ``resource``
matches anywhere in the request parameters (the EBS encryption context names the volume
or snapshot: ``aws:ebs:id``). The newest records come first; at most ``limit``.
"""

from __future__ import annotations

import json
from collections import deque
from pathlib import Path
from typing import Any

from ebscrypt.engines.kms.audit import read_events

DEFAULT_LIMIT = 200


def matches(record: dict[str, Any], *, account: str | None, key: str | None, resource: str | None) -> bool:
    if account:
        owners = {r.get("accountId") for r in record.get("resources") or []}
        if record.get("recipientAccountId") != account and account not in owners:
            return False
    if key:
        arns = [r.get("ARN", "") for r in record.get("resources") or []]
        params = json.dumps(record.get("requestParameters") or {})
        if not any(a == key or a.endswith("/" + key) for a in arns) and key not in params:
            return False
    if resource:
        if resource not in json.dumps(record.get("requestParameters") or {}):
            return False
    return True


def records(data_dir: Path | str, *, account: str | None = None, key: str | None = None,
            resource: str | None = None, limit: int = DEFAULT_LIMIT) -> list[dict[str, Any]]:
    kept: deque[dict[str, Any]] = deque(maxlen=limit)
    for record in read_events(data_dir):
        if matches(record, account=account, key=key, resource=resource):
            kept.append(record)
    return list(reversed(kept))

"""Key tags: TagResource, UntagResource, ListResourceTags (CreateKey's ``Tags`` are
checked here too). At most 50 tags a key; ``aws:`` keys are reserved.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence

from sqlalchemy import and_, delete, insert, select, update

from ebscrypt.context import Caller
from ebscrypt.engines.kms import api, checks
from ebscrypt.engines.kms.paging import page
from ebscrypt.errors import KmsLimitExceeded, KmsTag, ServiceError
from ebscrypt.storage.tables.kms import kms_tags

if TYPE_CHECKING:  # the collaborators, given by the engine (no import cycle)
    from ebscrypt.engines.kms.access import KeyAccess
    from ebscrypt.storage.db import Database

MAX_TAGS = 50


def validate_tags(tags: Sequence[Mapping[str, str]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for t in tags:
        k, v = t.get("TagKey"), t.get("TagValue")
        if not isinstance(k, str) or not 1 <= len(k) <= 128 or not isinstance(v, str) or len(v) > 256:
            raise KmsTag("Tag keys must be 1-128 characters and tag values 0-256 characters.")
        if k.startswith("aws:"):
            raise KmsTag("Tag keys beginning with aws: are reserved.")
        out[k] = v
    if len(out) > MAX_TAGS:
        raise _too_many_tags()
    return out


def _too_many_tags() -> ServiceError:
    return KmsLimitExceeded(f"A KMS key can have at most {MAX_TAGS} tags.")


class TagOperations:
    """TagResource, UntagResource, ListResourceTags."""

    def __init__(self, db: Database, access: KeyAccess) -> None:
        self.db = db
        self.access = access

    def tag_resource(self, caller: Caller, args: api.TagResource) -> dict[str, Any]:
        row = self.access.key_to_change(caller, args.key_id, "kms:TagResource", allow_alias=False)
        checks.require_not_pending(row)
        tags = validate_tags(args.tags or [])
        with self.db.begin() as conn:
            existing = {
                r.tag_key for r in conn.execute(select(kms_tags.c.tag_key).where(kms_tags.c.key_id == row.key_id))
            }
            if len(existing | set(tags)) > MAX_TAGS:
                raise _too_many_tags()
            for k, v in tags.items():
                if k in existing:
                    conn.execute(
                        update(kms_tags)
                        .where(kms_tags.c.key_id == row.key_id, kms_tags.c.tag_key == k)
                        .values(tag_value=v)
                    )
                else:
                    conn.execute(insert(kms_tags).values(key_id=row.key_id, tag_key=k, tag_value=v))
        return {}

    def untag_resource(self, caller: Caller, args: api.UntagResource) -> dict[str, Any]:
        row = self.access.key_to_change(caller, args.key_id, "kms:UntagResource", allow_alias=False)
        checks.require_not_pending(row)
        keys = args.tag_keys or []
        with self.db.begin() as conn:
            for k in keys:
                conn.execute(delete(kms_tags).where(and_(kms_tags.c.key_id == row.key_id, kms_tags.c.tag_key == k)))
        return {}

    def list_resource_tags(self, caller: Caller, args: api.KeyPage) -> dict[str, Any]:
        row = self.access.resolve(caller, args.key_id, allow_alias=False, own_account=True)
        self.access.authorize(caller, row, "kms:ListResourceTags")
        with self.db.read() as conn:
            rows = conn.execute(
                select(kms_tags).where(kms_tags.c.key_id == row.key_id).order_by(kms_tags.c.tag_key)
            ).all()
        items, out = page(rows, args.limit, args.marker, default=50, max_limit=50)
        out["Tags"] = [{"TagKey": r.tag_key, "TagValue": r.tag_value} for r in items]
        return out

"""The Describe fast path of issue 15 (Describe at scale) keeps every answer (R-WIRE):
records read from the SQLite cursor's own rows equal those SQLAlchemy's typed rows give;
a page's tags read as one id range equal the tags of an IN list (and never another
account's); the per-request compiled filters select what the per-item ``matches`` does,
wildcards, escapes and tags included; and the page's tags are planned through the range
index."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import pytest
from sqlalchemy import insert, select

from ebscrypt.engines.ec2.filters import apply_filters, matches
from ebscrypt.engines.ec2.records import Snapshot, Volume, from_result
from ebscrypt.engines.ec2.tags import page_tags_for, tags_for
from ebscrypt.services.ec2.snapshots import _FILTERS as SNAP_FILTERS, _tag_map, snapshot_dict
from ebscrypt.storage.db import Database
from ebscrypt.storage.tables.ec2 import ec2_snapshots, ec2_tags, ec2_volumes

ACCOUNT, OTHER, REGION = "111111111111", "222222222222", "us-east-1"
KEY = "arn:aws:kms:us-east-1:111111111111:key/11111111-2222-3333-4444-555555555555"
T0 = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    path: Path = tmp_path_factory.mktemp("fast") / "meta.db"
    database = Database(f"sqlite:///{path}")
    with database.begin() as conn:
        for i in range(120):
            owner = OTHER if i % 7 == 0 else ACCOUNT
            sid = f"snap-{i:017x}"
            conn.execute(insert(ec2_snapshots).values(
                id=sid, account=owner, region=REGION, state=("completed", "pending", "error")[i % 3],
                state_message="why" if i % 3 == 2 else None, progress=i % 101, volume_size=1 + i % 5,
                encrypted=i % 2 == 0, kms_key_arn=KEY if i % 2 == 0 else None, data_key_id=f"dk-{i}" if i % 2 == 0 else None,
                data_key_blob=b"\x00\x01" if i % 2 == 0 else None, data_key_context='{"a": "b"}' if i % 2 == 0 else None,
                volume_id="vol-ffffffff", parent_id=None, source_snapshot_id=None, source_region=None,
                description=("a <b> & c", "", None, "d*e?")[i % 4], origin="volume", client_token=None,
                start_time=T0, completion_time=T0 if i % 3 == 0 else None))
            if i % 3 == 0:
                conn.execute(insert(ec2_tags).values(resource_id=sid, key="Name", value=f"n{i % 4}",
                                                     resource_type="snapshot", account=owner, region=REGION))
                conn.execute(insert(ec2_tags).values(resource_id=sid, key="env", value="x*y",
                                                     resource_type="snapshot", account=owner, region=REGION))
            conn.execute(insert(ec2_volumes).values(
                id=f"vol-{i:017x}", account=owner, region=REGION, availability_zone="us-east-1a", size=1,
                volume_type="gp3", iops=3000 if i % 2 else None, throughput=None, multi_attach=i % 5 == 0,
                state="available", state_message=None, encrypted=i % 2 == 1, kms_key_arn=KEY if i % 2 else None,
                data_key_id=None, data_key_blob=None, data_key_context=None, snapshot_id=None, client_token=None,
                auto_enable_io=i % 3 == 0, create_time=T0))
    yield database
    database.dispose()


@pytest.mark.parametrize("table,cls", [(ec2_snapshots, Snapshot), (ec2_volumes, Volume)])
def test_records_from_the_cursor_rows_equal_the_typed_rows(db: Database, table: Any, cls: Any) -> None:
    with db.read() as conn:
        fast = from_result(cls, conn.execute(select(table).order_by(table.c.id)))
        typed = [cls.from_row(r) for r in conn.execute(select(table).order_by(table.c.id)).mappings()]
    assert fast == typed and len(fast) == 120
    for record in fast:
        for name, value in vars(record).items():
            typed_value = getattr(typed[fast.index(record)], name)
            assert type(value) is type(typed_value), (name, value, typed_value)
            if isinstance(value, datetime):
                assert value.tzinfo is timezone.utc and value == T0


def test_page_tags_as_one_range_equal_the_in_list(db: Database) -> None:
    with db.read() as conn:
        every = [r.id for r in conn.execute(select(ec2_snapshots.c.id).order_by(ec2_snapshots.c.id))]
        own = [r.id for r in conn.execute(select(ec2_snapshots.c.id).where(
            ec2_snapshots.c.account == ACCOUNT).order_by(ec2_snapshots.c.id))]
        for ids in (own, own[10:90], every, every[::3], own[:3]):
            assert page_tags_for(conn, ACCOUNT, ids) == tags_for(conn, ACCOUNT, ids)
        ranged = page_tags_for(conn, ACCOUNT, every)
    # another account's tags (its snapshots are in the range) are not shown to the caller
    assert ranged[f"snap-{0:017x}"] == [] and ranged[f"snap-{3:017x}"] == [
        {"Key": "Name", "Value": "n3"}, {"Key": "env", "Value": "x*y"}]


@pytest.mark.parametrize("filters", [
    [{"Name": "status", "Values": ["completed", "error"]}],
    [{"Name": "status", "Values": ["comp*"]}],
    [{"Name": "description", "Values": ["a <b> & c"]}],
    [{"Name": "description", "Values": ["d\\*e\\?"]}],
    [{"Name": "description", "Values": ["d*e?"]}],
    [{"Name": "description", "Values": [""]}],
    [{"Name": "encrypted", "Values": ["true"]}, {"Name": "volume-size", "Values": ["2", "3"]}],
    [{"Name": "kms-key-id", "Values": [KEY]}],
    [{"Name": "tag:Name", "Values": ["n1", "n3"]}],
    [{"Name": "tag:env", "Values": ["x*y"]}],
    [{"Name": "tag:env", "Values": ["x\\*y"]}],
    [{"Name": "tag-key", "Values": ["Name"]}],
    [{"Name": "tag-value", "Values": ["n?"]}],
    [{"Name": "progress", "Values": []}],
])
def test_compiled_filters_select_what_matches_selects(db: Database, filters: list[dict[str, Any]]) -> None:
    with db.read() as conn:
        snaps = from_result(Snapshot, conn.execute(select(ec2_snapshots).order_by(ec2_snapshots.c.id)))
        tags = tags_for(conn, ACCOUNT, [s.id for s in snaps])
    items = [snapshot_dict(s, tags[s.id]) for s in snaps]
    expected = [d for d in items if matches(d, filters, SNAP_FILTERS, _tag_map)]
    assert apply_filters(items, filters, SNAP_FILTERS, _tag_map) == expected


def test_page_tags_are_planned_through_the_range_index(db: Database) -> None:
    from tests.unit.test_ec2_sql_filters import _plans

    with db.read() as conn:
        ids = [r.id for r in conn.execute(select(ec2_snapshots.c.id).order_by(ec2_snapshots.c.id))]
    plan = _plans(db, lambda c: page_tags_for(c, ACCOUNT, ids))
    assert any("ix_ec2_tags_account_resource" in d and "resource_id>" in d for d in plan), plan

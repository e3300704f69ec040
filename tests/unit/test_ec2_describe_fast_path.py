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
from ebscrypt.engines.ec2.tags import page_tags_for, tags_for, tags_in_lists
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


def test_tags_of_a_json_id_list_equal_the_in_lists(db: Database) -> None:
    """A filtered Describe's tags (SQLite: the ids bound as one JSON array) are those of
    the IN lists, for any ids (another account's, unknown, repeated, with quotes): only
    the caller's tags, each resource's in key order; read through the account's tag index."""
    from tests.unit.test_ec2_sql_filters import _plans

    with db.read() as conn:
        every = [r.id for r in conn.execute(select(ec2_snapshots.c.id).order_by(ec2_snapshots.c.id))]
        for ids in (every, every[::-3], every[:2] + ['snap-"quoted\\', "snap-unknown"], every[3:4] * 3):
            assert tags_for(conn, ACCOUNT, ids) == tags_in_lists(conn, ACCOUNT, list(ids))
            assert tags_for(conn, OTHER, ids) == tags_in_lists(conn, OTHER, list(ids))
        mine = tags_for(conn, ACCOUNT, every)
    assert mine[f"snap-{0:017x}"] == [] and mine[f"snap-{3:017x}"] == [
        {"Key": "Name", "Value": "n3"}, {"Key": "env", "Value": "x*y"}]
    plan = _plans(db, lambda c: tags_for(c, ACCOUNT, every))
    assert any("ix_ec2_tags_account_resource" in d and "resource_id=?" in d for d in plan), plan


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


def _image_rows(database: Database) -> None:
    import json

    from ebscrypt.storage.tables.ec2_images import ec2_image_launch_permissions, ec2_images

    with database.begin() as conn:
        for i in range(40):
            owner = (ACCOUNT, OTHER, OTHER)[i % 3]
            image_id = f"ami-{(i * 7919) % 1000:017x}"  # ids not in creation order
            conn.execute(insert(ec2_images).values(
                image_id=image_id, account=owner, region=REGION, name=f"img-{i}", description=None,
                state="available", state_reason_code=None, state_reason_message=None, architecture="x86_64",
                virtualization_type="hvm", root_device_name="/dev/xvda", root_device_type="ebs", ena_support=True,
                sriov_net_support=None, boot_mode=None, tpm_support=None, imds_support=None, image_location=None,
                kernel_id=None, ramdisk_id=None, platform=None, public=owner == OTHER and i % 2 == 0,
                mappings=json.dumps([{"DeviceName": "/dev/xvda", "Ebs": {"SnapshotId": "snap-1", "VolumeSize": 8}}]),
                source_image_id=None, source_region=None, source_instance_id=None, client_token=None,
                created_at=T0))
            if owner == OTHER and i % 2 == 1 and i % 5 == 0:
                conn.execute(insert(ec2_image_launch_permissions).values(image_id=image_id, user_id=ACCOUNT))
            if i % 4 == 0:
                conn.execute(insert(ec2_tags).values(resource_id=image_id, key="Name", value=f"t{i % 3}",
                                                     resource_type="image", account=ACCOUNT, region=REGION))


@pytest.mark.parametrize("params", [
    {}, {"Owners": ["self"]}, {"Owners": [OTHER]}, {"Filters": [{"Name": "tag:Name", "Values": ["t0", "t2"]}]},
    {"Owners": ["self"], "Filters": [{"Name": "name", "Values": ["img-1*", "img-3"]}]},
    {"Filters": [{"Name": "is-public", "Values": ["true"]}]},
])
def test_describe_images_pages_in_sql_with_the_same_answer(tmp_path: Path, params: dict[str, Any]) -> None:
    """DescribeImages (R-WIRE paging, R-SHARE visibility): pages read in SQL by image id
    join into the unpaged answer — own, public and shared images, no other — and a page
    is read through the page index, not by sorting the region's images."""
    from types import SimpleNamespace

    from ebscrypt.context import Caller, RequestContext
    from ebscrypt.engines.ec2.images import _visible_images
    from ebscrypt.services.ec2.images import describe_images
    from tests.unit.test_ec2_sql_filters import _plans

    database = Database(f"sqlite:///{tmp_path / 'i.db'}")
    try:
        _image_rows(database)
        runtime = SimpleNamespace(db=database, engines={}, settings=SimpleNamespace(auth="dev"))
        ctx = RequestContext(Caller(ACCOUNT, REGION), runtime, "r", "ec2", "DescribeImages")  # type: ignore[arg-type]
        whole = [d["ImageId"] for d in describe_images(ctx, dict(params))["Images"]]
        paged: list[str] = []
        token = None
        while True:
            answer = describe_images(ctx, dict(params, MaxResults=6, **({"NextToken": token} if token else {})))
            paged += [d["ImageId"] for d in answer["Images"]]
            token = answer.get("NextToken")
            if not token:
                break
        assert paged == whole == sorted(whole) and len(set(whole)) == len(whole)
        if not params:  # own (14), public of the other account (13), shared with the caller (3)
            assert len(whole) == 14 + 13 + 3
        plan = _plans(database, lambda c: _visible_images(ctx, [], ["self"], [], after="ami-0", limit=7))
        assert any("ix_ec2_images_page" in d for d in plan) and not any("TEMP B-TREE" in d for d in plan), plan
    finally:
        database.dispose()


def test_image_records_by_position_equal_the_typed_rows(tmp_path: Path) -> None:
    from ebscrypt.engines.ec2.image_records import Image
    from ebscrypt.storage.tables.ec2_images import ec2_images

    database = Database(f"sqlite:///{tmp_path / 'r.db'}")
    try:
        _image_rows(database)
        with database.read() as conn:
            fast = Image.from_result(conn.execute(select(ec2_images).order_by(ec2_images.c.image_id)))
            typed = [Image.from_row(r) for r in conn.execute(
                select(ec2_images).order_by(ec2_images.c.image_id)).mappings()]
        assert fast == typed and len(fast) == 40
        assert all(type(a.public) is bool and type(a.ena_support) is bool and a.created_at.tzinfo is timezone.utc
                   and isinstance(a.mappings, list) for a in fast)
    finally:
        database.dispose()


def test_page_attachments_equal_those_of_the_in_list(tmp_path: Path) -> None:
    from ebscrypt.engines.ec2.volumes import attachments_of, page_attachments_of
    from ebscrypt.storage.tables.ec2 import ec2_volume_attachments
    from tests.unit.test_ec2_sql_filters import _plans

    database = Database(f"sqlite:///{tmp_path / 'a.db'}")
    try:
        with database.begin() as conn:
            for i in range(150):
                owner = OTHER if i % 4 == 0 else ACCOUNT
                vid = f"vol-{i:017x}"
                conn.execute(insert(ec2_volumes).values(
                    id=vid, account=owner, region=REGION, availability_zone="us-east-1a", size=1, volume_type="gp3",
                    iops=None, throughput=None, multi_attach=i % 6 == 0, state="in-use", state_message=None,
                    encrypted=False, kms_key_arn=None, data_key_id=None, data_key_blob=None, data_key_context=None,
                    snapshot_id=None, client_token=None, auto_enable_io=False, create_time=T0))
                for n in range(2 if i % 6 == 0 else 1 if i % 2 else 0):
                    conn.execute(insert(ec2_volume_attachments).values(
                        volume_id=vid, instance_id=f"i-{i:04d}{n}", device=f"/dev/sd{'fg'[n]}", state="attached",
                        attach_time=T0, delete_on_termination=n == 0))
        with database.read() as conn:
            own = [r.id for r in conn.execute(select(ec2_volumes.c.id).where(
                ec2_volumes.c.account == ACCOUNT).order_by(ec2_volumes.c.id))]
            for ids in (own, own[20:100], own[::3], own[:5]):
                assert page_attachments_of(conn, ACCOUNT, REGION, ids) == attachments_of(conn, ids)
            assert sum(len(v) for v in page_attachments_of(conn, ACCOUNT, REGION, own).values()) > 60
        plan = _plans(database, lambda c: page_attachments_of(c, ACCOUNT, REGION, own))
        assert any("ix_ec2_volumes_page" in d for d in plan), plan
    finally:
        database.dispose()


def test_an_older_database_gets_the_v10_indexes(tmp_path: Path) -> None:
    """Schema step 10 (additive): a database made before it gets the tag-range and the
    image page indexes on open."""
    from sqlalchemy import inspect, text, update

    from ebscrypt.storage import db as db_module
    from ebscrypt.storage.schema import schema_version

    url = f"sqlite:///{tmp_path / 'v9.db'}"
    first = Database(url)
    with first.begin() as conn:
        for name, _, _ in db_module.TAG_RANGE_INDEXES:
            conn.execute(text(f"DROP INDEX {name}"))
        conn.execute(update(schema_version).values(version=9))
    first.dispose()
    again = Database(url)
    try:
        with again.read() as conn:
            names = {ix["name"] for t in ("ec2_tags", "ec2_images") for ix in inspect(conn).get_indexes(t)}
        assert {name for name, _, _ in db_module.TAG_RANGE_INDEXES} <= names
    finally:
        again.dispose()


@pytest.mark.parametrize("when", [T0, datetime(2026, 12, 31, 23, 59, 59, 999999, tzinfo=timezone.utc),
                                  datetime(1999, 1, 1, tzinfo=timezone.utc)])
def test_image_creation_date_is_the_strftime_text(when: datetime) -> None:
    """An image's CreationDate (R-WIRE: to the second, .000Z) is the text strftime gave."""
    from dataclasses import replace

    from ebscrypt.engines.ec2.image_records import Image

    image = Image(image_id="ami-1", account=ACCOUNT, region=REGION, name="n", description=None, state="available",
                  state_reason_code=None, state_reason_message=None, architecture="x86_64",
                  virtualization_type="hvm", root_device_name="/dev/xvda", root_device_type="ebs", ena_support=True,
                  sriov_net_support=None, boot_mode=None, tpm_support=None, imds_support=None, image_location=None,
                  kernel_id=None, ramdisk_id=None, platform=None, public=False, mappings=[], source_image_id=None,
                  source_region=None, source_instance_id=None, client_token=None, created_at=T0)
    assert replace(image, created_at=when).creation_date == when.strftime("%Y-%m-%dT%H:%M:%S.000Z")


@pytest.mark.parametrize("text", ['[{"DeviceName": "/dev/xvda", "Ebs": {"VolumeSize": 8}}]', "[]",
                                  ' [{"NoDevice": ""}]', '[{"DeviceName": "x"}] \n'])
def test_stored_mappings_decode_as_json_loads_does(text: str) -> None:
    import json

    from ebscrypt.engines.ec2.image_records import _mappings

    assert _mappings(text) == json.loads(text)
    with pytest.raises(ValueError):
        _mappings(text + "x")

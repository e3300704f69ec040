"""Describe pages rendered straight from their stored rows (issue 15, Describe at scale)
answer exactly what the views do (R-WIRE): for DescribeSnapshots and DescribeVolumes pages
of awkward rows (members absent, values needing escapes, times not in the plain stored
form, attachments, tags, another account's rows), the XML written from the rows is
byte for byte the XML of the view dicts the same table builds; the view tables refuse
what they cannot rewrite; and a time's text sliced from its stored form is what the XML
writer formats from the datetime."""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

import pytest
from sqlalchemy import insert, select

from ebscrypt.context import Caller, RequestContext
from ebscrypt.engines.ec2.records import ROW_ENV, Snapshot, Volume, from_result, row_iso_texts, row_locals
from ebscrypt.engines.ec2.image_records import Image
from ebscrypt.engines.ec2.tags import tags_for
from ebscrypt.engines.ec2.volumes import attachments_of
from ebscrypt.services.ec2.snapshots import SNAPSHOT_VIEW, describe_snapshots, snapshot_dict
from ebscrypt.services.ec2.images import describe_images, image_view
from ebscrypt.services.ec2.view_table import RowsPage, ViewTable
from ebscrypt.services.ec2.volumes import describe_volumes, volume_dict
from ebscrypt.storage.db import Database
from ebscrypt.storage.tables.ec2 import ec2_snapshots, ec2_tags, ec2_volume_attachments, ec2_volumes
from ebscrypt.storage.tables.ec2_images import ec2_images
from ebscrypt.wire.codec import codec_for
from ebscrypt.wire.codec.xml_writer import Collecting, _iso8601

ID = {"Snapshots": "SnapshotId", "Volumes": "VolumeId", "Images": "ImageId"}
ACCOUNT, OTHER, REGION = "111111111111", "222222222222", "us-east-1"
KEY = "arn:aws:kms:us-east-1:111111111111:key/11111111-2222-3333-4444-555555555555"
T0 = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    path: Path = tmp_path_factory.mktemp("rows") / "meta.db"
    database = Database(f"sqlite:///{path}")
    with database.begin() as conn:
        for i in range(90):
            owner = OTHER if i % 7 == 0 else ACCOUNT
            sid, vid = f"snap-{i:017x}", f"vol-{i:017x}"
            conn.execute(insert(ec2_snapshots).values(
                id=sid, account=owner, region=REGION, state=("completed", "pending", "error")[i % 3],
                state_message="why <not>" if i % 3 == 2 else None, progress=i % 101, volume_size=1 + i % 5,
                encrypted=i % 2 == 0, kms_key_arn=KEY if i % 4 == 0 else None,
                data_key_id=f"dk-{i}" if i % 2 == 0 else None, data_key_blob=None, data_key_context=None,
                volume_id=None if i % 5 == 0 else "vol-ffffffff", parent_id=None, source_snapshot_id=None,
                source_region=None, description=("a <b> & c\r\nd", "", None, "plain")[i % 4], origin="volume",
                client_token=None, start_time=T0, completion_time=T0 if i % 3 == 0 else None))
            conn.execute(insert(ec2_volumes).values(
                id=vid, account=owner, region=REGION, availability_zone="us-east-1a", size=1 + i,
                volume_type="gp3", iops=3000 if i % 2 else None, throughput=125 if i % 3 else None,
                multi_attach=i % 5 == 0, state="in-use" if i % 6 == 0 else "available", state_message=None,
                encrypted=i % 2 == 1, kms_key_arn=KEY if i % 2 else None, data_key_id=None, data_key_blob=None,
                data_key_context=None, snapshot_id="snap-1" if i % 4 == 0 else None, client_token=None,
                auto_enable_io=False, create_time=T0))
            if i % 6 == 0:
                conn.execute(insert(ec2_volume_attachments).values(
                    volume_id=vid, instance_id=f"i-{i:017x}", device="/dev/sdf", state="attached", attach_time=T0,
                    delete_on_termination=i % 12 == 0))
            conn.execute(insert(ec2_images).values(
                image_id=f"ami-{i:017x}", account=owner, region=REGION, name=f"img-{i}",
                description=("a <b> & c", "", None)[i % 3], state="failed" if i % 5 == 1 else "available",
                state_reason_code="Client.Error" if i % 5 == 1 else None,
                state_reason_message="x & y" if i % 10 == 1 else None, architecture="x86_64",
                virtualization_type="hvm", root_device_name="/dev/xvda" if i % 2 else None, root_device_type="ebs",
                ena_support=(True, False, None)[i % 3], sriov_net_support="simple" if i % 4 == 0 else None,
                boot_mode=None, tpm_support=None, imds_support="v2.0" if i % 3 == 0 else None,
                image_location="loc&x" if i % 6 == 0 else None, kernel_id=None, ramdisk_id=None,
                platform="windows" if i % 4 == 1 else None, public=i % 2 == 0,
                mappings=json.dumps([{"DeviceName": "/dev/xvda", "Ebs": {"SnapshotId": sid, "VolumeSize": 8,
                                                                         "DeleteOnTermination": i % 2 == 0}},
                                     *([{"DeviceName": "/dev/sdb", "NoDevice": ""}] if i % 3 == 0 else [])]),
                source_image_id="ami-1" if i % 8 == 0 else None, source_region="eu-west-1" if i % 16 == 0 else None,
                source_instance_id=None, client_token=None, created_at=T0))
            if i % 3 == 0:
                for rid, kind in ((sid, "snapshot"), (vid, "volume"), (f"ami-{i:017x}", "image")):
                    conn.execute(insert(ec2_tags).values(resource_id=rid, key="Name", value=f"n&{i}", account=owner,
                                                         resource_type=kind, region=REGION))
    # Times in other stored forms than the plain 26 characters: the writers format them.
    c = sqlite3.connect(path)
    c.execute("update ec2_snapshots set start_time='2026-01-02 03:04:05' where id='snap-00000000000000004'")
    c.execute("update ec2_snapshots set start_time='0999-01-02 03:04:05.678901' where id='snap-00000000000000008'")
    c.execute("update ec2_volumes set create_time='2026-01-02 03:04:05.5+00:00' where id='vol-00000000000000004'")
    c.execute("update ec2_images set created_at='2026-01-02 03:04:05' where image_id='ami-00000000000000004'")
    c.commit()
    c.close()
    yield database
    database.dispose()


def _ctx(database: Database, operation: str) -> RequestContext:
    runtime = SimpleNamespace(db=database, engines={}, settings=SimpleNamespace(auth="dev"))
    return RequestContext(Caller(ACCOUNT, REGION), runtime, "r", "ec2", operation)  # type: ignore[arg-type]


@pytest.mark.parametrize("operation,handler,member,params", [
    ("DescribeSnapshots", describe_snapshots, "Snapshots", {"OwnerIds": ["self"], "MaxResults": 1000}),
    ("DescribeSnapshots", describe_snapshots, "Snapshots", {"MaxResults": 7}),
    ("DescribeVolumes", describe_volumes, "Volumes", {"MaxResults": 500}),
    ("DescribeVolumes", describe_volumes, "Volumes", {"MaxResults": 6}),
    ("DescribeImages", describe_images, "Images", {"Owners": ["self"], "MaxResults": 1000}),
    ("DescribeImages", describe_images, "Images", {"MaxResults": 9}),
])
def test_a_page_from_its_rows_is_the_xml_of_its_views(db: Database, operation: str, handler: Any, member: str,
                                                      params: dict[str, Any]) -> None:
    codec = codec_for("ec2")
    model = codec.service_model.operation_model(operation)
    ctx = _ctx(db, operation)
    token, pages = None, 0
    while True:
        answer = handler(ctx, dict(params, **({"NextToken": token} if token else {})))
        items = answer[member]
        assert isinstance(items, RowsPage)  # the rows path was taken
        from_rows = codec.serialize(model, answer, "rid").body
        from_views = codec.serialize(model, dict(answer, **{member: list(items)}), "rid").body
        assert from_rows == from_views
        assert list(items) == _record_views(db, member, [d[ID[member]] for d in items])
        pages += 1
        token = answer.get("NextToken")
        if not token:
            break
    # own rows; DescribeImages without Owners: and the other account's public images too
    everyone = member == "Images" and "Owners" not in params
    seen = sum(1 for i in range(90) if i % 7 or (everyone and i % 2 == 0))
    assert pages == -(-seen // params["MaxResults"])


def _record_views(db: Database, member: str, ids: list[str]) -> list[dict[str, Any]]:
    """The views of ``ids`` built the other way: records read whole, the view function."""
    if member == "Images":
        with db.read() as conn:
            images = Image.from_result(conn.execute(select(ec2_images).where(ec2_images.c.image_id.in_(ids))
                                                    .order_by(ec2_images.c.image_id)))
            tags = tags_for(conn, ACCOUNT, ids)
        return [image_view(r, tags[r.image_id]) for r in images]
    table, cls = (ec2_snapshots, Snapshot) if member == "Snapshots" else (ec2_volumes, Volume)
    with db.read() as conn:
        records = from_result(cls, conn.execute(select(table).where(table.c.id.in_(ids)).order_by(table.c.id)))
        tags = tags_for(conn, ACCOUNT, ids)
        if member == "Snapshots":
            return [snapshot_dict(r, tags[r.id]) for r in records]
        attachments = attachments_of(conn, ids)
        return [volume_dict(r, attachments[r.id], tags[r.id]) for r in records]


def test_escapes_and_absent_members_are_in_the_page(db: Database) -> None:
    codec = codec_for("ec2")
    answer = describe_snapshots(_ctx(db, "DescribeSnapshots"), {"OwnerIds": ["self"], "MaxResults": 1000})
    body = codec.serialize(codec.service_model.operation_model("DescribeSnapshots"), answer, "rid").body
    assert b"<description>a &lt;b&gt; &amp; c&#13;\nd</description>" in body
    assert b"<startTime>2026-01-02T03:04:05.000Z</startTime>" in body  # the short stored form
    old = _iso8601(datetime(999, 1, 2, 3, 4, 5, 678901, tzinfo=timezone.utc))  # left to the writer
    assert f"<startTime>{old}</startTime>".encode() in body
    assert b"<statusMessage>why &lt;not&gt;</statusMessage>" in body and b"snap-00000000000000007" not in body


def test_view_tables_refuse_what_they_cannot_rewrite() -> None:
    with pytest.raises(ValueError, match="reserved"):
        ViewTable("X", {"A": "s.id"}, env={"tags": 1})
    with pytest.raises(ValueError, match="not a field"):
        ViewTable("X", {"A": "s.nope"}).rows_plan(Snapshot, tuple(c.name for c in ec2_snapshots.c))
    with pytest.raises(ValueError, match="other than"):
        ViewTable("X", {"A": "getattr(s, 'id')"}).rows_plan(Snapshot, tuple(c.name for c in ec2_snapshots.c))


def test_snapshot_view_is_the_table() -> None:
    keys = tuple(c.name for c in ec2_snapshots.c)
    plan = SNAPSHOT_VIEW.rows_plan(Snapshot, keys)
    assert plan is SNAPSHOT_VIEW.rows_plan(Snapshot, keys)  # cached per column list
    assert set(plan.members) == set(SNAPSHOT_VIEW.members) and set(plan.iso_times) == {"StartTime", "CompletionTime"}
    # a page selects only what the view reads: never the data key's blob or context
    read = SNAPSHOT_VIEW.fields_read(Snapshot)
    assert "id" in read and "start_time" in read and not {"data_key_blob", "data_key_context"} & set(read)


@pytest.mark.parametrize("stored", ["2026-01-02 03:04:05.678901", "2026-12-31 23:59:59.999999",
                                    "1000-01-01 00:00:00.000000", "0999-01-02 03:04:05.678901",
                                    "2026-01-02 03:04:05", "2026-01-02 03:04:05.678901+00:00", None])
def test_a_time_sliced_from_its_stored_text_is_what_the_writer_formats(stored: str | None) -> None:
    keys = tuple(c.name for c in ec2_snapshots.c)
    local = {f"c{keys.index('start_time')}": stored}
    text_expression = row_iso_texts(Snapshot, keys)["start_time"]
    value_expression = row_locals(Snapshot, keys)[1]["start_time"]
    text = eval(text_expression, dict(ROW_ENV), local)  # noqa: S307 (field-built source)
    value = eval(value_expression, dict(ROW_ENV), local)  # noqa: S307
    if text is not None:  # sliced: exactly the writer's text of the parsed value
        assert text == _iso8601(value)
    else:  # left to the writer: not the plain form of a year from 1000
        assert stored is None or len(stored) != 26 or stored.startswith("0")


@pytest.mark.parametrize("filters", [
    [{"Name": "kms-key-id", "Values": [KEY]}],
    [{"Name": "tag:Name", "Values": ["n&0", "n&3*"]}],
    [{"Name": "description", "Values": ["a <b>*"]}, {"Name": "status", "Values": ["completed", "error"]}],
    [{"Name": "volume-id", "Values": ["vol-ffffffff"]}, {"Name": "encrypted", "Values": ["true"]}],
])
def test_a_filtered_listing_from_its_rows_selects_and_writes_what_the_views_do(db: Database,
                                                                              filters: list[Any]) -> None:
    """Filters over rows (R-WIRE): the views the filters test come from the rows' plan;
    the items that pass are those the record views pass, written as their views are."""
    from ebscrypt.engines.ec2.filters import apply_filters
    from ebscrypt.services.ec2.snapshots import _FILTERS, _tag_map

    codec = codec_for("ec2")
    model = codec.service_model.operation_model("DescribeSnapshots")
    answer = describe_snapshots(_ctx(db, "DescribeSnapshots"), {"OwnerIds": ["self"], "Filters": filters})
    items = answer["Snapshots"]
    assert isinstance(items, RowsPage)
    own = [f"snap-{i:017x}" for i in range(90) if i % 7]
    expected = apply_filters(_record_views(db, "Snapshots", own), filters, _FILTERS, _tag_map)
    assert list(items) == expected and 0 < len(expected) < len(own)
    assert (codec.serialize(model, answer, "rid").body
            == codec.serialize(model, dict(answer, Snapshots=expected), "rid").body)


@pytest.mark.parametrize("filters", [
    [{"Name": "kms-key-id", "Values": [KEY]}],
    [{"Name": "tag:Name", "Values": ["n&0", "n&3*"]}],
    [{"Name": "attachment.status", "Values": ["attached"]}],
    [{"Name": "encrypted", "Values": ["false"]}, {"Name": "status", "Values": ["in-use", "available"]}],
    [{"Name": "snapshot-id", "Values": ["snap-1"]}, {"Name": "multi-attach-enabled", "Values": ["true"]}],
])
@pytest.mark.parametrize("max_results", [None, 5])
def test_a_filtered_volume_listing_from_its_rows_selects_and_writes_what_the_views_do(
        db: Database, filters: list[Any], max_results: int | None) -> None:
    """DescribeVolumes with Filters over rows (R-WIRE), paged as the CLI pages: every page
    is rows (``RowsPage``), its items are what the record views pass, in order, and its
    XML is that of those views."""
    from ebscrypt.engines.ec2.filters import apply_filters
    from ebscrypt.services.ec2.volumes import _FILTERS, _tag_map

    codec = codec_for("ec2")
    model = codec.service_model.operation_model("DescribeVolumes")
    ctx = _ctx(db, "DescribeVolumes")
    own = [f"vol-{i:017x}" for i in range(90) if i % 7]
    expected = apply_filters(_record_views(db, "Volumes", own), filters, _FILTERS, _tag_map)
    assert expected and len(expected) < len(own)
    seen: list[dict[str, Any]] = []
    token = None
    while True:
        params: dict[str, Any] = {"Filters": filters, **({"MaxResults": max_results} if max_results else {}),
                                  **({"NextToken": token} if token else {})}
        answer = describe_volumes(ctx, params)
        items = answer["Volumes"]
        assert isinstance(items, RowsPage)
        assert len(items) <= (max_results or len(own))
        assert (codec.serialize(model, answer, "rid").body
                == codec.serialize(model, dict(answer, Volumes=list(items)), "rid").body)
        seen += list(items)
        token = answer.get("NextToken")
        if not token:
            break
    assert seen == expected


@pytest.mark.parametrize("filters", [
    [{"Name": "name", "Values": ["img-1*"]}],
    [{"Name": "tag:Name", "Values": ["n&0", "n&3*"]}],
    [{"Name": "is-public", "Values": ["true"]}, {"Name": "state", "Values": ["available"]}],
    [{"Name": "block-device-mapping.delete-on-termination", "Values": ["true"]}],
    [{"Name": "description", "Values": ["a <b>*"]}, {"Name": "platform", "Values": ["windows"]}],
    # exact in SQL (sql_filters.exact): the rows are the answer, no record tested again
    [{"Name": "name", "Values": ["img-2", "img-4*"]}],
    [{"Name": "name", "Values": ["IMG-1*", "img-2*"]}],
    [{"Name": "tag:Name", "Values": ["n&0", "n&3"]}],
    [{"Name": "is-public", "Values": ["true", "maybe"]}, {"Name": "name", "Values": ["img-*"]}],
    [{"Name": "image-id", "Values": ["ami-00000000000000003", "ami-00000000000000008"]}],
    [{"Name": "state", "Values": ["failed"]}, {"Name": "owner-id", "Values": [ACCOUNT, OTHER]}],
])
@pytest.mark.parametrize("owners", [["self"], []])
def test_a_filtered_image_listing_from_its_rows_selects_and_writes_what_the_records_do(
        db: Database, filters: list[Any], owners: list[str]) -> None:
    """DescribeImages with Filters over rows (R-WIRE, R-SHARE): the items are the images
    the record path selects (own, and others' public ones without Owners), by id, and the
    XML is that of their views; paging by MaxResults gives the same items."""
    from ebscrypt.engines.ec2 import images as engine

    codec = codec_for("ec2")
    model = codec.service_model.operation_model("DescribeImages")
    ctx = _ctx(db, "DescribeImages")
    records = engine.describe_images(ctx, [], owners=owners, executable=[], filters=filters)
    expected = sorted((image_view(image, tags) for image, tags in records), key=lambda d: d["ImageId"])
    assert expected
    owned = {"Owners": owners} if owners else {}
    answer = describe_images(ctx, {**owned, "Filters": filters})
    items = answer["Images"]
    assert isinstance(items, RowsPage) and list(items) == expected and not answer.get("NextToken")
    assert (codec.serialize(model, answer, "rid").body
            == codec.serialize(model, dict(answer, Images=expected), "rid").body)
    paged: list[dict[str, Any]] = []
    token = None
    while True:
        answer = describe_images(ctx, {**owned, "Filters": filters, "MaxResults": 2,
                                       **({"NextToken": token} if token else {})})
        assert isinstance(answer["Images"], RowsPage) and len(answer["Images"]) <= 2
        paged += list(answer["Images"])
        token = answer.get("NextToken")
        if not token:
            break
    assert paged == expected


def test_a_filtered_listing_refuses_an_unknown_filter_on_the_rows_path(db: Database) -> None:
    from ebscrypt.errors import InvalidParameterValue

    bad = [{"Name": "no-such-filter", "Values": ["x"]}]
    with pytest.raises(InvalidParameterValue):
        describe_volumes(_ctx(db, "DescribeVolumes"), {"Filters": bad})
    with pytest.raises(InvalidParameterValue):
        describe_images(_ctx(db, "DescribeImages"), {"Owners": ["self"], "Filters": bad})


def test_an_unfiltered_volume_listing_without_max_results_is_every_own_volume_from_rows(db: Database) -> None:
    answer = describe_volumes(_ctx(db, "DescribeVolumes"), {})
    items = answer["Volumes"]
    assert isinstance(items, RowsPage) and not answer.get("NextToken")
    assert [d["VolumeId"] for d in items] == [f"vol-{i:017x}" for i in range(90) if i % 7]


@pytest.mark.parametrize("description", ["'a <b> & c'", "'plain'", "None", "''"])
def test_a_constant_member_is_written_once_as_its_block_writes_it(db: Database, description: str) -> None:
    """Members whose expression is a literal are written at compile time by their own
    block (xml_writer ``_constant_text``): the same bytes as the views, a constant needing
    escapes included (then written at run time by the escaping writers)."""
    from ebscrypt.engines.ec2 import snapshots as S

    members = dict(SNAPSHOT_VIEW.members, Description=description)
    table = ViewTable(f"Snapshot-{description}", members, env=SNAPSHOT_VIEW.env)
    ctx = _ctx(db, "DescribeSnapshots")
    found, tags = S.snapshot_page(ctx, owner_ids=["self"], fields=table.fields_read(Snapshot))
    assert not isinstance(found, list)
    codec = codec_for("ec2")
    model = codec.service_model.operation_model("DescribeSnapshots")
    page = table.page(found, tags)
    from_rows = codec.serialize(model, {"Snapshots": page}, "rid").body
    assert from_rows == codec.serialize(model, {"Snapshots": list(page)}, "rid").body
    if description == "'a <b> & c'":
        assert from_rows.count(b"<description>a &lt;b&gt; &amp; c</description>") == len(page)


@pytest.mark.parametrize("stored", ["2026-01-02 03:04:05.678901", "2026-12-31 23:59:59.999999",
                                    "1000-01-01 00:00:00.000000", "2026-01-02 03:04:05", "0999-01-02 03:04:05.678901"])
def test_an_image_creation_date_from_its_stored_text_is_what_the_view_writes(stored: str) -> None:
    """``creation_date(s.created_at)`` on the rows path (a text form): the text sliced from
    the stored time where it is the plain form, the datetime's formatting otherwise."""
    from ebscrypt.engines.ec2.image_records import creation_date
    from ebscrypt.services.ec2.images import IMAGE_VIEW

    keys = tuple(c.name for c in ec2_images.c)
    plan = IMAGE_VIEW.rows_plan(Image, keys)
    local = {f"c{keys.index('created_at')}": stored}
    value = eval(row_locals(Image, keys)[1]["created_at"], dict(ROW_ENV), local)  # noqa: S307 (field-built source)
    assert eval(plan.members["CreationDate"], dict(plan.env), local) == creation_date(value)  # noqa: S307
    assert "_text_creation_date" in plan.members["CreationDate"]


def test_a_text_form_must_be_of_a_function_the_table_uses() -> None:
    with pytest.raises(ValueError, match="text forms"):
        ViewTable("X", {"A": "f(s.start_time)"}, text_forms={"f": str})


# ------------------------------------------------ memo members: an image's mappings rendered once


def _image_db(path: Path, mappings: list[list[dict[str, Any]]]) -> Database:
    database = Database(f"sqlite:///{path}")
    with database.begin() as conn:
        for i, m in enumerate(mappings):
            conn.execute(insert(ec2_images).values(
                image_id=f"ami-{i:017x}", account=ACCOUNT, region=REGION, name=f"img-{i}", description=None,
                state="available", state_reason_code=None, state_reason_message=None, architecture="x86_64",
                virtualization_type="hvm", root_device_name="/dev/xvda", root_device_type="ebs", ena_support=True,
                sriov_net_support=None, boot_mode=None, tpm_support=None, imds_support=None, image_location=None,
                kernel_id=None, ramdisk_id=None, platform=None, public=False, mappings=json.dumps(m),
                source_image_id=None, source_region=None, source_instance_id=None, client_token=None,
                created_at=T0))
    return database


def _listing_xml(database: Database) -> tuple[bytes, bytes]:
    """(the XML of DescribeImages(Owners=self) from its rows, the XML of its views)."""
    codec = codec_for("ec2")
    model = codec.service_model.operation_model("DescribeImages")
    answer = describe_images(_ctx(database, "DescribeImages"), {"Owners": ["self"], "MaxResults": 1000})
    assert isinstance(answer["Images"], RowsPage)
    from_rows = codec.serialize(model, answer, "rid").body
    return from_rows, codec.serialize(model, dict(answer, Images=list(answer["Images"])), "rid").body


def test_memo_mappings_are_the_views_xml_listed_again_and_after_a_change(tmp_path: Path) -> None:
    """Issue 15: an image's BlockDeviceMappings are rendered once per stored mappings text
    (the XML writers keep the text): listed twice, the bytes are the views' both times —
    mappings needing escapes (never kept by the collecting writers: the answer's escape
    check must see them), two images with the same mappings, NoDevice and VirtualName
    mappings, an empty list — and a stored text that changes under the same image id is
    written anew (kept by content, not by id)."""
    snap = {"DeviceName": "/dev/xvda", "Ebs": {"SnapshotId": "snap-1", "VolumeSize": 8, "Encrypted": True}}
    mappings = [[snap], [snap], [{"DeviceName": "/dev/x&<y>", "Ebs": {"SnapshotId": "snap-2", "VolumeSize": 9}}],
                [{"DeviceName": "/dev/sdb", "NoDevice": ""}, {"DeviceName": "/dev/sdc", "VirtualName": "ephemeral0"}],
                [], [{"DeviceName": "/dev/sdd", "Ebs": {"SnapshotId": "snap-3", "KmsKeyId": "not in the view"}}]]
    database = _image_db(tmp_path / "m.db", mappings)
    try:
        first = _listing_xml(database)
        assert first[0] == first[1]
        assert b"<deviceName>/dev/x&amp;&lt;y&gt;</deviceName>" in first[0] and b"KmsKeyId" not in first[0]
        for _ in range(3):  # seen, kept, written from the kept texts
            assert _listing_xml(database) == first
        memos = codec_for("ec2")._xml_collecting._memos  # noqa: SLF001 (the kept texts)
        kept = [t for ident, t in memos.items() if ident[:2] == ("Image", "BlockDeviceMappings")]
        assert any(snap["Ebs"]["SnapshotId"] in text for texts in kept for text in texts.values())
        with database.begin() as conn:
            conn.exec_driver_sql("update ec2_images set mappings=? where image_id=?", (json.dumps(
                [{"DeviceName": "/dev/xvdz", "Ebs": {"SnapshotId": "snap-9", "VolumeSize": 1}}]),
                "ami-00000000000000001"))
        changed = _listing_xml(database)
        assert changed[0] == changed[1]
        assert b"/dev/xvdz" in changed[0] and changed[0].count(b"<snapshotId>snap-1</snapshotId>") == 1
    finally:
        database.dispose()


def test_memo_texts_are_bounded() -> None:
    """The kept texts of a memo member start anew past their bound (xml_writer
    ``MEMO_ENTRIES``): memory stays bounded however many distinct values are listed."""
    from ebscrypt.wire.codec.xml_writer import Collecting, _MemoMiss

    texts: dict[Any, str] = {}
    miss = _MemoMiss(lambda out, key: out.append(f"<k>{key}</k>"), texts, True, lambda v: v, 3)
    out = Collecting()
    for key in range(7):
        miss(out, key)  # the first sighting: written, not kept
        assert out[-1] == f"<k>{key}</k>" and key not in texts and len(miss.sighted) <= 3
        miss(out, key)  # the second: kept
        assert out[-1] == f"<k>{key}</k>"
        assert len(texts) <= 3 and texts[key] == f"<k>{key}</k>"


def _hole_miss(write_item: Any, limit: int = 8) -> tuple[Any, list[str]]:
    """A memo miss with holes over texts like ``[{"id": "a1"}, …]`` whose render writes each
    item by ``write_item(out, id)`` (collecting its strings), and the list of keys rendered."""
    from ebscrypt.wire.codec.xml_writer import _MemoMiss, _holes_pattern

    rendered: list[str] = []

    def render(out: Any, key: str) -> None:
        rendered.append(key)
        for item in json.loads(key):
            write_item(out, item["id"])

    holes = ('"id": "', "[a-z0-9]+", '"')
    miss = _MemoMiss(render, {}, True, lambda v: v.replace("&", "&amp;"), limit, _holes_pattern(holes), {},
                     holes[0] + "\ue000" + holes[2])
    return miss, rendered


def _written(miss: Any, key: str) -> str:
    from ebscrypt.wire.codec.xml_writer import Collecting

    out = Collecting()
    miss(out, key)
    return "".join(out)


def test_memo_holes_fill_a_shape_rendered_once() -> None:
    """Values alike but for their parts (xml_writer ``_MemoMiss`` holes): the shape's text
    is rendered at its second sighting, and from then on each value's text is the shape's
    with the value's own parts — the very text its render writes; other shapes apart."""
    def item(out: Any, ident: str) -> None:
        out.seen.append(ident)
        out.append(f"<i><id>{ident}</id></i>")

    miss, rendered = _hole_miss(item)
    keys = [json.dumps([{"id": f"x{i}"}, {"dev": "b", "id": f"y{i}"}]) for i in range(5)]
    for key in keys:
        ids = [m["id"] for m in json.loads(key)]
        assert _written(miss, key) == "".join(f"<i><id>{i}</id></i>" for i in ids)
    assert rendered == [keys[0], keys[1].replace("x1", "\ue000").replace("y1", "\ue000")]  # then filled
    assert list(miss.templates.values()) == [("<i><id>", "</id></i><i><id>", "</id></i>")]
    other = json.dumps([{"id": "z1", "dev": "c"}])
    assert _written(miss, other) == "<i><id>z1</id></i>" and rendered[-1] == other  # a new shape: rendered


@pytest.mark.parametrize("write_item", [
    lambda out, ident: out.append("<i/>"),  # the part left out
    lambda out, ident: out.append(f"<i>{ident}{ident}</i>"),  # written twice
    lambda out, ident: (out.seen.append("a&b"), out.append(f"<i>{ident}a&amp;b</i>")),  # a string needing escapes
])
def test_memo_holes_keep_no_template_they_cannot_fill(write_item: Any) -> None:
    miss, rendered = _hole_miss(write_item)
    keys = [json.dumps([{"id": f"x{i}"}]) for i in range(4)]
    for key in keys:
        expected = Collecting()
        write_item(expected, json.loads(key)[0]["id"])
        assert _written(miss, key) == "".join(expected)
    assert list(miss.templates.values()) == [()]
    assert rendered[0] == keys[0] and rendered[2:] == keys[1:]  # each rendered (and the shape once)


def test_memo_holes_leave_values_holding_the_hole_and_are_bounded() -> None:
    def item(out: Any, ident: str) -> None:
        out.append(f"<i>{ident}</i>")

    miss, rendered = _hole_miss(item, limit=3)
    odd = json.dumps([{"id": "x1", "n": "\ue000"}], ensure_ascii=False)
    for _ in range(3):
        assert _written(miss, odd) == "<i>x1</i>"
    assert rendered == [odd] * 3 and not miss.templates
    for n in range(8):
        for i in range(2):
            _written(miss, json.dumps([{"id": f"x{i}", "n": n}]))
        assert len(miss.templates) <= 3 and len(miss.shapes_sighted) <= 3


def test_memo_holes_refuse_what_they_cannot_fill() -> None:
    from ebscrypt.wire.codec.xml_writer import _holes_pattern

    with pytest.raises(ValueError, match="not memo"):
        ViewTable("X", {"A": "s.mappings"}, memo_holes={"A": ("a", "b", "c")})
    with pytest.raises(ValueError, match="no groups"):
        _holes_pattern(('"id": "', "(x)", '"'))


def test_memo_holes_mappings_are_the_views_xml_on_a_first_listing(tmp_path: Path) -> None:
    """Issue 15: on the first listing after a start, images registered alike have their
    mappings written from one rendered shape with their own snapshot ids (IMAGE_VIEW
    ``memo_holes``): the bytes are the views' on every listing — several mappings and ids an
    image, a snapshot id the view leaves out (another member's), mappings needing escapes,
    an id of other characters than an id's — and the shapes' templates are kept."""
    def alike(i: int) -> list[dict[str, Any]]:
        return [{"DeviceName": "/dev/xvda", "Ebs": {"SnapshotId": f"snap-{i:08x}", "VolumeSize": 8}},
                {"DeviceName": "/dev/sdb", "Ebs": {"SnapshotId": f"snap-{i + 100:08x}", "Encrypted": True}}]

    mappings = [*(alike(i) for i in range(6)),
                *([{"DeviceName": "/dev/sdh", "Extra": {"SnapshotId": f"snap-{i:04x}"},
                    "Ebs": {"SnapshotId": f"snap-{i + 1:04x}"}}] for i in range(3)),
                *([{"DeviceName": "/dev/x&<y>", "Ebs": {"SnapshotId": f"snap-{i:04x}"}}] for i in range(3)),
                *([{"DeviceName": "/dev/sdq", "Ebs": {"SnapshotId": f"snap-Q{i}&"}}] for i in range(3))]
    database = _image_db(tmp_path / "h.db", mappings)
    try:
        for _ in range(3):
            from_rows, from_views = _listing_xml(database)
            assert from_rows == from_views
            assert b"<snapshotId>snap-00000065</snapshotId>" in from_rows
        templates = codec_for("ec2")._xml_collecting._templates  # noqa: SLF001 (the kept shapes)
        shape = json.dumps(alike(0)).replace("snap-00000000", "\ue000").replace("snap-00000064", "\ue000")
        kept = [shapes[shape] for ident, shapes in templates.items()
                if ident[:2] == ("Image", "BlockDeviceMappings") and shape in shapes]
        assert kept and all(len(pieces) == 3 for pieces in kept)  # two snapshot ids an image
        assert any(not pieces for shapes in templates.values() for shape, pieces in shapes.items()
                   if "/dev/sdh" in shape or "/dev/x&<y>" in shape)
    finally:
        database.dispose()


def test_a_memo_member_must_read_one_field_alone() -> None:
    keys = tuple(c.name for c in ec2_images.c)
    with pytest.raises(ValueError, match="one field"):
        ViewTable("X", {"A": "(s.name, s.account)"}, memo=("A",)).rows_plan(Image, keys)
    with pytest.raises(ValueError, match="one field"):
        ViewTable("X", {"A": "len(tags or ()) + len(s.name)"}, memo=("A",)).rows_plan(Image, keys)
    with pytest.raises(ValueError, match="memo of members"):
        ViewTable("X", {"A": "s.name"}, memo=("B",))


def test_projected_mappings_are_the_mapping_views_xml(tmp_path: Path) -> None:
    """The stored mappings written by ``MAPPING_PROJECTION`` (no view per mapping) are the
    bytes of ``mapping_view``'s: every Ebs member, false and zero values, an empty Ebs,
    members the view leaves out, several mappings, None members."""
    ebs_all = {"DeleteOnTermination": False, "Iops": 0, "SnapshotId": "snap-a", "VolumeSize": 1, "VolumeType": "io2",
               "Throughput": 125, "Encrypted": False, "KmsKeyId": "k", "OutpostArn": "o"}
    mappings = [[{"DeviceName": "/dev/a", "Ebs": ebs_all}], [{"DeviceName": "/dev/b", "Ebs": {}}],
                [{"DeviceName": "/dev/c", "Ebs": {"Encrypted": True, "Iops": None}, "Extra": 1}],
                [{"DeviceName": "/dev/d", "Ebs": None, "VirtualName": None}],
                [{"DeviceName": "/dev/e", "NoDevice": ""}, {"DeviceName": "/dev/f", "VirtualName": "ephemeral1"},
                 {"DeviceName": "/dev/g", "Ebs": {"SnapshotId": "snap-g", "VolumeSize": 30}}]]
    database = _image_db(tmp_path / "p.db", mappings)
    try:
        from_rows, from_views = _listing_xml(database)
        assert from_rows == from_views
        assert b"<iops>0</iops>" in from_rows and b"<ebs></ebs>" in from_rows and b"KmsKeyId" not in from_rows
    finally:
        database.dispose()


def test_projections_refuse_what_they_cannot_write() -> None:
    from ebscrypt.services.ec2.images import IMAGE_VIEW, MAPPING_PROJECTION

    keys = tuple(c.name for c in ec2_images.c)
    with pytest.raises(ValueError, match="not memo"):
        ViewTable("X", {"A": "s.mappings"}, projections={"A": ("s.mappings", {})})
    with pytest.raises(ValueError, match="memo member's field"):
        ViewTable("X", {"A": "s.mappings"}, memo=("A",), projections={"A": ("s.name", {})}).rows_plan(Image, keys)
    codec = codec_for("ec2")
    shape = codec.service_model.operation_model("DescribeImages").output_shape.members["Images"].member
    writers = codec._xml_collecting  # noqa: SLF001 (the writers a projection compiles into)
    with pytest.raises(ValueError, match="no members"):
        writers._projected(shape.members["BlockDeviceMappings"], "BlockDeviceMappings", {"Nope": None}, "x")
    with pytest.raises(ValueError, match="list of structures"):
        writers._projected(shape.members["Name"], "Name", MAPPING_PROJECTION, "x")
    assert IMAGE_VIEW.projections["BlockDeviceMappings"][1] is MAPPING_PROJECTION


@pytest.mark.parametrize("filters,exact", [
    ([{"Name": "name", "Values": ["ubuntu/images/*"]}], True),
    ([{"Name": "name", "Values": ["a", "b*"]}, {"Name": "state", "Values": ["available"]}], True),
    ([{"Name": "tag:Name", "Values": ["x", "y"]}, {"Name": "is-public", "Values": ["no"]}], True),
    ([{"Name": "name", "Values": ["a?c"]}], False),  # a wildcard inside
    ([{"Name": "name", "Values": ["*"]}], False),  # an empty prefix: LIKE
    ([{"Name": "name", "Values": ["a\U0010ffff*"]}], False),  # no upper bound: LIKE
    ([{"Name": "tag:Name", "Values": ["x*"]}], False),
    ([{"Name": "tag-key", "Values": ["Name"]}], False),
    ([{"Name": "is-public", "Values": ["t*"]}], False),  # a converted column: literals only
    ([{"Name": "architecture", "Values": ["x86_64"]}], False),  # not a column filter
    ([{"Name": "name", "Values": []}], False),
    ([{"Name": "name", "Values": [1]}], False),
    ([{"Name": "no-such-filter", "Values": ["x"]}], False),  # refused by the Python filters
])
def test_exact_narrowings(filters: list[dict[str, Any]], exact: bool) -> None:
    from ebscrypt.engines.ec2.images import _FILTERS, SQL_FILTER_COLUMNS
    from ebscrypt.engines.ec2.sql_filters import exact as sql_exact

    assert sql_exact(filters, SQL_FILTER_COLUMNS) is exact
    assert set(SQL_FILTER_COLUMNS) <= set(_FILTERS)  # an exact narrowing names known filters only

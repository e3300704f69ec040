"""DescribeVolumes filters pushed down to SQL (engines/ec2/sql_filters.py, issue 15): the
narrowing is a superset of what the exact filters (engines/ec2/filters.py) select, so the
answer of a Describe* view is unchanged (R-WIRE: AWS's filter semantics, wildcards and
all), and a narrowing that can be expressed does narrow."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest
from sqlalchemy import insert

from ebscrypt.engines.ec2.filters import apply_filters
from ebscrypt.engines.ec2.volumes import list_volumes
from ebscrypt.services.ec2.volumes import _FILTERS, _tag_map, volume_dict
from ebscrypt.storage.db import Database
from ebscrypt.storage.tables.ec2 import ec2_tags, ec2_volumes

ACCOUNT, OTHER, REGION = "111111111111", "222222222222", "us-east-1"
KEY = "arn:aws:kms:us-east-1:111111111111:key/11111111-2222-3333-4444-555555555555"


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Database:
    path: Path = tmp_path_factory.mktemp("sqlf") / "meta.db"
    database = Database(f"sqlite:///{path}")
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    with database.begin() as conn:
        for i in range(40):
            enc = i % 4 == 0
            conn.execute(insert(ec2_volumes).values(
                id=f"vol-{i:017x}", account=ACCOUNT, region=REGION, availability_zone=f"us-east-1{'ab'[i % 2]}",
                size=1 + i % 3, volume_type=("gp2", "gp3", "io1")[i % 3], iops=None, throughput=None,
                multi_attach=False, state=("available", "in-use", "creating")[i % 3], state_message=None,
                encrypted=enc, kms_key_arn=KEY if enc else None, data_key_id=None, data_key_blob=None,
                data_key_context=None, snapshot_id=None, client_token=None, auto_enable_io=False, create_time=now))
            if i % 5 == 0:
                conn.execute(insert(ec2_tags).values(resource_id=f"vol-{i:017x}", key="Name", value=f"n{i % 3}",
                                                     resource_type="volume", account=ACCOUNT, region=REGION))
            else:  # another account's tag (one row per id and key) must not select it
                conn.execute(insert(ec2_tags).values(resource_id=f"vol-{i:017x}", key="Name", value="theirs",
                                                     resource_type="volume", account=OTHER, region=REGION))
    yield database
    database.dispose()


def _exact(db: Database, filters: list[dict], *, narrowed: bool) -> tuple[list[str], int]:
    from ebscrypt.engines.ec2.tags import tags_for

    with db.read() as conn:
        vols = list_volumes(conn, ACCOUNT, REGION, filters=filters if narrowed else None)
        tags = tags_for(conn, ACCOUNT, [v.id for v in vols])
    items = [volume_dict(v, [], tags[v.id]) for v in vols]
    return [d["VolumeId"] for d in apply_filters(items, filters, _FILTERS, _tag_map)], len(vols)


@pytest.mark.parametrize("filters", [
    [{"Name": "encrypted", "Values": ["true"]}],
    [{"Name": "encrypted", "Values": ["false"]}],
    [{"Name": "encrypted", "Values": ["maybe"]}],
    [{"Name": "encrypted", "Values": ["t*"]}],
    [{"Name": "kms-key-id", "Values": [KEY]}],
    [{"Name": "status", "Values": ["available", "in-use"]}, {"Name": "volume-type", "Values": ["gp3"]}],
    [{"Name": "status", "Values": ["avail*"]}],
    [{"Name": "status", "Values": ["in-use", "cr*"]}, {"Name": "volume-type", "Values": ["gp*", "io1"]}],
    [{"Name": "availability-zone", "Values": ["us-east-1*"]}, {"Name": "status", "Values": ["*"]}],
    [{"Name": "availability-zone", "Values": ["US-EAST-1*"]}],
    [{"Name": "availability-zone", "Values": ["us_east*", "us-east-1?"]}],
    [{"Name": "availability-zone", "Values": ["us-east-1b"]}, {"Name": "encrypted", "Values": ["true"]}],
    [{"Name": "tag:Name", "Values": ["n1"]}],
    [{"Name": "tag:Name", "Values": ["theirs"]}],
    [{"Name": "tag:Name", "Values": ["n?"]}, {"Name": "size", "Values": ["2"]}],
    [{"Name": "volume-id", "Values": ["vol-00000000000000004", "vol-00000000000000099"]}],
])
def test_narrowing_keeps_the_exact_answer(db: Database, filters: list[dict]) -> None:
    exact, read_all = _exact(db, filters, narrowed=False)
    pushed, read_narrowed = _exact(db, filters, narrowed=True)
    assert pushed == exact
    assert read_narrowed <= read_all


def test_literal_filters_narrow_in_sql(db: Database) -> None:
    _, read = _exact(db, [{"Name": "encrypted", "Values": ["true"]}], narrowed=True)
    assert read == 10
    _, read = _exact(db, [{"Name": "tag:Name", "Values": ["n1"]}], narrowed=True)
    assert read == len([i for i in range(40) if i % 5 == 0 and i % 3 == 1])
    _, read = _exact(db, [{"Name": "encrypted", "Values": ["maybe"]}], narrowed=True)
    assert read == 0
    _, read = _exact(db, [{"Name": "status", "Values": ["avail*"]}], narrowed=True)
    assert read == 14  # a prefix (one trailing *) is pushed down as LIKE 'avail%'
    _, read = _exact(db, [{"Name": "status", "Values": ["a?ailable"]}], narrowed=True)
    assert read == 40  # any other wildcard is not pushed down
    _, read = _exact(db, [{"Name": "availability-zone", "Values": ["us_east*"]}], narrowed=True)
    assert read == 0  # LIKE's own wildcards in a prefix are escaped


def test_an_older_database_gets_the_describe_indexes(tmp_path: Path) -> None:
    """The schema steps of issue 15 (v8, v9) add the filter and page indexes to a database
    made before them."""
    from sqlalchemy import inspect, text, update

    from ebscrypt.storage import db as db_module
    from ebscrypt.storage.schema import schema_version

    url = f"sqlite:///{tmp_path / 'old.db'}"
    first = Database(url)
    with first.begin() as conn:
        for name, _, _ in db_module.DESCRIBE_INDEXES + db_module.PAGE_INDEXES:
            conn.execute(text(f"DROP INDEX {name}"))
        conn.execute(update(schema_version).values(version=7))  # before v8 (filters) and v9 (pages)
    first.dispose()
    again = Database(url)
    try:
        with again.read() as conn:
            names = {ix["name"] for t in ("ec2_volumes", "ec2_snapshots", "ec2_tags")
                     for ix in inspect(conn).get_indexes(t)}
            assert conn.execute(db_module.select(schema_version.c.version)).scalar() == db_module.SCHEMA_VERSION
        assert {name for name, _, _ in db_module.DESCRIBE_INDEXES + db_module.PAGE_INDEXES} <= names
    finally:
        again.dispose()


def test_snapshot_narrowing_owners_and_filters(tmp_path: Path) -> None:
    """DescribeSnapshots: OwnerIds=self reads only the caller's own snapshots (not those
    shared with it), and literal filters narrow in SQL without changing the answer."""
    from types import SimpleNamespace

    from ebscrypt.engines.ec2.snapshots import visible_snapshots
    from ebscrypt.services.ec2.snapshots import _FILTERS as SNAP_FILTERS, snapshot_dict
    from ebscrypt.storage.tables.ec2 import ec2_snapshot_permissions, ec2_snapshots

    database = Database(f"sqlite:///{tmp_path / 's.db'}")
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    try:
        with database.begin() as conn:
            for i in range(30):
                owner = ACCOUNT if i % 3 else OTHER
                conn.execute(insert(ec2_snapshots).values(
                    id=f"snap-{i:017x}", account=owner, region=REGION, state=("completed", "pending")[i % 2],
                    state_message=None, progress=100, volume_size=1, encrypted=i % 4 == 0,
                    kms_key_arn=KEY if i % 4 == 0 else None, data_key_id=None, data_key_blob=None,
                    data_key_context=None, volume_id="vol-ffffffff", parent_id=None, source_snapshot_id=None,
                    source_region=None, description=None, origin="volume", client_token=None, start_time=now,
                    completion_time=None))
                if owner == OTHER and i % 2 == 0:
                    conn.execute(insert(ec2_snapshot_permissions).values(snapshot_id=f"snap-{i:017x}",
                                                                         grantee=ACCOUNT))
        caller = SimpleNamespace(account=ACCOUNT, region=REGION)
        with database.read() as conn:
            every = visible_snapshots(conn, caller)
            own = visible_snapshots(conn, caller, owners={ACCOUNT})
            assert {s.account for s in every} == {ACCOUNT, OTHER}
            assert {s.id for s in own} == {s.id for s in every if s.account == ACCOUNT}
            for filters in ([{"Name": "encrypted", "Values": ["true"]}],
                            [{"Name": "status", "Values": ["pending"]}, {"Name": "owner-id", "Values": [OTHER]}],
                            [{"Name": "status", "Values": ["p*"]}]):
                narrowed = visible_snapshots(conn, caller, filters=filters)
                exact = apply_filters([snapshot_dict(s, []) for s in every], filters, SNAP_FILTERS)
                again = apply_filters([snapshot_dict(s, []) for s in narrowed], filters, SNAP_FILTERS)
                assert again == exact
                assert len(narrowed) <= len(every)
            assert len(visible_snapshots(conn, caller, filters=[{"Name": "encrypted", "Values": ["true"]}])) == len(
                [s for s in every if s.encrypted])
    finally:
        database.dispose()


def _plans(database: Database, read) -> list[str]:  # type: ignore[no-untyped-def]
    """SQLite's EXPLAIN QUERY PLAN details of every statement ``read(conn)`` runs."""
    from sqlalchemy import event

    seen: list[tuple[str, object]] = []

    def record(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        if statement.lstrip().upper().startswith("SELECT"):
            seen.append((statement, parameters))

    event.listen(database.engine, "before_cursor_execute", record)
    try:
        with database.read() as conn:
            read(conn)
    finally:
        event.remove(database.engine, "before_cursor_execute", record)
    details = []
    raw = database.engine.raw_connection()
    try:
        for statement, parameters in seen:
            details += [row[3] for row in raw.cursor().execute("EXPLAIN QUERY PLAN " + statement, parameters)]
    finally:
        raw.close()
    return details


def test_pages_and_tag_filters_read_by_index_not_by_account(tmp_path: Path) -> None:
    """Issue 15 (Describe at scale, R-WIRE paging): a DescribeSnapshots/DescribeVolumes page
    (``id > token ORDER BY id LIMIT n``) reads the id-ordered page index — no sort of every
    row of the account — and a ``tag:`` filter is driven from the tags index with each row
    looked up by id (O(matches)), not a walk of the account probing each row's tags."""
    from types import SimpleNamespace

    from ebscrypt.engines.ec2.snapshots import visible_snapshots

    database = Database(f"sqlite:///{tmp_path / 'p.db'}")
    caller = SimpleNamespace(account=ACCOUNT, region=REGION)
    try:
        page = _plans(database, lambda c: visible_snapshots(c, caller, owners={ACCOUNT}, after="snap-0", limit=1001))
        assert any("ix_ec2_snapshots_page" in d for d in page), page
        assert not any("TEMP B-TREE" in d for d in page), page
        kms = _plans(database, lambda c: visible_snapshots(c, caller, owners={ACCOUNT}, filters=[
            {"Name": "kms-key-id", "Values": [KEY]}]))
        assert any("ix_ec2_snapshots_kms_page" in d for d in kms), kms
        tag = _plans(database, lambda c: visible_snapshots(c, caller, owners={ACCOUNT}, filters=[
            {"Name": "tag:Name", "Values": ["one-percent"]}]))
        assert "ix_ec2_tags_key_value" in tag[0] and "(id=?)" in tag[1], tag
        vol_page = _plans(database, lambda c: list_volumes(c, ACCOUNT, REGION, after="vol-0", limit=501))
        assert any("ix_ec2_volumes_page" in d for d in vol_page), vol_page
        vol_tag = _plans(database, lambda c: list_volumes(c, ACCOUNT, REGION, filters=[
            {"Name": "tag:Name", "Values": ["n1"]}]))
        assert "ix_ec2_tags_key_value" in vol_tag[0] and "(id=?)" in vol_tag[1], vol_tag
    finally:
        database.dispose()


# ---------------------------------------------------------------- name=prefix* as a range


_NAMES = ["ab", "abc", "abc-1", "abc\U0010ffff", "abc\U0010ffffz", "abd", "abC", "ABC", "ab%c", "ab_c",
          "x\ud7ffy", "x\ue000", "\u00e9t\u00e9", "\u00e9tz", "", "a", "\U0010ffff", "\U0010ffffa"]


@pytest.mark.parametrize("prefix", ["abc", "ab", "a", "ab%", "ab_", "abc\U0010ffff", "\u00e9t", "x\ud7ff",
                                    "\U0010ffff", "ABC", ""])
def test_a_prefix_selects_exactly_the_names_starting_with_it(tmp_path: Path, prefix: str) -> None:
    """Issue 15 (DescribeImages ``name=prefix*``): on SQLite the prefix is a range over the
    column (an index reads it); it must select exactly the strings that start with the
    prefix — case-sensitive as EC2's filters are, ``%``/``_`` literal, non-ASCII and the
    last code points included; prefixes with no upper bound fall back to ``LIKE``."""
    from sqlalchemy import Column, MetaData, String, Table, select

    from ebscrypt.engines.ec2.sql_filters import starts_with

    if "\ud7ff" in prefix:  # a lone surrogate cannot be stored: test the character before one
        prefix = prefix.replace("\ud7ff", "\ud7fe")
    names = [n.replace("\ud7ff", "\ud7fe") for n in _NAMES]
    table = Table("names", MetaData(), Column("name", String, primary_key=True))
    database = Database(f"sqlite:///{tmp_path / 'n.db'}")
    try:
        table.create(database.engine)
        with database.begin() as conn:
            conn.execute(insert(table), [{"name": n} for n in names])
        with database.read() as conn:
            got = sorted(r.name for r in conn.execute(select(table.c.name).where(starts_with(table.c.name, prefix))))
        expected = sorted(n for n in names if n.startswith(prefix))
        if prefix and prefix[-1] != "\U0010ffff":
            assert got == expected  # exact: a range
        else:
            assert set(expected) <= set(got)  # LIKE: a superset (case-insensitive)
    finally:
        database.dispose()


def test_prefix_upper_bounds() -> None:
    from ebscrypt.engines.ec2.sql_filters import prefix_upper

    assert prefix_upper("one-percent-") == "one-percent."
    assert prefix_upper("ab\u00e9") == "ab\u00ea"
    assert prefix_upper("a\ud7ff") is None  # the next code point is a surrogate
    assert prefix_upper("a\U0010ffff") is None  # no code point after it
    assert prefix_upper("") is None


def test_a_name_prefix_is_read_through_the_name_index(tmp_path: Path) -> None:
    """Issue 15: DescribeImages(Owners=self, name=prefix*) reads the images whose names
    start with the prefix through the (account, region, name) unique index — O(matches) —
    not the account's every image through the page index; other databases keep LIKE."""
    from types import SimpleNamespace

    from sqlalchemy.dialects import postgresql

    from ebscrypt.engines.ec2.images import _images_query

    database = Database(f"sqlite:///{tmp_path / 'i.db'}")
    caller = SimpleNamespace(account=ACCOUNT, region=REGION)
    filters = [{"Name": "name", "Values": ["one-percent-*"]}]
    try:
        plan = _plans(database, lambda c: c.execute(_images_query(caller, [], ["self"], filters, None, None)).all())
        assert any("name>? AND name<?" in d for d in plan), plan
        assert not any("ix_ec2_images_page" in d for d in plan), plan
    finally:
        database.dispose()
    pg = str(_images_query(caller, [], ["self"], filters, None, None).compile(dialect=postgresql.dialect()))
    assert "LIKE" in pg and ">=" not in pg


def test_a_cached_prefix_statement_binds_each_calls_prefix(tmp_path: Path) -> None:
    """SQLAlchemy caches the compiled statement by its form: each call's prefix must still
    be the one bound (the range's two values and LIKE's are all parameters)."""
    from sqlalchemy import Column, MetaData, String, Table, select

    from ebscrypt.engines.ec2.sql_filters import starts_with

    table = Table("names", MetaData(), Column("name", String, primary_key=True))
    database = Database(f"sqlite:///{tmp_path / 'c.db'}")
    try:
        table.create(database.engine)
        with database.begin() as conn:
            conn.execute(insert(table), [{"name": n} for n in ("abc", "abd", "b1", "b2", "c")])
        for prefix, expected in (("ab", ["abc", "abd"]), ("b", ["b1", "b2"]), ("abd", ["abd"]), ("d", [])):
            with database.read() as conn:
                query = select(table.c.name).where(starts_with(table.c.name, prefix)).order_by(table.c.name)
                assert [r.name for r in conn.execute(query)] == expected
    finally:
        database.dispose()

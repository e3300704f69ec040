"""PostgreSQL without a global writer lock: write transactions run concurrently at
SERIALIZABLE isolation; a transaction that loses a race fails with a conflict and is run
again (``Database.retrying``, the request retry of app.py). No lost update, no deadlock —
between threads, between processes, and between servers sharing one database; ClientToken
idempotency holds across servers (a unique index)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from ebscrypt.storage.db import Database, is_conflict
from tests.conftest import ServerProcess


def _counter_db(db_url: str) -> Database:
    db = Database(db_url)
    with db.begin() as conn:
        conn.execute(text("CREATE TABLE IF NOT EXISTS t_counter (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)"))
        conn.execute(text("INSERT INTO t_counter VALUES (1, 0) ON CONFLICT DO NOTHING"))
    return db


def _increment(conn: Any) -> None:
    # read, then write what was read plus one: a lost update if two ran interleaved
    n = conn.execute(text("SELECT n FROM t_counter WHERE id = 1")).scalar_one()
    time.sleep(0.002)
    conn.execute(text("UPDATE t_counter SET n = :n WHERE id = 1"), {"n": n + 1})


def test_writers_do_not_wait_for_each_other_at_begin(db_url: str) -> None:
    """Two writers of different rows both run: no global lock orders them."""
    db = _counter_db(db_url)
    inside, release = threading.Event(), threading.Event()

    def first() -> None:
        with db.begin() as conn:
            conn.execute(text("INSERT INTO t_counter VALUES (2, 0)"))
            inside.set()
            release.wait(10)

    t = threading.Thread(target=first)
    t.start()
    try:
        assert inside.wait(10)
        started = time.monotonic()
        with db.begin() as conn:  # the first still holds its transaction open
            conn.execute(text("INSERT INTO t_counter VALUES (3, 0)"))
        assert time.monotonic() - started < 5
    finally:
        release.set()
        t.join()
    db.dispose()


def test_a_racing_read_modify_write_conflicts_and_retrying_loses_nothing(db_url: str) -> None:
    db = _counter_db(db_url)
    read, release = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def first() -> None:
        try:
            with db.begin() as conn:
                n = conn.execute(text("SELECT n FROM t_counter WHERE id = 1")).scalar_one()
                read.set()
                release.wait(10)
                conn.execute(text("UPDATE t_counter SET n = :n WHERE id = 1"), {"n": n + 1})
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    t = threading.Thread(target=first)
    t.start()
    assert read.wait(10)
    db.retrying(_increment)  # commits while the first holds its read
    release.set()
    t.join()
    assert len(errors) == 1 and isinstance(errors[0], DBAPIError) and is_conflict(errors[0])
    with db.read() as conn:
        assert conn.execute(text("SELECT n FROM t_counter WHERE id = 1")).scalar_one() == 1
    db.dispose()


_WORKER = """
import sys
from ebscrypt.storage.db import Database
from tests.postgres.test_pg_concurrency import _increment
db = Database(sys.argv[1])
for _ in range(int(sys.argv[2])):
    db.retrying(_increment)
db.dispose()
"""


def test_concurrent_writers_in_several_processes_lose_no_update(db_url: str) -> None:
    db = _counter_db(db_url)
    processes, each = 4, 25
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, db_url, str(each)], stderr=subprocess.PIPE)
             for _ in range(processes)]
    for proc in procs:
        _, err = proc.communicate(timeout=120)  # a deadlock would hang here: bounded
        assert proc.returncode == 0, err.decode()[-2000:]
    with db.read() as conn:
        assert conn.execute(text("SELECT n FROM t_counter WHERE id = 1")).scalar_one() == processes * each
    db.dispose()


@pytest.fixture
def servers(pg_databases: Any, tmp_path: Path) -> Any:
    """Three servers on one database, one root key (what HAProxy balances over)."""
    url = pg_databases.create()
    key = tmp_path / "root.key"
    started: list[ServerProcess] = []
    try:
        first = ServerProcess(tmp_path / "s0", ["--db", url, "--root-key-file", str(key)]).start()
        started.append(first)
        for i in (1, 2):
            started.append(ServerProcess(tmp_path / f"s{i}", ["--db", url, "--root-key-file", str(key)]).start())
        yield started
    finally:
        for srv in started:
            srv.stop()


def test_client_token_is_idempotent_across_servers(servers: list[ServerProcess]) -> None:
    """Eight concurrent CreateVolume calls with one ClientToken, spread over three servers:
    one volume, and every call answers with it."""
    token = uuid.uuid4().hex
    clients = [srv.client("ec2") for srv in servers]

    def create(i: int) -> str:
        return clients[i % 3].create_volume(AvailabilityZone="us-east-1a", Size=1, ClientToken=token)["VolumeId"]

    with ThreadPoolExecutor(8) as pool:
        ids = set(pool.map(create, range(8)))
    assert len(ids) == 1
    listed = clients[0].describe_volumes(Filters=[{"Name": "volume-id", "Values": list(ids)}])["Volumes"]
    assert len(listed) == 1


def test_concurrent_writes_from_three_servers_are_all_kept(servers: list[ServerProcess]) -> None:
    """Tags written to one volume concurrently through three servers (read-modify-write of
    one resource's tag set): every tag is there afterwards, none lost, no request failed."""
    ec2 = [srv.client("ec2") for srv in servers]
    vol = ec2[0].create_volume(AvailabilityZone="us-east-1a", Size=1)["VolumeId"]

    def tag(i: int) -> None:
        ec2[i % 3].create_tags(Resources=[vol], Tags=[{"Key": f"k{i}", "Value": str(i)}])

    with ThreadPoolExecutor(12) as pool:
        list(pool.map(tag, range(36)))
    for client in ec2:  # every process's view
        tags = client.describe_volumes(VolumeIds=[vol])["Volumes"][0].get("Tags", [])
        assert {t["Key"] for t in tags} == {f"k{i}" for i in range(36)}

"""The mechanisms of ``serve --workers N`` one by one: job recovery on a SQLite file shared by
one host's workers, the shared clock offset, the supervisor (restart, stop, give up), and
the attach requests a worker sends to the primary."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
from sqlalchemy import insert

from ebscrypt.clock import Clock, SharedOffset
from ebscrypt.context import Runtime, Settings
from ebscrypt.engines import jobs as jobs_mod
from ebscrypt.engines.attach import remote
from ebscrypt.engines.jobs import JobRunner, runner_process_alive
from ebscrypt.errors import ServiceUnavailable
from ebscrypt.storage.db import Database
from ebscrypt.storage.schema import jobs
from tests.helpers import until

HOST = socket.gethostname()


@jobs_mod.job_kind("test_workers_resumable", resumable=True)
def _resumable(ctx: Any) -> None:
    pass


@pytest.fixture
def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@pytest.fixture
def live_pid() -> Iterator[int]:
    proc = subprocess.Popen(["sleep", "60"])
    yield proc.pid
    proc.kill()
    proc.wait()


def test_runner_process_alive(dead_pid: int, live_pid: int) -> None:
    assert runner_process_alive(f"{HOST}/{live_pid}/abc")
    assert not runner_process_alive(f"{HOST}/{dead_pid}/abc")
    assert not runner_process_alive(f"{HOST}/{os.getpid()}/abc")  # an earlier process's id, this pid reused
    assert runner_process_alive(f"elsewhere/{dead_pid}/abc")  # another host: only its lease tells
    assert runner_process_alive("not-a-runner-id")


def _shared_runtime(tmp_path: Path) -> Runtime:
    runtime: Runtime
    db = Database(f"sqlite:///{tmp_path / 'meta.db'}")
    db.shared = True  # as build_runtime sets it for serve --workers N
    runner = JobRunner(lambda: runtime, workers=1, poll_seconds=0.05)
    runtime = Runtime(settings=Settings(data_dir=tmp_path, workers=2), db=db, clock=Clock(), jobs=runner)
    return runtime


def _running_job(rt: Runtime, runner: str) -> str:
    job_id = os.urandom(8).hex()
    now = rt.clock.now()
    with rt.db.begin() as conn:
        conn.execute(insert(jobs).values(id=job_id, kind="test_workers_resumable", payload="{}", state="running", progress=0.0,
                                         attempts=1, runner=runner, lease_expires=time.time() + 3600,
                                         created_at=now, updated_at=now))
    return job_id


def test_shared_sqlite_recovers_only_the_jobs_of_gone_processes(tmp_path: Path, dead_pid: int) -> None:
    """A worker starting beside a live sibling takes over the jobs of a killed worker at
    once, and never the sibling's (whose lease is still far off either way)."""
    sibling = subprocess.Popen(["sleep", "60"])
    try:
        rt = _shared_runtime(tmp_path)
        killed = _running_job(rt, f"{HOST}/{dead_pid}/killed")
        live = _running_job(rt, f"{HOST}/{sibling.pid}/live")
        remote_host = _running_job(rt, "otherhost/1/far")
        rt.jobs._recover(at_start=True)
        assert rt.jobs.state(killed)["state"] == "queued"
        assert rt.jobs.state(live)["state"] == "running"
        assert rt.jobs.state(remote_host)["state"] == "running"
        sibling.kill()
        sibling.wait()
        rt.jobs._recover()  # the keeper's periodic pass
        assert rt.jobs.state(live)["state"] == "queued"
        assert rt.jobs.state(remote_host)["state"] == "running"
    finally:
        sibling.kill()
        sibling.wait()


def test_shared_sqlite_leaves_this_process_running_jobs_alone(tmp_path: Path) -> None:
    rt = _shared_runtime(tmp_path)
    mine = _running_job(rt, rt.jobs.runner_id)  # a runner of this process (live, started)
    jobs_mod._LIVE_RUNNERS[rt.jobs.runner_id] = rt.jobs
    rt.jobs._recover(at_start=True)
    assert rt.jobs.state(mine)["state"] == "running"


def test_the_shared_clock_offset_crosses_fork() -> None:
    clock = Clock(SharedOffset())
    before = clock.now()
    pid = os.fork()
    if pid == 0:  # the child advances; the parent's clock moves
        clock.advance(86400)
        os._exit(0)
    os.waitpid(pid, 0)
    assert (clock.now() - before).total_seconds() >= 86400
    clock.advance(-86400)
    assert (clock.now() - before).total_seconds() < 3600


_SUPERVISED = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from ebscrypt import supervisor
    supervisor.RESTART_PAUSE = 0.01
    out = Path(sys.argv[1])
    mode = sys.argv[2]

    def run(index):
        (out / f"{index}-{os.getpid()}").write_text("")
        if mode == "fail":
            return 7
        while True:
            time.sleep(0.1)

    sys.exit(supervisor.Supervisor(2, run).serve())
""")


def _supervise(tmp_path: Path, mode: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", _SUPERVISED, str(tmp_path), mode],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _started(tmp_path: Path) -> list[tuple[int, int]]:
    return sorted((int(i), int(p)) for i, p in (f.name.split("-") for f in tmp_path.iterdir()))


def test_supervisor_restarts_a_killed_worker_and_stops_all_on_sigterm(tmp_path: Path) -> None:
    proc = _supervise(tmp_path, "run")
    try:
        assert until(lambda: len(_started(tmp_path)) == 2)
        (_, first), _ = _started(tmp_path)
        os.kill(first, signal.SIGKILL)
        assert until(lambda: len([s for s in _started(tmp_path) if s[0] == 0]) == 2)  # worker 0 again
        pids = [pid for _, pid in _started(tmp_path) if pid != first]
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, out
        assert "worker 0" in out and "starting it again" in out
        for pid in pids:
            assert until(lambda: not Path(f"/proc/{pid}").exists(), 5), f"worker {pid} left running"
    finally:
        proc.kill()


def test_supervisor_gives_up_on_a_worker_that_cannot_start(tmp_path: Path) -> None:
    proc = _supervise(tmp_path, "fail")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 7, out
    assert "keeps exiting at start" in out


class _FakeAttach:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.held = threading.Event()

    def reopen_attached(self, volume_id: str) -> object:
        self.calls.append(("open", volume_id))
        return object()

    def close_volume(self, volume_id: str) -> None:
        self.calls.append(("close", volume_id))

    @contextlib.contextmanager
    def quiesced(self, volume_id: str) -> Iterator[None]:
        self.calls.append(("hold", volume_id))
        self.held.set()
        yield
        self.held.clear()
        self.calls.append(("release", volume_id))


class _Volume:
    id = "vol-0123456789abcdef0"


def test_attach_requests_reach_the_primary(tmp_path: Path) -> None:
    name = f"ebscrypt-test-{os.getpid()}-{os.urandom(4).hex()}"
    engine = _FakeAttach()
    server = remote.AttachServer(engine, name)
    try:
        client = remote.RemoteAttach(tmp_path, name)
        client.open(_Volume(), b"key", "i-0123456789abcdef0")
        client.close_volume("vol-1")
        with client.quiesced("vol-2"):
            assert engine.held.is_set()  # held while the snapshot commits
            assert engine.calls[-1] == ("hold", "vol-2")
        assert not engine.held.is_set()
        assert engine.calls == [("open", _Volume.id), ("close", "vol-1"), ("hold", "vol-2"), ("release", "vol-2")]
        # export names: the same key file, so the same names as the primary's engine
        assert client.export_name("vol-1", "i-1", None) == remote.RemoteAttach(tmp_path, name).export_name(
            "vol-1", "i-1", None)
    finally:
        server.close()


def test_a_hold_ends_when_the_worker_goes_away(tmp_path: Path) -> None:
    name = f"ebscrypt-test-{os.getpid()}-{os.urandom(4).hex()}"
    engine = _FakeAttach()
    server = remote.AttachServer(engine, name)
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect("\0" + name)
        sock.sendall(b'{"op": "hold", "volume": "vol-3"}\n')
        assert sock.recv(100).startswith(b'{"ok": true')
        sock.close()  # the worker died mid-snapshot: the volume is let go
        assert until(lambda: ("release", "vol-3") in engine.calls, 10)
    finally:
        server.close()


def test_no_primary_is_a_retryable_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(remote, "CONNECT_SECONDS", 0.3)
    client = remote.RemoteAttach(tmp_path, f"ebscrypt-test-none-{os.urandom(4).hex()}")
    with pytest.raises(ServiceUnavailable) as err:
        client.close_volume("vol-1")
    assert err.value.status == 503


def test_writers_of_two_processes_on_one_shared_file_all_commit(tmp_path: Path) -> None:
    """Two processes, four threads each, incrementing one row: every increment is kept (the
    write transactions ran one at a time across the processes: BEGIN IMMEDIATE, SQLite's
    busy handler between processes) and none failed busy."""
    from sqlalchemy import text

    url = f"sqlite:///{tmp_path / 'meta.db'}"
    db = Database(url)
    with db.begin() as conn:
        conn.execute(text("CREATE TABLE counter (n INTEGER)"))
        conn.execute(text("INSERT INTO counter VALUES (0)"))
    db.dispose()
    script = textwrap.dedent(f"""
        import threading
        from sqlalchemy import text
        from ebscrypt.storage.db import Database
        db = Database({url!r})
        db.shared = True
        def work():
            for _ in range(50):
                with db.begin() as conn:
                    n = conn.execute(text("SELECT n FROM counter")).scalar()
                    conn.execute(text("UPDATE counter SET n = :n"), {{"n": n + 1}})
        threads = [threading.Thread(target=work) for _ in range(4)]
        [t.start() for t in threads]
        [t.join() for t in threads]
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script]) for _ in range(2)]
    assert [p.wait(120) for p in procs] == [0, 0]
    db = Database(url)
    with db.read() as conn:
        assert conn.execute(text("SELECT n FROM counter")).scalar() == 400
    db.dispose()


def test_a_snapshot_of_a_volume_never_attached_asks_the_primary_nothing(tmp_path: Path) -> None:
    """CreateSnapshot in another worker holds the volume through the primary only when the
    primary may hold something of it: an attachment, or a journal a crash left."""
    from datetime import datetime, timezone

    from ebscrypt.storage.tables.ec2 import ec2_volume_attachments

    name = f"ebscrypt-test-{os.getpid()}-{os.urandom(4).hex()}"
    engine = _FakeAttach()
    server = remote.AttachServer(engine, name)
    db = Database(f"sqlite:///{tmp_path / 'meta.db'}")
    try:
        client = remote.RemoteAttach(tmp_path, name, db)
        with client.quiesced("vol-00000000000000001"):
            pass
        assert engine.calls == []
        with db.begin() as conn:
            conn.execute(insert(ec2_volume_attachments).values(
                volume_id="vol-00000000000000002", instance_id="i-00000000000000002", device="/dev/sdf",
                state="attached", attach_time=datetime.now(timezone.utc), delete_on_termination=False))
        with client.quiesced("vol-00000000000000002"):
            pass
        (tmp_path / "journal").mkdir()
        (tmp_path / "journal" / "vol-00000000000000003.jnl").write_bytes(b"")
        with client.quiesced("vol-00000000000000003"):
            pass
        assert [c for c in engine.calls if c[0] == "hold"] == [
            ("hold", "vol-00000000000000002"), ("hold", "vol-00000000000000003")]
    finally:
        server.close()
        db.dispose()


def test_a_hold_never_released_ends_after_its_bound(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(remote, "HOLD_SECONDS", 0.3)
    name = f"ebscrypt-test-{os.getpid()}-{os.urandom(4).hex()}"
    engine = _FakeAttach()
    server = remote.AttachServer(engine, name)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect("\0" + name)
            sock.sendall(b'{"op": "hold", "volume": "vol-4"}\n')
            assert sock.recv(100).startswith(b'{"ok": true')
            assert until(lambda: ("release", "vol-4") in engine.calls, 10)  # the connection still open
    finally:
        server.close()

"""``ebscrypt serve --workers 2``: two API processes on one port, one data dir, one SQLite file.

Each answer names its worker (``x-ebscrypt-worker: INDEX/PID``); a boto3 client keeps its
connection, so a client whose first answer came from worker N talks to worker N. Through
such clients: what one worker creates the other reads, KMS keys made in one are used and
disabled in the other, ClientToken idempotency holds across them, attached volumes
attached through worker 1 are served by worker 0's NBD server, and a worker killed with
SIGKILL is started again by the parent with nothing acknowledged lost.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from tests.conftest import DEFAULT_ACCOUNT, DEFAULT_REGION, ServerProcess
from tests.helpers import child_pids, pattern, read_blocks, until, upload_snapshot
from tests.integration.test_nbd_support import ZONE, launch, need, qemu_io, run, uri

WORKER = "x-ebscrypt-worker"


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path_factory.mktemp("workers") / "data", ["--workers", "2"]).start()
    all_workers_up(server)
    yield server
    server.stop()


def _client(url: str, service: str) -> Any:
    """A client with one connection: every call goes to the worker that accepted it."""
    return boto3.client(service, endpoint_url=url, region_name=DEFAULT_REGION, aws_access_key_id=DEFAULT_ACCOUNT,
                        aws_secret_access_key="dev",
                        config=Config(max_pool_connections=1, retries={"max_attempts": 0}, read_timeout=120))


def _worker_of(response: dict[str, Any]) -> tuple[int, int]:
    index, pid = response["ResponseMetadata"]["HTTPHeaders"][WORKER].split("/")
    return int(index), int(pid)


def _probe(client: Any, service: str) -> dict[str, Any]:
    """One cheap call's answer (an error's answer names its worker too)."""
    try:
        if service == "ec2":
            return client.describe_regions()  # type: ignore[no-any-return]
        if service == "kms":
            return client.list_keys(Limit=1)  # type: ignore[no-any-return]
        return client.list_snapshot_blocks(SnapshotId="snap-0123456789abcdef0")  # type: ignore[no-any-return]
    except ClientError as err:
        return err.response  # type: ignore[return-value]


def on_worker(srv: ServerProcess, service: str, index: int) -> Any:
    """A client whose connection is served by worker ``index`` (new clients until one is)."""
    for _ in range(60):
        client = _client(srv.url, service)
        if _worker_of(_probe(client, service))[0] == index:
            return client
    raise AssertionError(f"no connection reached worker {index} in 60 tries")


def ready(srv: ServerProcess) -> dict[str, Any]:
    """``/_ebscrypt/ready`` over a new connection: which worker answered, and its pid."""
    with urllib.request.urlopen(f"{srv.url}/_ebscrypt/ready", timeout=10) as resp:
        return json.loads(resp.read())  # type: ignore[no-any-return]


def all_workers_up(srv: ServerProcess, count: int = 2, timeout: float = 120) -> None:
    """Until every worker answers: the server is up when its first worker is (on a loaded
    machine the second one may take many seconds more to start)."""
    seen: set[int] = set()
    deadline = time.monotonic() + timeout
    while len(seen) < count:
        assert time.monotonic() < deadline, f"only workers {seen} answered"
        seen.add(ready(srv)["worker"])
        time.sleep(0.02)


def test_requests_spread_over_both_workers(srv: ServerProcess) -> None:
    assert srv.proc is not None
    seen: set[tuple[int, int]] = set()
    for _ in range(300):  # new connections until both workers answered
        r = ready(srv)
        seen.add((r["worker"], r["pid"]))
        if len({w for w, _ in seen}) == 2:
            break
    assert {w for w, _ in seen} == {0, 1}, seen
    pids = {pid for _, pid in seen}
    assert len(pids) == 2 and srv.proc.pid not in pids  # two processes, neither the parent
    assert pids <= set(child_pids(srv.proc.pid))


def test_created_in_one_worker_read_in_the_other(srv: ServerProcess) -> None:
    ec2_0, ec2_1 = on_worker(srv, "ec2", 0), on_worker(srv, "ec2", 1)
    made = ec2_0.create_volume(AvailabilityZone=ZONE, Size=2, ClientToken="workers-token-1")
    assert _worker_of(made)[0] == 0
    seen = ec2_1.describe_volumes(VolumeIds=[made["VolumeId"]])
    assert _worker_of(seen)[0] == 1 and seen["Volumes"][0]["Size"] == 2
    # The same ClientToken through the other worker: the same volume, not a second one.
    again = ec2_1.create_volume(AvailabilityZone=ZONE, Size=2, ClientToken="workers-token-1")
    assert again["VolumeId"] == made["VolumeId"]
    # A snapshot made through worker 1 (its block lineage), a volume from it through worker 0.
    snap = ec2_1.create_snapshot(VolumeId=made["VolumeId"])["SnapshotId"]
    ec2_0.get_waiter("snapshot_completed").wait(SnapshotIds=[snap], WaiterConfig={"Delay": 1})
    restored = ec2_0.create_volume(AvailabilityZone=ZONE, SnapshotId=snap)["VolumeId"]
    ec2_1.get_waiter("volume_available").wait(VolumeIds=[restored], WaiterConfig={"Delay": 1})


def _listing(ec2: Any, **params: Any) -> dict[str, dict[str, Any]]:
    """DescribeImages paged by 5 as the CLI pages (the page rendered from its rows, its
    mappings from the texts the worker keeps): {image id: image}."""
    found: dict[str, dict[str, Any]] = {}
    token = None
    while True:
        page = ec2.describe_images(MaxResults=5, **params, **({"NextToken": token} if token else {}))
        found.update({i["ImageId"]: i for i in page["Images"]})
        token = page.get("NextToken")
        if not token:
            return found


def test_an_image_changed_in_one_worker_is_described_so_by_the_other(srv: ServerProcess) -> None:
    """Issue 15 (Describe at scale): each worker keeps the rendered mappings of the images
    it lists; a change through one worker — tags, description, launch permissions (public,
    another account), deregistration — is in the next DescribeImages of the other, its
    mappings as registered."""
    ec2_0, ec2_1 = on_worker(srv, "ec2", 0), on_worker(srv, "ec2", 1)
    vol = ec2_0.create_volume(AvailabilityZone=ZONE, Size=1)["VolumeId"]
    ec2_0.get_waiter("volume_available").wait(VolumeIds=[vol], WaiterConfig={"Delay": 1})
    snap = ec2_0.create_snapshot(VolumeId=vol)["SnapshotId"]
    ec2_0.get_waiter("snapshot_completed").wait(SnapshotIds=[snap], WaiterConfig={"Delay": 1})
    ids = [ec2_0.register_image(Name=f"workers-img-{i}", RootDeviceName="/dev/xvda", BlockDeviceMappings=[
        {"DeviceName": "/dev/xvda", "Ebs": {"SnapshotId": snap, "VolumeSize": 1 + i}}])["ImageId"] for i in range(7)]
    for ec2 in (ec2_0, ec2_1):  # both workers render (and keep) the mappings
        listed = _listing(ec2, Owners=["self"])
        assert [listed[i]["BlockDeviceMappings"][0]["Ebs"]["VolumeSize"] for i in ids] == list(range(1, 8))
    first = ids[3]
    ec2_0.create_tags(Resources=[first], Tags=[{"Key": "Name", "Value": "changed"}])
    ec2_0.modify_image_attribute(ImageId=first, Description={"Value": "new words"})
    ec2_0.modify_image_attribute(ImageId=first, LaunchPermission={"Add": [{"Group": "all"}]})
    ec2_0.modify_image_attribute(ImageId=ids[4], LaunchPermission={"Add": [{"UserId": "222222222222"}]})
    ec2_0.deregister_image(ImageId=ids[5])
    seen = _listing(ec2_1, Owners=["self"])
    assert seen[first]["Tags"] == [{"Key": "Name", "Value": "changed"}] and seen[first]["Public"] is True
    assert seen[first]["Description"] == "new words"
    assert seen[first]["BlockDeviceMappings"][0]["Ebs"] == {"SnapshotId": snap, "VolumeSize": 4,
                                                             "DeleteOnTermination": True, "VolumeType": "gp2",
                                                             "Encrypted": False}
    assert ids[5] not in seen and ids[5] not in _listing(ec2_1, Owners=["self"], Filters=[
        {"Name": "name", "Values": ["workers-img-*"]}])
    other = boto3.client("ec2", endpoint_url=srv.url, region_name=DEFAULT_REGION, aws_access_key_id="222222222222",
                         aws_secret_access_key="dev", config=Config(retries={"max_attempts": 0}))
    theirs = _listing(other, Filters=[{"Name": "name", "Values": ["workers-img-*"]}])
    assert set(theirs) == {first, ids[4]}  # public, and shared with that account; nothing else
    ec2_0.modify_image_attribute(ImageId=first, LaunchPermission={"Remove": [{"Group": "all"}]})
    assert set(_listing(other, Filters=[{"Name": "name", "Values": ["workers-img-*"]}])) == {ids[4]}


def test_blocks_written_through_one_worker_read_through_the_other(srv: ServerProcess) -> None:
    blocks = {0: pattern("w0", 0), 7: pattern("w0", 7)}
    snap = upload_snapshot(on_worker(srv, "ebs", 0), blocks)
    assert read_blocks(on_worker(srv, "ebs", 1), snap) == blocks


def test_kms_key_made_in_one_worker_used_and_disabled_in_the_other(srv: ServerProcess) -> None:
    kms_0, kms_1 = on_worker(srv, "kms", 0), on_worker(srv, "kms", 1)
    key = kms_0.create_key(Description="across workers")["KeyMetadata"]["KeyId"]
    pair = kms_1.generate_data_key(KeyId=key, KeySpec="AES_256")
    assert _worker_of(pair)[0] == 1
    assert kms_0.decrypt(CiphertextBlob=pair["CiphertextBlob"])["Plaintext"] == pair["Plaintext"]
    kms_1.disable_key(KeyId=key)  # worker 0 has the key row in memory: it must see the change
    with pytest.raises(kms_0.exceptions.DisabledException):
        kms_0.decrypt(CiphertextBlob=pair["CiphertextBlob"])
    kms_0.enable_key(KeyId=key)
    assert kms_1.decrypt(CiphertextBlob=pair["CiphertextBlob"])["Plaintext"] == pair["Plaintext"]


def test_the_clock_advances_in_every_worker(srv: ServerProcess) -> None:
    """The dev clock route, served by one worker, moves both: a key past its deletion
    date is gone in each."""
    kms_0, kms_1 = on_worker(srv, "kms", 0), on_worker(srv, "kms", 1)
    key = kms_0.create_key()["KeyMetadata"]["KeyId"]
    kms_1.schedule_key_deletion(KeyId=key, PendingWindowInDays=7)
    srv.advance_clock(8 * 86400)
    for kms in (kms_0, kms_1):
        with pytest.raises(kms.exceptions.NotFoundException):
            kms.describe_key(KeyId=key)


def test_volume_attached_through_worker_1_is_served_by_worker_0(srv: ServerProcess) -> None:
    """AttachVolume, CreateSnapshot of the in-use volume and DetachVolume through worker
    1: the NBD export (worker 0's) opens, the snapshot holds the flushed write, the detach
    closes the export."""
    need("qemu-io", "nbdinfo")
    ec2 = on_worker(srv, "ec2", 1)
    iid = launch(ec2)
    vol = ec2.create_volume(AvailabilityZone=ZONE, Size=1, Encrypted=True)["VolumeId"]
    ec2.get_waiter("volume_available").wait(VolumeIds=[vol], WaiterConfig={"Delay": 1})
    assert _worker_of(ec2.attach_volume(VolumeId=vol, InstanceId=iid, Device="/dev/sdf"))[0] == 1
    ec2.get_waiter("volume_in_use").wait(VolumeIds=[vol], WaiterConfig={"Delay": 1})
    qemu_io(uri(srv, vol), "write -P 0x5a 0 1M", "flush")
    snap = ec2.create_snapshot(VolumeId=vol)["SnapshotId"]
    ec2.get_waiter("snapshot_completed").wait(SnapshotIds=[snap], WaiterConfig={"Delay": 1})
    got = read_blocks(on_worker(srv, "ebs", 1), snap)
    assert got == {0: b"\x5a" * 524288, 1: b"\x5a" * 524288}
    ec2.detach_volume(VolumeId=vol)
    ec2.get_waiter("volume_available").wait(VolumeIds=[vol], WaiterConfig={"Delay": 1})
    assert run("nbdinfo", "--size", uri(srv, vol), timeout=30, check=False).returncode != 0


def test_a_killed_worker_is_started_again_and_nothing_acknowledged_is_lost(srv: ServerProcess) -> None:
    """SIGKILL to worker 1 while it answers CreateVolume calls back to back: every volume
    it acknowledged is there afterwards, in both workers' view."""
    ec2 = on_worker(srv, "ec2", 1)
    kms = on_worker(srv, "kms", 1)
    key = kms.create_key(Description="acknowledged")["KeyMetadata"]["KeyId"]
    _index, pid = _worker_of(_probe(ec2, "ec2"))
    made: list[str] = []

    def create_until_it_dies() -> None:
        try:
            while len(made) < 5000:
                made.append(ec2.create_volume(AvailabilityZone=ZONE, Size=1)["VolumeId"])
        except Exception:  # the worker died mid-call: that one was not acknowledged
            return

    writer = threading.Thread(target=create_until_it_dies)
    writer.start()
    assert until(lambda: len(made) >= 20, 60)
    os.kill(pid, signal.SIGKILL)
    writer.join(60)
    assert not writer.is_alive()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # the parent starts worker 1 again
        try:
            seen = {(r["worker"], r["pid"]) for r in (ready(srv) for _ in range(20))}
        except OSError:
            seen = set()
        if any(w == 1 and p != pid for w, p in seen):
            break
        time.sleep(0.2)
    else:
        raise AssertionError("worker 1 was not started again")
    for index in (0, 1):
        client = on_worker(srv, "ec2", index)
        found = [v["VolumeId"] for i in range(0, len(made), 200)
                 for v in client.describe_volumes(VolumeIds=made[i:i + 200])["Volumes"]]
        assert sorted(found) == sorted(made)
        assert on_worker(srv, "kms", index).describe_key(KeyId=key)["KeyMetadata"]["Description"] == "acknowledged"


def test_sigterm_stops_every_worker(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "d", ["--workers", "2"]).start()
    assert server.proc is not None
    all_workers_up(server)
    pids = {r["pid"] for r in (ready(server) for _ in range(30))}
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(30) == 0
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert "ebscrypt stopped" in server.log_path.read_text()


def test_worker_count_is_bounded(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "ebscrypt", "serve", "--workers", "0", "--data-dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "--workers must be 1 to 64" in out.stderr


def test_a_console_sign_in_holds_in_every_worker(srv: ServerProcess) -> None:
    """Dev auth's console cookie is signed with one key for all workers: a browser whose
    connections reach either worker stays signed in."""
    import http.client
    import urllib.parse

    def request(method: str, path: str, headers: dict[str, str], body: str | None = None) -> Any:
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)  # a new connection each time
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        conn.close()
        return response

    signed = request("POST", "/_console/login", {
        "Content-Type": "application/x-www-form-urlencoded", "Origin": srv.url, "Host": f"127.0.0.1:{srv.port}"},
        urllib.parse.urlencode({"account": DEFAULT_ACCOUNT}))
    assert signed.status == 303
    session = (signed.getheader("set-cookie") or "").split(";", 1)[0]
    all_workers_up(srv)  # (both workers take connections)
    assert {request("GET", "/_console/", {"Cookie": session}).status for _ in range(30)} == {200}


def test_a_killed_parent_leaves_no_worker_behind(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "d", ["--workers", "2"]).start()
    all_workers_up(server)
    pids = {r["pid"] for r in (ready(server) for _ in range(30))}
    server.kill()  # SIGKILL: the parent runs no code; each worker asked for SIGTERM on its death
    assert until(lambda: not any(Path(f"/proc/{pid}").exists() for pid in pids), 60), pids

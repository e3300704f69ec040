"""The command line speaks in one line, never a traceback (issue 10, item 8).

Each failure below is run as a person runs it (a subprocess) and must print exactly one
line on stderr, no traceback, and exit non-zero — before any snapshot is started when
the input is at fault.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ebscrypt.datapath.transfer import DEFAULT_LOCAL_ENDPOINT, resolve_endpoint
from tests.conftest import free_port, make_client

BLOCK = 524288
ACCOUNT = "555000123001"


def ebscrypt(*args: str, env: dict[str, str] | None = None, stdin: Any = None, timeout: float = 120,
             cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ebscrypt", *args], capture_output=True, text=True, timeout=timeout,
                          env=env, stdin=stdin, cwd=cwd)


def assert_one_line_failure(proc: subprocess.CompletedProcess[str], *words: str) -> str:
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("ebscrypt: "), lines[0]
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def dead_endpoint() -> str:
    return f"http://127.0.0.1:{free_port()}"  # nothing listens there


def snapshots_of(endpoint: str, account: str) -> list[dict[str, Any]]:
    return make_client(endpoint, "ec2", account).describe_snapshots(OwnerIds=["self"])["Snapshots"]


# -- upload / download ----------------------------------------------------------------------


def test_upload_missing_file(endpoint: str, tmp_path: Path) -> None:
    proc = ebscrypt("upload", str(tmp_path / "nope.img"), "--endpoint-url", endpoint, "--account", ACCOUNT)
    assert_one_line_failure(proc, "nope.img", "No such file")


def test_upload_directory_starts_no_snapshot(endpoint: str, tmp_path: Path) -> None:
    account = "555000123002"
    proc = ebscrypt("upload", str(tmp_path), "--endpoint-url", endpoint, "--account", account)
    assert_one_line_failure(proc, "directory")
    assert snapshots_of(endpoint, account) == []


@pytest.mark.parametrize("command", ["upload", "download"])
def test_nothing_listening(command: str, tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    image.write_bytes(os.urandom(BLOCK))
    args = [str(image)] if command == "upload" else ["snap-0123456789abcdef0", str(tmp_path / "out.img")]
    url = dead_endpoint()
    proc = ebscrypt(command, *args, "--endpoint-url", url, timeout=60)
    assert_one_line_failure(proc, "cannot reach", url)


def test_download_into_a_missing_directory(endpoint: str, tmp_path: Path) -> None:
    proc = ebscrypt("download", "snap-0123456789abcdef0", str(tmp_path / "missing" / "out.img"),
                    "--endpoint-url", endpoint, "--account", ACCOUNT)
    assert_one_line_failure(proc, "does not exist")


def test_account_must_be_12_digits(endpoint: str, tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    image.write_bytes(os.urandom(BLOCK))
    proc = ebscrypt("upload", str(image), "--endpoint-url", endpoint, "--account", "12345")
    assert_one_line_failure(proc, "12-digit", "12345")


def test_empty_input_and_zero_volume_size_are_refused(endpoint: str, tmp_path: Path) -> None:
    account = "555000123003"
    empty = tmp_path / "empty.img"
    empty.write_bytes(b"")
    assert_one_line_failure(ebscrypt("upload", str(empty), "--endpoint-url", endpoint, "--account", account), "empty")
    assert_one_line_failure(ebscrypt("upload", "-", "--volume-size", "1", "--endpoint-url", endpoint,
                                     "--account", account, stdin=subprocess.DEVNULL), "empty")
    image = tmp_path / "disk.img"
    image.write_bytes(os.urandom(BLOCK))
    assert_one_line_failure(ebscrypt("upload", str(image), "--volume-size", "0", "--endpoint-url", endpoint,
                                     "--account", account), "--volume-size")
    assert snapshots_of(endpoint, account) == []


def test_upload_from_stdin_then_download_says_received(endpoint: str, tmp_path: Path) -> None:
    data = os.urandom(BLOCK * 3 + 17)
    proc = subprocess.run([sys.executable, "-m", "ebscrypt", "upload", "-", "--volume-size", "1",
                           "--endpoint-url", endpoint, "--account", ACCOUNT, "--no-progress"],
                          input=data, capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    up = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    assert up["BlocksWritten"] == 4 and up["BytesScanned"] == len(data)
    out = tmp_path / "out.img"
    down = ebscrypt("download", up["SnapshotId"], str(out), "--endpoint-url", endpoint, "--account", ACCOUNT)
    assert down.returncode == 0, down.stderr
    assert json.loads(down.stdout.strip().splitlines()[-1])["Checksum"] == up["Checksum"]
    assert out.read_bytes()[: len(data)] == data
    assert "received" in down.stderr and "sent" not in down.stderr


def test_a_failed_upload_names_the_pending_snapshot(endpoint: str) -> None:
    """Input that outgrows --volume-size is found only while reading a pipe, after StartSnapshot."""
    account = "555000123004"
    cmd = (f"head -c {1024**3 + 1} /dev/zero | {sys.executable} -m ebscrypt upload - --volume-size 1 "
           f"--endpoint-url {endpoint} --account {account} --no-progress")
    proc = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=120, cwd=Path.cwd())
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    pending = [s for s in snapshots_of(endpoint, account) if s["State"] == "pending"]
    assert len(pending) == 1
    assert "larger than --volume-size" in last and f"snapshot {pending[0]['SnapshotId']} was left pending" in last


# -- endpoint precedence ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "flag, env, expected",
    [
        ("http://flag:1", {"AWS_ENDPOINT_URL_EBS": "http://ebs:1", "AWS_ENDPOINT_URL": "http://all:1"}, "http://flag:1"),
        (None, {"AWS_ENDPOINT_URL_EBS": "http://ebs:1", "AWS_ENDPOINT_URL": "http://all:1"}, "http://ebs:1"),
        (None, {"AWS_ENDPOINT_URL": "http://all:1", "EBSCRYPT_ENDPOINT_URL": "http://ebscrypt:1"}, "http://all:1"),
        (None, {"EBSCRYPT_ENDPOINT_URL": "http://ebscrypt:1"}, "http://ebscrypt:1"),
        (None, {}, DEFAULT_LOCAL_ENDPOINT),
        ("aws", {"AWS_ENDPOINT_URL": "http://all:1"}, None),
    ],
)
def test_endpoint_precedence(monkeypatch: pytest.MonkeyPatch, flag: str | None, env: dict[str, str],
                             expected: str | None) -> None:
    import argparse

    for name in ("AWS_ENDPOINT_URL_EBS", "AWS_ENDPOINT_URL", "EBSCRYPT_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert resolve_endpoint(argparse.Namespace(endpoint_url=flag)) == expected


def test_upload_honours_aws_endpoint_url(endpoint: str, tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    image.write_bytes(os.urandom(BLOCK))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_ENDPOINT_URL", "EBSCRYPT_ENDPOINT_URL"))}
    env.update(AWS_ENDPOINT_URL=endpoint, EBSCRYPT_ENDPOINT_URL=dead_endpoint())
    proc = ebscrypt("upload", str(image), "--account", ACCOUNT, "--no-progress", env=env)
    assert proc.returncode == 0, proc.stderr


# -- serve / audit-log / help -----------------------------------------------------------------


def test_serve_on_a_taken_port_fails_before_announcing(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        proc = ebscrypt("serve", "--port", str(port), "--data-dir", str(tmp_path / "d"), timeout=60)
    assert "serving on" not in proc.stdout
    assert_one_line_failure(proc, f"127.0.0.1:{port}", "--port")


def test_audit_log_on_a_missing_data_dir(tmp_path: Path) -> None:
    proc = ebscrypt("audit-log", "--data-dir", str(tmp_path / "nowhere"))
    assert_one_line_failure(proc, "nowhere")


def test_serve_rejects_a_bad_default_account(tmp_path: Path) -> None:
    proc = ebscrypt("serve", "--port", str(free_port()), "--data-dir", str(tmp_path / "d"),
                    "--default-account", "12345", timeout=60)
    assert_one_line_failure(proc, "12-digit")


def test_help_texts() -> None:
    serve = ebscrypt("serve", "--help")
    assert serve.returncode == 0
    for expected in ("--host", "(default: 127.0.0.1)", "(default: 4566)", "(default: .ebscrypt)",
                     "(default: warning)", "--allowed-host", "--cors-origin"):
        assert expected in serve.stdout, expected
    top = ebscrypt("--help")
    assert top.returncode == 0 and "``" not in top.stdout and "serve" in top.stdout


def test_serve_prints_a_pasteable_aws_example(tmp_path: Path) -> None:
    """The printed example carries a region and dummy credentials, so it runs as pasted."""
    import signal

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "ebscrypt", "serve", "--port", str(port),
                             "--nbd-port", str(free_port()), "--data-dir", str(tmp_path / "d")],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        proc.stdout.readline()
        example = proc.stdout.readline()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    assert "AWS_DEFAULT_REGION=us-east-1" in example and "AWS_ACCESS_KEY_ID=" in example
    assert "AWS_SECRET_ACCESS_KEY=" in example
    assert f"aws --endpoint-url http://127.0.0.1:{port} ec2 describe-regions" in example


def test_readme_links_stay_in_the_repository() -> None:
    root = Path(__file__).resolve().parents[2]
    for doc in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        text = doc.read_text()
        assert "../shared/" not in text, doc
    golden = (root / "docs" / "golden-ami.md").read_text()
    assert "$SRC/tests/tools/packer/golden.json" in golden

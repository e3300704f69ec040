"""`ebscrypt serve --job-workers N --block-workers N`: the settings a command line produces
(issue 11, item 8: ``Settings.block_workers`` was read by the block engine but could not
be set), and bad values refused with the CLI's one-line error before anything starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from ebscrypt.cli import MAX_WORKERS, _parser, _settings, main
from ebscrypt.context import Settings


def _serve_settings(*args: str) -> Settings:
    parsed = _parser().parse_args(["serve", *args])
    return _settings(parsed, "dev")


def test_defaults_are_the_settings_defaults() -> None:
    settings = _serve_settings()
    assert (settings.job_workers, settings.block_workers) == (Settings.job_workers, Settings.block_workers) == (2, 2)


@pytest.mark.parametrize(
    ("args", "job_workers", "block_workers"),
    [
        (["--block-workers", "0"], 2, 0),  # 0: re-encrypting copies run in the server process
        (["--block-workers", "5"], 2, 5),
        (["--job-workers", "7"], 7, 2),
        (["--job-workers", "1", "--block-workers", str(MAX_WORKERS)], 1, MAX_WORKERS),
    ],
)
def test_options_reach_the_settings(args: list[str], job_workers: int, block_workers: int) -> None:
    settings = _serve_settings(*args)
    assert (settings.job_workers, settings.block_workers) == (job_workers, block_workers)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--block-workers", "-1"], f"ebscrypt: --block-workers must be 0 to {MAX_WORKERS}, not -1\n"),
        (["--block-workers", str(MAX_WORKERS + 1)],
         f"ebscrypt: --block-workers must be 0 to {MAX_WORKERS}, not {MAX_WORKERS + 1}\n"),
        (["--job-workers", "0"], f"ebscrypt: --job-workers must be 1 to {MAX_WORKERS}, not 0\n"),
        (["--job-workers", "-3"], f"ebscrypt: --job-workers must be 1 to {MAX_WORKERS}, not -3\n"),
        (["--workers", "0"], f"ebscrypt: --workers must be 1 to {MAX_WORKERS}, not 0\n"),
        (["--workers", str(MAX_WORKERS + 1)], f"ebscrypt: --workers must be 1 to {MAX_WORKERS}, not {MAX_WORKERS + 1}\n"),
        (["--nbd-cache-mib", "0"], "ebscrypt: --nbd-cache-mib must be at least 2, not 0\n"),
        (["--nbd-cache-mib", "-5"], "ebscrypt: --nbd-cache-mib must be at least 2, not -5\n"),
    ],
)
def test_bad_counts_are_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    # Refused before the port is bound or anything announced (port 1 could not be bound anyway).
    status = main(["serve", "--port", "1", "--nbd-port", "0", "--data-dir", str(tmp_path / "d"), *args])
    out, err = capsys.readouterr()
    assert (status, out, err) == (2, "", message)


def test_a_count_that_is_not_a_number_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        _parser().parse_args(["serve", "--block-workers", "two"])
    assert info.value.code == 2
    assert "argument --block-workers: invalid int value: 'two'" in capsys.readouterr().err


def test_workers_reach_the_settings_and_default_to_one() -> None:
    assert (_serve_settings().workers, _serve_settings().primary) == (1, True)
    assert _serve_settings("--workers", "3").workers == 3

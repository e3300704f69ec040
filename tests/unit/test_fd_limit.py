"""serve raises its soft descriptor limit (ebscrypt/fd_limit.py): up to the hard limit,
never above it, never lowered."""

from __future__ import annotations

import resource
from typing import Any

import pytest

from ebscrypt import fd_limit


@pytest.mark.parametrize(("soft", "hard", "want"), [
    (1024, 524288, fd_limit.WANTED),       # the usual: raised to what we want
    (1024, 4096, 4096),                    # a low hard limit: up to it, not above
    (100000, 200000, 100000),              # already above: not lowered
    (1024, resource.RLIM_INFINITY, fd_limit.WANTED),
])
def test_soft_limit_raised_within_the_hard_one(monkeypatch: Any, soft: int, hard: int, want: int) -> None:
    state = {"limits": (soft, hard)}
    monkeypatch.setattr(resource, "getrlimit", lambda _which: state["limits"])

    def setrlimit(_which: int, limits: tuple[int, int]) -> None:
        assert limits[1] == hard and limits[0] <= (hard if hard != resource.RLIM_INFINITY else limits[0])
        state["limits"] = limits

    monkeypatch.setattr(resource, "setrlimit", setrlimit)
    assert fd_limit.raise_open_files_limit() == want
    assert state["limits"] == (want, hard)


def test_a_refused_raise_keeps_the_limit(monkeypatch: Any) -> None:
    monkeypatch.setattr(resource, "getrlimit", lambda _which: (1024, 524288))

    def refuse(_which: int, _limits: tuple[int, int]) -> None:
        raise ValueError("not allowed")

    monkeypatch.setattr(resource, "setrlimit", refuse)
    assert fd_limit.raise_open_files_limit() == 1024

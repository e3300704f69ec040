"""Request forms every EC2 operation shares (parsed here, in the service layer)."""

from __future__ import annotations

from typing import Any, Mapping

from ebscrypt.errors import DryRunOperation


def dry_run_check(params: Mapping[str, Any]) -> None:
    """EC2 DryRun: the caller is allowed, so answer DryRunOperation (HTTP 412)."""
    if params.get("DryRun"):
        raise DryRunOperation()

"""Command-line data path: ``ebscrypt upload`` / ``ebscrypt download`` through the EBS direct APIs.

Entry points for the CLI: :func:`upload_main` and :func:`download_main` (``argv`` without
the sub-command name; they return the exit status). Both use boto3, so they work against
ebscrypt and against real AWS alike (``--endpoint-url``).
"""

from __future__ import annotations

from ebscrypt.datapath.transfer import download_main, upload_main

__all__ = ["download_main", "upload_main"]

"""PutSnapshotBlock's checksum reuses the SHA-256 the SigV4 check computed over the very
same body (ebscrypt/context.py ``note_body_digest``; issue 15): never another object's,
and a block whose checksum does not match is still refused (R-DATA-1)."""

from __future__ import annotations

import base64
import contextvars
import hashlib
import os

import pytest

from ebscrypt.context import known_digest, note_body_digest
from ebscrypt.engines.ebs.direct import verified_block_checksum
from ebscrypt.errors import EbsValidation


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


def test_the_noted_digest_is_used_only_for_that_body() -> None:
    def run() -> None:
        body = os.urandom(524288)
        digest = hashlib.sha256(body).digest()
        note_body_digest(body, digest)
        assert known_digest(body) == digest
        assert known_digest(bytes(bytearray(body))) is None  # equal bytes, another object: hashed again
        assert verified_block_checksum(body, _b64(digest)) == _b64(digest)
        with pytest.raises(EbsValidation):
            verified_block_checksum(body, _b64(hashlib.sha256(b"other").digest()))

    contextvars.copy_context().run(run)


def test_a_body_is_hashed_when_no_digest_was_noted() -> None:
    def run() -> None:
        body = os.urandom(1024)
        wrong = hashlib.sha256(b"not the body").digest()
        note_body_digest(os.urandom(1024), wrong)  # another request's body in this context
        assert verified_block_checksum(body, _b64(hashlib.sha256(body).digest()))
        with pytest.raises(EbsValidation):
            verified_block_checksum(body, _b64(wrong))

    contextvars.copy_context().run(run)

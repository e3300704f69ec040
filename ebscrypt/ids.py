"""Random (version 4) UUIDs as strings, made cheaply.

A KMS data-key call makes two (its request id and its audit record's eventID):
``str(uuid.uuid4())`` builds a ``UUID`` object only to format it (~6 µs here, 2 of the
pair's ~40 µs of audit work; bench/README.md section A). Same randomness
(``os.urandom``), same version and variant bits, same text.
"""

from __future__ import annotations

import os

__all__ = ["uuid4_str"]


def uuid4_str() -> str:
    """``str(uuid.uuid4())``, without the ``UUID`` object."""
    b = bytearray(os.urandom(16))
    b[6] = (b[6] & 0x0F) | 0x40  # version 4
    b[8] = (b[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"

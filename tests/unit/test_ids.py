"""ebscrypt/ids.uuid4_str: the text of a random version-4 UUID, as str(uuid.uuid4())."""

from __future__ import annotations

import uuid

from ebscrypt.ids import uuid4_str


def test_uuid4_str_is_a_canonical_random_v4_uuid() -> None:
    seen = set()
    for _ in range(2000):
        text = uuid4_str()
        parsed = uuid.UUID(text)
        assert str(parsed) == text  # canonical: lower-case hex, 8-4-4-4-12
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122
        seen.add(text)
    assert len(seen) == 2000

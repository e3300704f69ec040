"""ebscrypt/jsonenc.py writes the text ``JSONEncoder.encode`` writes, option for option."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ebscrypt.jsonenc import compact_encoder

_leaf = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
_docs = st.recursive(_leaf, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(), kids, max_size=4),
                     max_leaves=20)


@pytest.mark.parametrize("sort_keys", [False, True])
@pytest.mark.parametrize("ensure_ascii", [False, True])
@given(doc=_docs)
def test_same_text_as_the_library(doc: Any, sort_keys: bool, ensure_ascii: bool) -> None:
    mine = compact_encoder(sort_keys=sort_keys, ensure_ascii=ensure_ascii)
    theirs = json.JSONEncoder(separators=(",", ":"), sort_keys=sort_keys, ensure_ascii=ensure_ascii,
                              check_circular=False)
    assert mine(doc) == theirs.encode(doc)


def test_default_is_used_for_other_types_and_refusals_stay() -> None:
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    assert compact_encoder(default=str)({"t": when, "é": "ü"}) == json.dumps(
        {"t": when, "é": "ü"}, separators=(",", ":"), default=str)
    with pytest.raises(TypeError):
        compact_encoder()({"t": when})
    assert compact_encoder()([float("inf"), float("nan")]) == "[Infinity,NaN]"  # as the library (allow_nan)

"""SPEC §2 (R-OUT-1…7): the outcome function against the seed tables.

The 20 rows are transcribed from the "Encryption outcomes" table in
shared/seeds/003_ee65a591cad8feec.txt (Encrypted? × EBD? × source, columns "Default (no
customer managed key specified)" and "Custom (customer managed key specified)"); the
CopyImage/launch cases from seeds 000 and 002 follow.
"""

from __future__ import annotations

import pytest

from ebscrypt.domain.outcome import KMS_DEPENDENCY_MESSAGE, Outcome, Source, decide, reuses_data_key
from ebscrypt.errors import ServiceError

DEFAULT = "arn:aws:kms:us-east-1:111111111111:key/default-key"
SRC_KEY = "arn:aws:kms:us-east-1:111111111111:key/source-key"
SHARED_KEY = "arn:aws:kms:us-east-1:222222222222:key/owner-key"
CUSTOM = "arn:aws:kms:us-east-1:111111111111:key/custom-key"

SOURCES = {
    "new": None,
    "unenc-own": Source(encrypted=False, owned=True),
    "enc-own": Source(encrypted=True, key=SRC_KEY, owned=True),
    "unenc-shared": Source(encrypted=False, owned=False),
    "enc-shared": Source(encrypted=True, key=SHARED_KEY, owned=False),
}

# Expected results, as the seed table words them.
UNENC = "Unencrypted"
SAME = "Encrypted by same key"
DEF = "Encrypted by default customer managed key"
SPEC = "Encrypted by a specified customer managed key"
NA = "N/A"  # KmsKeyId without Encrypted: R-OUT-1 error

# (encrypted?, ebd?, source, default column, custom column, rule of default column)
TABLE = [
    (False, False, "new", UNENC, NA, "R-OUT-6"),
    (False, False, "unenc-own", UNENC, NA, "R-OUT-6"),
    (False, False, "enc-own", SAME, NA, "R-OUT-3"),
    (False, False, "unenc-shared", UNENC, NA, "R-OUT-6"),
    (False, False, "enc-shared", DEF, NA, "R-OUT-4"),
    (True, False, "new", DEF, SPEC, "R-OUT-5"),
    (True, False, "unenc-own", DEF, SPEC, "R-OUT-5"),
    (True, False, "enc-own", SAME, SPEC, "R-OUT-3"),
    (True, False, "unenc-shared", DEF, SPEC, "R-OUT-5"),
    (True, False, "enc-shared", DEF, SPEC, "R-OUT-4"),
    (False, True, "new", DEF, NA, "R-OUT-5"),
    (False, True, "unenc-own", DEF, NA, "R-OUT-5"),
    (False, True, "enc-own", SAME, NA, "R-OUT-3"),
    (False, True, "unenc-shared", DEF, NA, "R-OUT-5"),
    (False, True, "enc-shared", DEF, NA, "R-OUT-4"),
    (True, True, "new", DEF, SPEC, "R-OUT-5"),
    (True, True, "unenc-own", DEF, SPEC, "R-OUT-5"),
    (True, True, "enc-own", SAME, SPEC, "R-OUT-3"),
    (True, True, "unenc-shared", DEF, SPEC, "R-OUT-5"),
    (True, True, "enc-shared", DEF, SPEC, "R-OUT-4"),
]


def _expected_key(word: str, source: Source | None) -> tuple[bool, str | None]:
    return {
        UNENC: (False, None),
        SAME: (True, source.key if source else None),
        DEF: (True, DEFAULT),
        SPEC: (True, CUSTOM),
    }[word]


def _ids(row: tuple) -> str:
    enc, ebd, src, *_ = row
    return f"enc={enc}-ebd={ebd}-{src}"


def test_table_has_twenty_rows() -> None:
    assert len(TABLE) == 20
    assert len({(e, b, s) for e, b, s, *_ in TABLE}) == 20


@pytest.mark.parametrize("row", TABLE, ids=_ids)
@pytest.mark.parametrize("not_encrypted", [None, False], ids=["Encrypted-absent", "Encrypted=false"])
def test_outcomes_table_default_column(row: tuple, not_encrypted: bool | None) -> None:
    """R-OUT-3..7: no KmsKeyId. 'No' in the Encrypted column is both absent and false (R-OUT-7)."""
    enc, ebd, src, default_col, _custom, rule = row
    source = SOURCES[src]
    out = decide(source, encrypted=True if enc else not_encrypted, kms_key_id=None, ebd=ebd, default_key=DEFAULT)
    assert (out.encrypted, out.key) == _expected_key(default_col, source)
    assert out.rule == rule
    # R-KEY-2: only "same key" reuses the source's data key.
    assert out.reuse_source_data_key is (default_col == SAME)


@pytest.mark.parametrize("row", TABLE, ids=_ids)
@pytest.mark.parametrize("not_encrypted", [None, False], ids=["Encrypted-absent", "Encrypted=false"])
def test_outcomes_table_custom_column(row: tuple, not_encrypted: bool | None) -> None:
    """R-OUT-2 when Encrypted=true; R-OUT-1 (N/A in the table) otherwise."""
    enc, ebd, src, _default, custom_col, _rule = row
    source = SOURCES[src]
    kwargs = dict(kms_key_id=CUSTOM, ebd=ebd, default_key=DEFAULT)
    if custom_col == NA:
        with pytest.raises(ServiceError) as err:
            decide(source, encrypted=not_encrypted, **kwargs)
        assert err.value.code == "InvalidParameterDependency"
        assert err.value.message == KMS_DEPENDENCY_MESSAGE
        return
    out = decide(source, encrypted=True, **kwargs)
    assert (out.encrypted, out.key, out.rule) == (True, CUSTOM, "R-OUT-2")
    assert out.reuse_source_data_key is False  # R-KEY-2: another key -> new data key


def test_r_out_2_same_key_as_source_reuses_data_key() -> None:
    src = SOURCES["enc-own"]
    out = decide(src, encrypted=True, kms_key_id=SRC_KEY, ebd=False, default_key=DEFAULT)
    assert out == Outcome(True, SRC_KEY, True, "R-OUT-2")


def test_r_out_4_cross_region_copy_of_owned_encrypted_uses_destination_default() -> None:
    dest_default = "arn:aws:kms:eu-west-1:111111111111:key/eu-default"
    out = decide(SOURCES["enc-own"], encrypted=None, kms_key_id=None, ebd=False, default_key=dest_default, cross_region=True)
    assert out == Outcome(True, dest_default, False, "R-OUT-4")


def test_r_key_2_cross_region_never_reuses_data_key() -> None:
    src = SOURCES["enc-own"]
    assert not reuses_data_key(src, SRC_KEY, cross_region=True)
    out = decide(src, encrypted=True, kms_key_id=SRC_KEY, ebd=False, default_key=DEFAULT, cross_region=True)
    assert out.reuse_source_data_key is False


def test_r_out_6_cross_region_unencrypted_stays_unencrypted() -> None:
    out = decide(SOURCES["unenc-own"], encrypted=None, kms_key_id=None, ebd=False, default_key=DEFAULT, cross_region=True)
    assert out == Outcome(False, None, False, "R-OUT-6")


def test_r_out_1_empty_kms_key_id_is_absent() -> None:
    out = decide(None, encrypted=None, kms_key_id="", ebd=False, default_key=DEFAULT)
    assert out.encrypted is False


# --- CopyImage (seed 002 "Image-copying scenarios", seed 000 scenarios): R-IMG-1 applies
# the rule to each snapshot independently with one KmsKeyId at most.

COPY_IMAGE_CASES = [
    # (case, source, Encrypted, KmsKeyId, EBD, expected (encrypted, key), rule)
    ("002 no params: unencrypted stays unencrypted", "unenc-own", None, None, False, (False, None), "R-OUT-6"),
    ("002 no params: unencrypted + EBD -> default key", "unenc-own", None, None, True, (True, DEFAULT), "R-OUT-5"),
    ("002 no params: own encrypted -> same key", "enc-own", None, None, False, (True, SRC_KEY), "R-OUT-3"),
    ("002 no params: shared encrypted -> default key", "enc-shared", None, None, False, (True, DEFAULT), "R-OUT-4"),
    ("002 Encrypted only: unencrypted -> default key", "unenc-own", True, None, False, (True, DEFAULT), "R-OUT-5"),
    ("002 Encrypted only: own encrypted -> same key", "enc-own", True, None, False, (True, SRC_KEY), "R-OUT-3"),
    ("002 Encrypted only: shared encrypted -> default key", "enc-shared", True, None, False, (True, DEFAULT), "R-OUT-4"),
    ("002 Encrypted+KmsKeyId: unencrypted -> specified", "unenc-own", True, CUSTOM, False, (True, CUSTOM), "R-OUT-2"),
    ("002 Encrypted+KmsKeyId: encrypted -> specified", "enc-own", True, CUSTOM, False, (True, CUSTOM), "R-OUT-2"),
    ("002 Encrypted+KmsKeyId: shared encrypted -> specified", "enc-shared", True, CUSTOM, False, (True, CUSTOM), "R-OUT-2"),
    ("000 copy, encrypted root snapshot -> same key", "enc-own", None, None, False, (True, SRC_KEY), "R-OUT-3"),
    ("000 unencrypted AMI + Encrypted + key -> encrypted", "unenc-own", True, CUSTOM, False, (True, CUSTOM), "R-OUT-2"),
    ("002 launch: Encrypted alone on unencrypted AMI -> default", "unenc-own", True, None, False, (True, DEFAULT), "R-OUT-5"),
    ("002 launch: re-encrypt owned AMI with KmsKeyId", "enc-own", True, CUSTOM, False, (True, CUSTOM), "R-OUT-2"),
    ("002 launch: owned encrypted AMI, no params -> same key", "enc-own", None, None, False, (True, SRC_KEY), "R-OUT-3"),
    ("002 launch: shared encrypted AMI, no params -> default", "enc-shared", None, None, False, (True, DEFAULT), "R-OUT-4"),
]


@pytest.mark.parametrize("case", COPY_IMAGE_CASES, ids=[c[0] for c in COPY_IMAGE_CASES])
def test_copy_image_and_launch_cases(case: tuple) -> None:
    _name, src, enc, key, ebd, expected, rule = case
    out = decide(SOURCES[src], encrypted=enc, kms_key_id=key, ebd=ebd, default_key=DEFAULT)
    assert (out.encrypted, out.key) == expected
    assert out.rule == rule


def test_002_kms_key_without_encrypted_is_an_error() -> None:
    """Seed 002: 'Submitting a KmsKeyId without also setting the Encrypted parameter results in an error.'"""
    for src in SOURCES.values():
        with pytest.raises(ServiceError) as err:
            decide(src, encrypted=None, kms_key_id=CUSTOM, ebd=True, default_key=DEFAULT)
        assert err.value.code == "InvalidParameterDependency"


def test_000_mixed_image_keeps_each_snapshot_state() -> None:
    """Seed 000 / R-IMG-1: unencrypted root + encrypted data snapshot, CopyImage without
    parameters: each snapshot decided independently, so root stays unencrypted and data
    stays encrypted under its key."""
    root, data = SOURCES["unenc-own"], SOURCES["enc-own"]
    outs = [decide(s, encrypted=None, kms_key_id=None, ebd=False, default_key=DEFAULT) for s in (root, data)]
    assert [(o.encrypted, o.key) for o in outs] == [(False, None), (True, SRC_KEY)]

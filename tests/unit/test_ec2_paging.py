"""EC2 MaxResults/NextToken paging: bounds, clamping, tokens."""

from __future__ import annotations

import pytest

from ebscrypt.services.ec2.paging import page
from ebscrypt.errors import ServiceError

ITEMS = [f"vol-{i:04d}" for i in range(600)]


def test_clamped_page_size_returns_at_most_high_items() -> None:
    chunk, token = page(ITEMS, {"MaxResults": 1000}, str, low=5, high=500, clamp=True)
    assert chunk == ITEMS[:500] and token is not None
    rest, last = page(ITEMS, {"MaxResults": 1000, "NextToken": token}, str, low=5, high=500, clamp=True)
    assert rest == ITEMS[500:] and last is None


def test_unclamped_page_size_above_high_is_refused() -> None:
    with pytest.raises(ServiceError) as err:
        page(ITEMS, {"MaxResults": 1001}, str, low=5, high=1000)
    assert err.value.code == "InvalidParameterValue" and "between 5 and 1000" in str(err.value)


@pytest.mark.parametrize("clamp", [False, True])
def test_page_size_below_low_is_refused_even_when_clamped(clamp: bool) -> None:
    with pytest.raises(ServiceError) as err:
        page(ITEMS, {"MaxResults": 4}, str, low=5, high=500, clamp=clamp)
    assert err.value.code == "InvalidParameterValue"


def test_max_results_with_ids_is_a_combination_error() -> None:
    with pytest.raises(ServiceError) as err:
        page(ITEMS, {"MaxResults": 5, "VolumeIds": ["vol-0000"]}, str, ids_param="VolumeIds")
    assert err.value.code == "InvalidParameterCombination"


def test_garbage_token_is_invalid_next_token() -> None:
    with pytest.raises(ServiceError) as err:
        page(ITEMS, {"MaxResults": 5, "NextToken": "not-a-token"}, str)
    assert err.value.code == "InvalidNextToken"

"""EC2 MaxResults/NextToken paging: bounds, clamping, tokens (issue 11 item 5: one token
format and one error for every EC2 Describe, including the lists ordered by more than
their id: security groups and VPCs by creation time, subnets by zone, rules by position)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from ebscrypt.services.ec2.paging import page, sort_key
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


T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
# Ordered by creation time, then id (as network.list_groups): the ids are not in order.
GROUPS = sorted(({"id": f"sg-{(7 * i) % 12:04x}", "create_time": T0 + timedelta(seconds=i // 2)} for i in range(12)),
                key=lambda g: (g["create_time"], g["id"]))


def _group_key(g: dict[str, Any]) -> str:
    return sort_key(g["create_time"], g["id"])


def test_groups_page_by_creation_order_with_the_common_token() -> None:
    assert [g["id"] for g in GROUPS] != sorted(g["id"] for g in GROUPS)  # not paged by id alone
    seen, token = [], None
    while True:
        chunk, token = page(GROUPS, {"MaxResults": 5, **({"NextToken": token} if token else {})}, _group_key)
        seen += chunk
        if token is None:
            break
    assert seen == GROUPS
    assert page(GROUPS, {}, _group_key) == (GROUPS, None)


def test_an_item_deleted_between_pages_neither_repeats_nor_hides_another() -> None:
    first, token = page(GROUPS, {"MaxResults": 5}, _group_key)
    rest = [g for g in GROUPS if g is not first[-1] and g is not GROUPS[5]]  # the last returned and the next one gone
    second, _ = page(rest, {"MaxResults": 5, "NextToken": token}, _group_key)
    assert second == GROUPS[6:11]


def test_sort_key_orders_times_and_numbers_as_values() -> None:
    assert sort_key(T0.replace(microsecond=0), "b") < sort_key(T0.replace(microsecond=5), "a")
    assert sort_key(9, "z") < sort_key(10, "a")  # fixed width: 10 is not before 9
    assert sort_key("us-east-1a", "subnet-f") < sort_key("us-east-1b", "subnet-0")


@pytest.mark.parametrize("token", ["garbage!", "bzox", "djE6"[:3]])
def test_every_bad_token_is_the_one_invalid_next_token_error(token: str) -> None:
    with pytest.raises(ServiceError) as err:
        page(GROUPS, {"MaxResults": 5, "NextToken": token}, _group_key)
    assert (err.value.code, err.value.message) == ("InvalidNextToken", f"The token '{token}' is invalid.")

"""Specs as wide tables make them: thousands of long column names, over a mebibyte of JSON."""

import random

WORDS = ("customer", "order", "amount", "count", "mean", "max", "std", "days", "region", "cart")
MAX_FEATURES = 4096
"""The most `spec.dataset.features` holds, each name at most 256 characters."""


def feature_names(count: int = MAX_FEATURES) -> list[str]:
    """Column names of 256 characters (flattened nested records make such names), varied enough
    that compression alone does not bring the list under 128 KiB."""
    pick = random.Random(0).choice
    return [("_".join(pick(WORDS) for _ in range(50)) + f"_{i}")[-256:] for i in range(count)]

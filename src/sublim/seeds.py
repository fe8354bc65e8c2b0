"""Seed derivation, in one place: every per-row, per-stage or per-replicate seed in sublim is
``derive_seed`` of a description (a tag and the numbers that identify the draw), so a draw
depends only on what it is, never on the order of the work or on batch sizes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any


def derive_seed(*parts: Any) -> int:
    """A 31-bit seed derived from any JSON-serialisable description (for per-row generators)."""
    text = json.dumps(list(parts), sort_keys=True, separators=(",", ":"), default=str)
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) & 0x7FFFFFFF


def row_seeds(seed: int | Sequence[int], n: int) -> list[int]:
    """One seed per row: given per row, or derived from (seed, row index)."""
    if isinstance(seed, int):
        return [derive_seed("hf-sample", seed, i) for i in range(n)]
    seeds = [int(s) for s in seed]
    if len(seeds) != n:
        raise ValueError(f"got {len(seeds)} seeds for {n} chats")
    return seeds

"""Verse-like lines and outputs of graded quality, for tests of scoring from kept outputs."""

from __future__ import annotations

import random

WORDS = "and the lord said unto moses go down to the people of israel in the land".split()


def sentences(rng: random.Random, n: int) -> list[str]:
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 14))) for _ in range(n)]


def edited(lines: list[str], rng: random.Random, rate: float) -> list[str]:
    """Each word replaced with probability `rate`: outputs of graded quality."""
    return [" ".join(rng.choice(WORDS) if rng.random() < rate else w for w in line.split())
            for line in lines]

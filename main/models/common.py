"""Small helpers shared by the backbones and heads."""

from __future__ import annotations


def scaled(channels: int, width_mult: float, divisor: int = 1) -> int:
    """Channel count scaled by ``width_mult``; exact at 1.0 so paper-scale shapes are untouched.

    Rounded to a multiple of ``divisor`` (at least one ``divisor``) so reduced CPU-scale models keep sane
    widths, e.g. 1024 -> 256 at 0.25.
    """
    if width_mult == 1.0:
        return channels
    value = max(divisor, int(channels * width_mult + divisor / 2) // divisor * divisor)
    return max(1, value)

"""Durations and sizes as people read them: `45 s`, `2 min`, `1 h 30 min`, `24 GB`, `1.5 TB`."""

from __future__ import annotations


def duration(seconds: float) -> str:
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f} s" if seconds >= 10 or seconds == int(seconds) else f"{seconds:.1f} s"
    minutes = seconds / 60
    if minutes < 60:
        return f"{minutes:.0f} min"
    hours, rest = divmod(round(minutes), 60)
    if hours < 48:
        return f"{hours} h" + (f" {rest} min" if rest else "")
    return f"{hours / 24:.1f} days"


def size_gb(gb: float) -> str:
    """Decimal GB, as vast.ai and disk makers count them."""
    gb = float(gb)
    if gb >= 1000:
        return f"{gb / 1000:.1f} TB"
    return f"{gb:.0f} GB" if gb >= 10 or gb == int(gb) else f"{gb:.1f} GB"

"""Byte sizes as people read them: the one formatter every message, table and report uses, so a
size reads the same in `doctor`, `info`, `models`, `pull`, `convert` and `bench`."""

from __future__ import annotations

KiB, MiB, GiB, TiB = 1024, 1024**2, 1024**3, 1024**4


def format_bytes(n: float) -> str:
    """Binary units: '512 B', '94 MiB', '4.6 GiB'. Whole KiB/MiB (a decimal there is noise); one
    decimal from GiB up (a whole GiB is too coarse for a model or a memory budget)."""
    size = abs(n)
    if size >= TiB:
        return f"{n / TiB:.1f} TiB"
    if size >= GiB:
        return f"{n / GiB:.1f} GiB"
    if size >= MiB:
        return f"{n / MiB:.0f} MiB"
    if size >= KiB:
        return f"{n / KiB:.0f} KiB"
    return f"{n:.0f} B"

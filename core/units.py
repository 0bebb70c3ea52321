"""Sizes for people: the one byte formatter of every message and report."""


def format_bytes(n: float) -> str:
    """1.5 GiB, 300 MiB, 12 KiB (binary units, as the memory limits are stated)."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}" if unit == "GiB" else f"{n / size:.0f} {unit}"
    return f"{int(n)} bytes"

"""How the CLI prints: aligned tables for people, JSON (-o json) for scripts."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from typing import Any


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2)
    sys.stdout.write("\n")


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[("-" if v is None else str(v)) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    for row in [list(headers), *cells]:
        sys.stdout.write(
            "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n"
        )


def print_fields(data: dict[str, Any], keys: Sequence[str]) -> None:
    width = max(len(k) for k in keys)
    for key in keys:
        value = data.get(key)
        if key.endswith("_at"):
            value = format_time(value)
        sys.stdout.write(f"{key.ljust(width)}  {'-' if value is None else value}\n")


def format_size(amount: float, units: Sequence[str]) -> str:
    """`amount` of units[0] in the largest of `units` (each 1024 of the one before) that keeps
    it under 1024 (the last unit takes any size): "512 KiB", "1.5 MiB"."""
    for unit in units:
        if amount < 1024 or unit == units[-1]:
            return f"{amount:.0f} {unit}" if unit == units[0] else f"{amount:.1f} {unit}"
        amount /= 1024
    raise AssertionError("unreachable: the last unit returns")


def format_time(value: float | None) -> str | None:
    if value is None:
        return None
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value))

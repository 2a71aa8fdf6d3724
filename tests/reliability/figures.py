"""The figures the fault tests measure (calls, faults, overspend, recovery time).

Each test calls ``record(name, **figures)``: the line is printed (``pytest -s`` shows it, and a
failing test's captured output has it) and, when ``TOKENFENCE_FIGURES`` names a file, appended
to it as one JSON object per line: the source of the table in ``docs/reliability.md``.
"""

from __future__ import annotations

import json
import os
from typing import Any

__all__ = ["percentile", "record"]


def record(name: str, **figures: Any) -> None:
    line = json.dumps({"test": name, **figures}, sort_keys=True, default=str)
    print(f"FIGURES {line}")
    path = os.environ.get("TOKENFENCE_FIGURES")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(line + "\n")


def percentile(values: list[float], q: float) -> float:
    """The ``q``-quantile (0..1) of ``values`` by nearest rank; 0 for none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]

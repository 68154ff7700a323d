"""Figures, the printed table and the JSON results file."""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

OK = "ok"
NOT_IMPLEMENTED = "n/a (not implemented)"


@dataclass
class Figure:
    """One measured figure. `ratio` is always "how many times better ours is"
    (reference/ours for times, ours/reference for rates); `target` is a
    threshold on `ratio` or, without a reference, on `ours` itself."""

    name: str
    backend: str
    label: str
    unit: str
    ours: float | None = None
    reps: list[float] = field(default_factory=list)
    higher_is_better: bool = False
    reference: float | None = None
    ratio: float | None = None
    target: str | None = None
    result: str | None = None  # PASS / FAIL, only where a target exists
    status: str = OK
    details: dict[str, Any] = field(default_factory=dict)

    def compare(self, reference: float | None) -> Figure:
        """Set `reference` and the ratio ours-vs-reference."""
        self.reference = reference
        if reference and self.ours:
            self.ratio = self.ours / reference if self.higher_is_better else reference / self.ours
        return self

    def compare_paired(self, reference_reps: list[float]) -> Figure:
        """Compare repetition by repetition with a reference measured right
        before each of ours (`reps[i]` against `reference_reps[i]`): the
        ratio is the median of the per-repetition ratios, so a machine whose
        speed drifts during a run moves both sides of each ratio alike."""
        pairs = list(zip(self.reps, reference_reps, strict=True))
        if not pairs:
            return self
        ratios = [(o / r if self.higher_is_better else r / o) for o, r in pairs if o and r]
        self.reference = float(statistics.median(reference_reps))
        self.ratio = float(statistics.median(ratios)) if ratios else None
        self.details["reference_reps"] = list(reference_reps)
        self.details["paired_ratios"] = ratios
        return self

    def check(self, description: str, passed: bool | None) -> Figure:
        """Attach a target; None (nothing to judge, e.g. no reference) leaves it open."""
        self.target = description
        if passed is not None:
            self.result = "PASS" if passed else "FAIL"
        return self


def not_available(name: str, backend: str, label: str, unit: str, status: str) -> Figure:
    return Figure(name=name, backend=backend, label=label, unit=unit, status=status)


def _number(value: float | None, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if abs(value) >= 1000:
        text = f"{value:,.0f}"
    elif abs(value) >= 100:
        text = f"{value:.1f}"
    elif abs(value) >= 1:
        text = f"{value:.2f}"
    else:
        text = f"{value:.4f}"
    return f"{text} {unit}".rstrip()


def table(figures: list[Figure]) -> str:
    header = ("figure", "backend", "ours", "reference", "ratio", "target", "result")
    rows = [header]
    for f in figures:
        ours = _number(f.ours, f.unit) if f.status == OK else f.status
        rows.append(
            (
                f.label,
                f.backend,
                ours,
                _number(f.reference, f.unit),
                f"{f.ratio:.2f}x" if f.ratio is not None else "-",
                f.target or "",
                f.result or "",
            )
        )
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(header))]
    lines = []
    for n, row in enumerate(rows):
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_json(path: Path, payload: dict[str, Any], figures: list[Figure]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {**payload, "figures": [asdict(f) for f in figures]}
    path.write_text(json.dumps(body, indent=2, default=str) + "\n")

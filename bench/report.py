"""Timing helpers and the printed/JSON benchmark report."""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table

console = Console()


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def percentiles(samples_s: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in samples_s)
    q = statistics.quantiles(ms, n=100, method="inclusive")
    return {"p50_ms": q[49], "p95_ms": q[94], "n": len(ms)}


class Report:
    """Rows of (benchmark, metric, value, baseline, ratio, target)."""

    def __init__(self) -> None:
        self.rows: list[dict] = []

    def add(self, bench: str, metric: str, value: float, unit: str, baseline: str = "", ratio: float | None = None,
            target: str = "") -> None:
        self.rows.append(dict(bench=bench, metric=metric, value=value, unit=unit, baseline=baseline, ratio=ratio,
                              target=target))
        r = f" ({ratio:.2f}× {baseline})" if ratio is not None else ""
        console.print(f"[dim]{bench}[/dim] {metric}: [bold]{value:,.2f}[/bold] {unit}{r}")

    def print(self) -> None:
        t = Table(title="microdb benchmarks", header_style="bold cyan")
        for col in ("benchmark", "metric", "value", "ratio", "target"):
            t.add_column(col)
        for r in self.rows:
            ratio = f"{r['ratio']:.2f}× {r['baseline']}" if r["ratio"] is not None else ""
            t.add_row(r["bench"], r["metric"], f"{r['value']:,.2f} {r['unit']}", ratio, r["target"])
        console.print(t)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        doc = {"machine": platform.platform(), "python": platform.python_version(), "time": time.time(), "rows": self.rows}
        path.write_text(json.dumps(doc, indent=1))
        console.print(f"[dim]saved {path}[/dim]")

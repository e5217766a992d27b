"""Shared helpers for the side-by-side benchmarks: median timing and RESULTS.md sections."""

from __future__ import annotations

import pathlib
import statistics
import time
from typing import Callable

RESULTS = pathlib.Path(__file__).with_name("RESULTS.md")


def median_ms(fn: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def interleaved_median_ms(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median time of each function, timed in rounds that run every function once, so that the
    machine's drift over the run lands on all sides alike instead of in their ratios."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}


def results_table(command: str, columns: list[str], align: str, rows: list[str]) -> str:
    """A RESULTS.md section body: the command line paragraph, then a Markdown table whose
    columns are left-aligned ('l') or right-aligned ('r') as `align` says, one letter each."""
    rule = " | ".join("---" if a == "l" else "---:" for a in align)
    return "\n".join([command, "", "| " + " | ".join(columns) + " |", f"| {rule} |", *rows])


def write_section(name: str, body: str) -> None:
    """Replaces the text between `<!-- name -->` and `<!-- /name -->` in RESULTS.md."""
    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    block = f"{start}\n{body.rstrip()}\n{end}"
    if start in text:
        head, rest = text.split(start, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    RESULTS.write_text(text)

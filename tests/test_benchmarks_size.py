"""Issue 22: the benchmark studies share one skeleton (benchmarks/harness.py), so `benchmarks/` stays small."""

from __future__ import annotations

from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
MAX_LINES = 2000


def test_the_benchmarks_code_is_at_most_2000_lines():
    files = sorted(p for p in BENCHMARKS.rglob("*") if p.suffix in {".py", ".sh"} and ".cache" not in p.parts)
    lines = {str(p.relative_to(BENCHMARKS)): len(p.read_text().splitlines()) for p in files}
    assert sum(lines.values()) <= MAX_LINES, sorted(lines.items(), key=lambda item: -item[1])[:5]

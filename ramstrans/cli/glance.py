"""``ramstrans bench glance``: glance and focus over seeds, its cost, and its frontier (``ramstrans.bench.glance``,
``ramstrans.bench.glance_cost``)."""

import argparse
import json
from pathlib import Path

from ramstrans.errors import UsageError
from ramstrans.fields import whole_numbers

__all__ = ["run_glance"]


def run_glance(a: argparse.Namespace) -> dict | None:
    """Screen (val) or report (test) the rows, time and count them (``--cost``), or draw the frontier
    (``--frontier``)."""
    from ramstrans.bench.glance import DEFAULT_ROWS, bench_glance

    rows = [r for r in (a.rows or ",".join(DEFAULT_ROWS)).split(",") if r]
    if a.cost:
        from ramstrans.bench.glance_cost import bench_glance_cost
        from ramstrans.runtime.files import write_text_atomic

        cost = bench_glance_cost(a.cost, a.repeats, rows)
        write_text_atomic(Path(a.out or "runs/bench_glance") / f"cost_{a.cost}.json", json.dumps(cost, indent=1))
        return cost
    if a.frontier:
        from ramstrans.bench.glance_cost import frontier_png

        folder = Path(a.out or "runs/bench_glance")
        found = {v: folder / v / "test_result.json" for v in ("hires", "demo")}
        results = {v: json.loads(p.read_text()) for v, p in found.items() if p.is_file()}
        costs = [p for p in (folder / "cost_demo.json", folder / "cost_both.json") if p.is_file()]
        if not results or not costs:
            raise UsageError(
                f"bench glance --frontier needs {folder}/<variant>/test_result.json and {folder}/cost_demo.json"
                " (or cost_both.json): run bench glance --split test and --cost demo first"
            )
        cost = json.loads(costs[0].read_text())["demo"]
        print(f"wrote {frontier_png(results, cost, Path(a.frontier))}")
        return None
    r = bench_glance(
        rows,
        a.variant,
        a.split,
        whole_numbers(a.seeds, "bench glance --seeds"),
        a.config,
        a.out or "runs/bench_glance",
        a.set or (),
    )
    for name, row in r["rows"].items():
        modes = "  ".join(
            f"{m} {row[m]['mean']:.1f} ± {row[m]['spread']:.1f} ({row['gmacs'][m]:.4f} GMACs)"
            for m in ("single", "fused", "adaptive")
            if m in row
        )
        print(f"{name:<12} {modes}")
    return None

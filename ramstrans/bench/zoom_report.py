"""The tables and the frontier plot of ``ramstrans bench zoom --stage report`` (kept apart from the runs it reads)."""

from pathlib import Path
from typing import Any

__all__ = ["TODAY", "plot_frontier", "report_table"]

# Today's points (BENCHMARKS.md, "The demo": full training split, test, seeds 0-4), drawn for comparison.
TODAY: tuple[dict[str, Any], ...] = (
    {"label": "today: single scale", "passes": 1.0, "top1": 84.3},
    {"label": "today: adaptive 0.95", "passes": 1.88, "top1": 96.9},
    {"label": "today: fused", "passes": 2.0, "top1": 96.9},
)


def _cell(stat: dict[str, Any], digits: int = 1) -> str:
    """A statistic as "mean ± half-range (per-seed values)"."""
    values = ", ".join(f"{v:.{digits}f}" for v in stat["values"])
    return f"{stat['mean']:.{digits}f} ± {stat['spread']:.{digits}f} ({values})"


def report_table(result: dict[str, Any]) -> str:
    """A markdown table of the report: per row, validation and test top-1 and backbone passes per image, each as
    mean ± half-range (per-seed values), then the paired differences."""
    rows: dict[str, dict[str, dict[str, Any]]] = result["rows"]
    lines = ["| row | val top-1 % | test top-1 % | test passes per image |", "|---|---|---|---|"]
    for name, m in rows.items():
        lines.append(f"| {name}, single pass | {_cell(m['val_single'])} | {_cell(m['test_single'])} | 1 |")
        if "test_fused" not in m:
            continue
        lines.append(f"| {name}, fused | {_cell(m['val_fused'])} | {_cell(m['test_fused'])} | 2 |")
        for rule in ("maxprob", "gate"):
            lines.append(
                f"| {name}, adaptive ({rule}) | {_cell(m[f'val_{rule}'])} | {_cell(m[f'test_{rule}'])} | "
                f"{_cell(m[f'test_{rule}_passes'], 2)} |"
            )
        oracle = _cell(m["test_oracle_passes"], 2)
        lines.append(f"| {name}, oracle zoom (bound) | | {_cell(m['test_fused'])} | {oracle} |")
    lines += ["", "| paired difference (same seed) | metric | mean ± half-range (per seed) |", "|---|---|---|"]
    for name, diff in result["paired"].items():
        for key, stat in diff.items() if "mean" not in diff else [("test", diff)]:
            lines.append(f"| {name} | {key} | {_cell(stat)} |")
    return "\n".join(lines) + "\n"


Point = tuple[str, float, dict[str, Any], str, Any]  # label, passes per image, top-1 statistic, marker, colour


def _frontier_points(summary: dict[str, dict[str, dict[str, Any]]]) -> list[Point]:
    """(label, passes per image, test top-1 statistics, marker, colour) of every row the report has."""
    rams = summary["rams"]
    points: list[Point] = [
        ("plain ViT", 1.0, summary["vit"]["test_single"], "s", "tab:gray"),
        ("RAMS-Trans, scale 1", 1.0, rams["test_single"], "o", "tab:blue"),
        ("RAMS-Trans, fused", 2.0, rams["test_fused"], "o", "tab:blue"),
        ("adaptive, top probability", rams["test_maxprob_passes"]["mean"], rams["test_maxprob"], "D", "tab:blue"),
        ("adaptive, zoom gate", rams["test_gate_passes"]["mean"], rams["test_gate"], "P", "tab:purple"),
        ("oracle zoom (bound)", rams["test_oracle_passes"]["mean"], rams["test_fused"], "*", "tab:purple"),
        ("+ self-distillation, scale 1", 1.0, summary["sd"]["test_single"], "o", "tab:orange"),
        ("+ self-distillation, fused", 2.0, summary["sd"]["test_fused"], "o", "tab:orange"),
    ]
    if "rams_x4" in summary:
        x4 = summary["rams_x4"]
        points += [
            ("RAMS-Trans 4x steps, scale 1", 1.0, x4["test_single"], "o", "tab:green"),
            ("RAMS-Trans 4x steps, fused", 2.0, x4["test_fused"], "o", "tab:green"),
            (
                "RAMS-Trans 4x, adaptive (top probability)",
                x4["test_maxprob_passes"]["mean"],
                x4["test_maxprob"],
                "D",
                "tab:green",
            ),
        ]
    from matplotlib import colormaps

    multiples = sorted(int(k.removeprefix("student_x")) for k in summary if k.startswith("student_x"))
    for i, m in enumerate(multiples):
        shade = colormaps["Blues"](0.45 + 0.5 * i / max(1, len(multiples) - 1))  # darker for longer schedules
        points.append(
            (f"student of the fused teacher, {m}x steps", 1.0, summary[f"student_x{m}"]["test_single"], "^", shade)
        )
        if m > 1:
            points.append((f"plain ViT, {m}x steps", 1.0, summary[f"vit_x{m}"]["test_single"], "v", shade))
    return points


def plot_frontier(summary: dict[str, dict[str, dict[str, Any]]], png: Path) -> None:
    """Test top-1 against backbone passes per image for every row (mean, bar: half-range over seeds), with today's
    three points and the single-pass goal."""
    from matplotlib.figure import Figure

    from ramstrans.runtime.files import atomic_write

    points = _frontier_points(summary)
    fig = Figure(figsize=(10, 5.2))
    ax = fig.subplots()
    shared: dict[float, int] = {}
    for label, passes, stat, marker, colour in points:
        k = shared[passes] = shared.get(passes, -1) + 1
        x = passes + (0.012 * k if passes in (1.0, 2.0) else 0.0)  # spread the points that share a cost, rightwards
        ax.errorbar(
            [x],
            [stat["mean"]],
            yerr=[stat["spread"]],
            fmt=marker,
            color=colour,
            capsize=3,
            markersize=7,
            label=f"{label}: {stat['mean']:.1f} ± {stat['spread']:.1f}",
        )
    for p, offset in zip(TODAY, ((4, 4), (-40, 8), (4, -12))):
        ax.plot([p["passes"]], [p["top1"]], "x", color="black", markersize=9)
        ax.annotate(p["label"], (p["passes"], p["top1"]), fontsize=7, xytext=offset, textcoords="offset points")
    ax.axhline(TODAY[2]["top1"] - 2.0, color="gray", linestyle=":", linewidth=1)
    ax.annotate(
        "goal for one pass: today's fused - 2",
        (1.0, TODAY[2]["top1"] - 2.0),
        fontsize=7,
        xytext=(0, -10),
        textcoords="offset points",
    )
    ax.set_xlim(0.95, 2.25)
    ax.set_xlabel("backbone passes per image (points that share 1 or 2 passes are spread right to be seen)")
    ax.set_ylabel("test top-1 (%), mean over seeds")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    atomic_write(png, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))

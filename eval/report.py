"""The evaluation report: `report.md`, a static `report.html`, `summary.json` and PNGs.

* `speedup_vs_fraction.png` — the VeLO paper's Figure 1 view: per optimizer, the speedup
  over LR-tuned Adam of each task, sorted, against the fraction of tasks;
* per-family tables (median and IQM with bootstrap 95% CIs, fraction of tasks ≥ 1, 2, 4, 16);
* `curves/<task>.png` for a few tasks: each optimizer's loss curve, the best Adam run and
  the Adam envelope.

Every file is written atomically (`velojax.files.write_atomic`): a reader, or a report
interrupted midway, leaves the previous version of each file whole.
"""

from __future__ import annotations

import html
import io
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from eval import stats, suites
from eval.baselines import Baseline
from eval.runner import speedups
from velojax.files import write_atomic

MAX_CURVE_PLOTS = 6


def _fmt(x, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "–"
    return f"{x:.{digits}f}"


def _ci(summary: dict, key: str) -> str:
    value, ci = summary.get(key), summary.get(f"{key}_ci")
    return "–" if value is None else f"{value:.2f} [{ci[0]:.2f}, {ci[1]:.2f}]"


def family_tables(results: dict[str, dict[str, dict]], samples: int = stats.BOOTSTRAP_SAMPLES) -> dict:
    """{label: {family: summary}} (see `eval.stats.summarize`)."""
    return {label: stats.by_family(speedups(res), suites.family_of, samples) for label, res in results.items()}


def _save_png(fig, path: Path, dpi: int) -> None:
    """`fig` as a PNG at `path`, atomically; the figure is closed."""
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=dpi)
    finally:
        plt.close(fig)
    write_atomic(path, buffer.getvalue())


def plot_speedups(results: dict[str, dict[str, dict]], path: Path, title: str) -> None:
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for label, res in results.items():
        s = np.sort(np.array(list(speedups(res).values()), np.float64))[::-1]
        if s.size == 0:
            continue
        edges = np.linspace(0.0, 1.0, s.size + 1)  # task k covers [k/n, (k+1)/n)
        ax.stairs(np.maximum(s, 1e-3), edges, baseline=None, label=f"{label} (median {np.median(s):.2f})", lw=1.5)
    ax.axhline(1.0, color="k", lw=0.8, ls="--")
    ax.set_yscale("log")
    ax.set_xlim(0, 1)
    ax.set_xlabel("fraction of tasks")
    ax.set_ylabel("speedup over LR-tuned Adam (Adam steps / steps)")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    if ax.get_legend_handles_labels()[0]:  # no runs finished: no legend (and no warning)
        ax.legend(fontsize=8)
    fig.tight_layout()
    _save_png(fig, path, dpi=120)


def plot_curves(task: str, results: dict[str, dict[str, dict]], baseline: Baseline | None, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6.0, 3.8))
    steps = None
    for label, res in results.items():
        r = res.get(task)
        if r is None or r.get("status") != "ok":
            continue
        c = r["curve"]
        ax.plot(c["steps"], [np.nan if v is None else v for v in c["loss"]], label=label)
        steps = r["steps"]
    if baseline is not None:
        if baseline.curves is not None:
            i = baseline.best_lr_index
            ax.plot(
                baseline.curve_steps, baseline.curves[i], color="gray", lw=0.8, label=f"Adam lr={baseline.lrs[i]:g}"
            )
        ax.plot(baseline.envelope.steps, baseline.envelope.loss, color="k", ls="--", lw=1, label="Adam envelope")
    if steps:
        ax.axvline(steps, color="k", lw=0.5, ls=":")
    ax.set_xscale("symlog", linthresh=max(1, (steps or 10) // 10))
    ax.set_xlim(left=0)
    ax.set_xlabel("step")
    ax.set_ylabel("train loss")
    ax.set_title(task, fontsize=9)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    fig.tight_layout()
    _save_png(fig, path, dpi=110)


def write(
    results: dict[str, dict[str, dict]],
    out: str | Path,
    baselines: dict[str, Baseline] | None = None,
    title: str = "velojax evaluation",
    samples: int = stats.BOOTSTRAP_SAMPLES,
    notes: list[str] | None = None,
) -> Path:
    """Write the report of `results` ({label: {task: result}}) into `out`; returns the path of report.md."""
    out = Path(out)
    (out / "curves").mkdir(parents=True, exist_ok=True)
    baselines = baselines or {}
    tables = family_tables(results, samples)
    plot_speedups(results, out / "speedup_vs_fraction.png", title)
    all_tasks = sorted({t for res in results.values() for t in res})
    ok_tasks = [t for t in all_tasks if any(res.get(t, {}).get("status") == "ok" for res in results.values())]
    curve_tasks = ok_tasks[:MAX_CURVE_PLOTS]
    for t in curve_tasks:
        plot_curves(t, results, baselines.get(t), out / "curves" / f"{t}.png")

    labels = list(results)
    fam_header = ["optimizer", "family", "tasks", "median [95% CI]", "IQM [95% CI]", "≥1", "≥2", "≥4", "≥16"]
    fam_rows = []
    for label in labels:
        for family, s in tables[label].items():
            fam_rows.append(
                [label, family, str(s["n"]), _ci(s, "median"), _ci(s, "iqm")]
                + [_fmt(s.get(f"frac_ge_{t:g}")) for t in stats.THRESHOLDS]
            )
    task_header = ["task", "family", "steps"] + [f"{lab} loss" for lab in labels] + [f"{lab} speedup" for lab in labels]
    task_rows = []
    skipped = {}
    for t in all_tasks:
        rs = [results[lab].get(t, {}) for lab in labels]
        first = next(r for r in rs if r)
        if all(r.get("status") == "skipped" for r in rs if r):
            skipped[t] = first.get("reason", "skipped")
            continue
        task_rows.append(
            [t, first["family"], str(first["steps"])]
            + [_fmt(r.get("final_loss"), 4) for r in rs]
            + [_fmt(r.get("speedup")) + ("*" if r.get("speedup") == r.get("speedup_cap") else "") for r in rs]
        )

    summary = {
        "title": title,
        "families": tables,
        "skipped": skipped,
        "notes": notes or [],
        "iqm_definition": stats.IQM_DEFINITION,
    }
    write_atomic(out / "summary.json", json.dumps(summary, indent=1))

    md = [f"# {title}", ""]
    md += [f"- {n}" for n in notes or []]
    md += [
        "",
        "Speedup = (steps LR-tuned Adam needs to reach the optimizer's final loss) / (optimizer steps), "
        "from the Adam envelope (reference spec §6.3); * marks the cap (the envelope's length / steps). "
        "Intervals: percentile bootstrap over tasks.",
        "",
        stats.IQM_DEFINITION + ".",
        "",
        "![speedup over Adam vs fraction of tasks](speedup_vs_fraction.png)",
        "",
        "## Per family",
        "",
        *_md_table(fam_header, fam_rows),
        "",
        "## Per task",
        "",
        *_md_table(task_header, task_rows),
        "",
    ]
    if skipped:
        md += ["## Skipped", "", *[f"- {t}: skipped: {why}" for t, why in skipped.items()], ""]
    if curve_tasks:
        md += ["## Loss curves", ""] + [f"![{t}](curves/{t}.png)" for t in curve_tasks] + [""]
    write_atomic(out / "report.md", "\n".join(md))
    page = _html(title, notes or [], fam_header, fam_rows, task_header, task_rows, skipped, curve_tasks)
    write_atomic(out / "report.html", page)
    return out / "report.md"


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _html(title, notes, fam_header, fam_rows, task_header, task_rows, skipped, curve_tasks) -> str:
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        "<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>",
        "<img src='speedup_vs_fraction.png' alt='speedup over Adam vs fraction of tasks'>",
        f"<p>{html.escape(stats.IQM_DEFINITION)}.</p>",
        "<h2>Per family</h2>",
        _html_table(fam_header, fam_rows),
        "<h2>Per task</h2>",
        _html_table(task_header, task_rows),
    ]
    if skipped:
        items = "".join(f"<li>{html.escape(t)}: skipped: {html.escape(w)}</li>" for t, w in skipped.items())
        parts += ["<h2>Skipped</h2>", f"<ul>{items}</ul>"]
    if curve_tasks:
        parts += ["<h2>Loss curves</h2>"] + [
            f"<img src='curves/{html.escape(t)}.png' alt='{html.escape(t)}'>" for t in curve_tasks
        ]
    return "\n".join(parts + ["</body></html>"])

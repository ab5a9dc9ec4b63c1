"""Render a run summary as a Markdown table, an HTML page and an accuracy-vs-latency plot."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from edgedistill.artifacts import atomic_save

RUNTIMES = ("torch", "onnxruntime", "openvino")


def _fmt_int(n: int) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def _runtimes(summary: dict[str, Any]) -> list[str]:
    present = {rt for row in summary["models"] for rt in row["latency_ms"]}
    return [rt for rt in RUNTIMES if rt in present]


def summary_table(summary: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the results table (strings), shared by every renderer."""
    runtimes = _runtimes(summary)
    header = ["model", "precision", summary.get("metric_header", "top-1 %")]
    header += ["params", "MACs", "ONNX size"]
    header += [f"{rt} p50 / p90 ms" for rt in runtimes]
    rows = []
    for row in summary["models"]:
        cells = [
            row["name"],
            row["precision"],
            f"{row['accuracy']:.2f}",
            _fmt_int(row["params"]),
            _fmt_int(row["macs"]),
            f"{row['size_bytes'] / 1024:.1f} KiB",
        ]
        for rt in runtimes:
            lat = row["latency_ms"].get(rt)
            cells.append(f"{lat['p50']:.3f} / {lat['p90']:.3f}" if lat else "–")
        rows.append(cells)
    return header, rows


def pretrain_rows(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """(what, top-1 %) rows of the label-free pre-training's linear probes, if one ran."""
    pretrain = summary.get("pretrain") or {}
    if not pretrain:
        return []
    rows = []
    if "teacher_probe_top1" in pretrain:
        rows.append(("teacher embeddings, all labels", f"{pretrain['teacher_probe_top1']:.2f}"))
    for shots, top1 in (pretrain.get("student_probe_top1") or {}).items():
        rows.append((f"student features after {pretrain.get('term', '')}, {shots}", f"{top1:.2f}"))
    return rows


def _shown(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2f}"
    if isinstance(value, dict):
        return "; ".join(f"{k} {_shown(v)}" for k, v in value.items())
    return str(value)


def unverified_teacher_line(summary: dict[str, Any]) -> str | None:
    """The report's warning when the teacher ran unverified (``teacher_verified: false``)."""
    if summary.get("teacher_verified") is not False:
        return None
    return (
        "Teacher not verified: its card pins no sha256, so these results come from weights "
        "nobody checked (--allow-unverified-teacher; research use only)."
    )


def render_markdown(summary: dict[str, Any], training: dict[str, Any]) -> str:
    """The report as Markdown."""
    header, rows = summary_table(summary)
    env = summary.get("environment") or {}
    lines = [
        f"# edgedistill report: {summary['recipe']}",
        "",
        f"Dataset: {summary['dataset']}. Accuracy: {summary['accuracy_metric']}. Latency: batch 1, "
        f"{env.get('threads', '?')} threads, on {env.get('cpu', 'unknown CPU')}.",
        "",
        *([f"**{unverified}**", ""] if (unverified := unverified_teacher_line(summary)) else []),
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *["| " + " | ".join(r) + " |" for r in rows],
        "",
        *(
            [f"**Ship `{rec['file']}`** ({rec['model']}): {rec['reason']}.", ""]
            if (rec := summary.get("recommended"))
            else []
        ),
        "## Speed-ups (measured in the same run)",
        "",
        *[f"- {k}: **{v:.1f}×**" for k, v in summary.get("speedups", {}).items()],
        "",
    ]
    probes = pretrain_rows(summary)
    if probes:
        lines += [
            "## Label-free pre-training: linear probes (held-out groups, top-1 %)",
            "",
            "| probe | top-1 % |",
            "|---|---|",
            *[f"| {what} | {top1} |" for what, top1 in probes],
            "",
        ]
    lines += ["## Training", ""]
    for stage, metrics in training.items():
        shown = ", ".join(f"{k} = {_shown(v)}" for k, v in metrics.items())
        lines.append(f"- **{stage}**: {shown}")
    libs = ", ".join(f"{k} {v}" for k, v in (env.get("libraries") or {}).items())
    lines += [
        "",
        "## Environment",
        "",
        f"- CPU: {env.get('cpu')} ({env.get('cpu_count')} cores)",
        f"- Python {env.get('python')}; {libs}",
        "",
        "![accuracy vs latency](accuracy_vs_latency.png)",
        "",
    ]
    return "\n".join(lines)


def render_html(summary: dict[str, Any], training: dict[str, Any], plot_name: str) -> str:
    """The report as a self-contained HTML page (the plot is a sibling PNG)."""
    header, rows = summary_table(summary)
    esc = html.escape
    table = (
        "<table><thead><tr>"
        + "".join(f"<th>{esc(h)}</th>" for h in header)
        + "</tr></thead><tbody>"
    )
    for r in rows:
        table += "<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>"
    table += "</tbody></table>"
    speed = "".join(
        f"<li>{esc(k)}: <b>{v:.1f}×</b></li>" for k, v in summary.get("speedups", {}).items()
    )
    train = "".join(
        f"<li><b>{esc(s)}</b>: "
        + esc(", ".join(f"{k} = {_shown(v)}" for k, v in m.items()))
        + "</li>"
        for s, m in training.items()
    )
    probes = pretrain_rows(summary)
    probe_table = (
        "<h2>Label-free pre-training: linear probes (held-out groups, top-1 %)</h2><table>"
        + "".join(f"<tr><td>{esc(w)}</td><td>{esc(t)}</td></tr>" for w, t in probes)
        + "</table>"
        if probes
        else ""
    )
    env = summary.get("environment") or {}
    unverified = unverified_teacher_line(summary)
    warning = f'<p class="warning"><b>{esc(unverified)}</b></p>\n' if unverified else ""
    rec = summary.get("recommended") or {}
    recommendation = (
        f"<p><b>Ship <code>{esc(rec['file'])}</code></b> ({esc(rec['model'])}): "
        f"{esc(rec['reason'])}.</p>"
        if rec
        else ""
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>edgedistill report: {esc(summary["recipe"])}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}
td:first-child,th:first-child{{text-align:left}}th{{background:#f3f3f3}}</style></head><body>
<h1>edgedistill report: {esc(summary["recipe"])}</h1>
<p>Dataset: {esc(summary["dataset"])}. Accuracy: {esc(summary["accuracy_metric"])}.
Latency: batch 1, {esc(str(env.get("threads", "?")))} threads, {esc(str(env.get("cpu", "")))}.</p>
{warning}{table}
{recommendation}
{probe_table}
<h2>Speed-ups (same run)</h2><ul>{speed}</ul>
<h2>Accuracy vs latency</h2><img src="{esc(plot_name)}" alt="accuracy vs latency" width="720">
<h2>Training</h2><ul>{train}</ul>
</body></html>
"""


def render_plot(summary: dict[str, Any], path: Path) -> None:
    """Scatter of the task metric (top-1 accuracy) against batch-1 p50 latency, one marker per
    model and runtime."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    markers = {"torch": "o", "onnxruntime": "s", "openvino": "^"}
    colors = [plt.get_cmap("tab10")(i) for i in range(10)]
    fig, ax = plt.subplots(figsize=(7.2, 4.5), dpi=100)
    model_handles = []
    for i, row in enumerate(summary["models"]):
        color = colors[i % len(colors)]
        points = sorted((lat["p50"], rt) for rt, lat in row["latency_ms"].items())
        for p50, rt in points:
            ax.scatter(
                p50,
                row["accuracy"],
                marker=markers.get(rt, "x"),
                s=60,
                color=color,
                edgecolors="black",
                linewidths=0.5,
                zorder=3,
            )
        if len(points) > 1:
            ax.plot(
                [p for p, _ in points],
                [row["accuracy"]] * len(points),
                color=color,
                alpha=0.4,
                zorder=2,
            )
        model_handles.append(
            Line2D([], [], color=color, marker="o", linestyle="", label=row["name"])
        )
    runtime_handles = [
        Line2D([], [], color="grey", marker=m, linestyle="", label=rt) for rt, m in markers.items()
    ]
    first = ax.legend(handles=model_handles, loc="center right", fontsize=8, title="model")
    ax.add_artist(first)
    ax.legend(handles=runtime_handles, loc="lower right", fontsize=8, title="runtime")
    ax.set_xscale("log")
    ax.set_xlabel("latency p50, batch 1 (ms, log scale)")
    ax.set_ylabel(summary.get("metric_header", "top-1 accuracy (%)"))
    ax.set_title(f"{summary['recipe']}: accuracy vs latency")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    atomic_save(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)

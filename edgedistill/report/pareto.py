"""Accuracy-vs-latency Pareto fronts and per-device result tables (pure functions).

A deployment choice is a (model, runtime, precision) on one device. It is worth shipping only
when no other choice on the same device is both at least as fast and at least as accurate:
those choices form the Pareto front, the only rows a report needs to highlight.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from edgedistill.agent.store import Measurement


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def pareto_front(points: Sequence[Sequence[Any]]) -> list[int]:
    """Indices of the points no other point dominates, fastest first.

    A point is ``(latency, accuracy, ...)`` (anything after the first two is carried along and
    ignored). Latency is minimised and accuracy maximised: ``j`` dominates ``i`` when it is at
    least as fast and at least as accurate, and strictly better in one of the two. So of two
    points with equal latency only the more accurate one is on the front, of two with equal
    accuracy only the faster one, and exact duplicates are both on it (neither is better).
    Points whose latency or accuracy is missing or not finite are never on the front.

    Args:
        points: ``[(latency_ms, accuracy, ...), ...]``.

    Returns:
        Indices into ``points``, sorted by latency (ties by index).
    """
    valid = [i for i, p in enumerate(points) if len(p) >= 2 and _finite(p[0]) and _finite(p[1])]
    front = []
    for i in valid:
        lat_i, acc_i = float(points[i][0]), float(points[i][1])
        dominated = False
        for j in valid:
            lat_j, acc_j = float(points[j][0]), float(points[j][1])
            if lat_j <= lat_i and acc_j >= acc_i and (lat_j < lat_i or acc_j > acc_i):
                dominated = True
                break
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (float(points[i][0]), i))


def _base_precision(precision: str) -> str:
    """``"fp32 (f32 hint)"`` -> ``"fp32"``: the precision without a runtime's annotation."""
    return precision.split()[0] if precision.strip() else precision


def device_tables(
    summary_models: Iterable[dict[str, Any]], measurements: Iterable[Measurement]
) -> dict[str, list[dict[str, Any]]]:
    """Per device, one row per (model, runtime, precision, batch) with accuracy and Pareto flag.

    Accuracy and size come from the run's summary rows (the verify stage's accuracy of the
    model of that name). A device row whose precision differs from the verified model's (a
    TensorRT FP16 engine built from the FP32 ONNX model) carries the verified model's accuracy
    with ``accuracy_exact: False``: the engine was not evaluated on the test split. Where a
    combination was measured more than once (other threads or library versions) the newest
    measurement is kept. The Pareto front is computed per device and per batch size over
    (p50 latency, accuracy); rows without an accuracy are never on it.

    Args:
        summary_models: ``summary.json["models"]`` rows (``name``, ``precision``,
            ``accuracy``, ``size_bytes``).
        measurements: Store rows of this run's models, ``model_name`` set to the run's names.

    Returns:
        ``{device_id: [row, ...]}`` in order of first appearance; rows sorted by batch, then
        p50. A row: ``model``, ``runtime``, ``precision``, ``batch``, ``threads``, ``p50_ms``,
        ``p90_ms``, ``p99_ms``, ``mean_ms``, ``throughput_per_s``, ``accuracy``,
        ``accuracy_exact``, ``size_bytes``, ``engine_build_s``, ``memory_mb``, ``source``,
        ``recorded_at``, ``pareto``.
    """
    models = {str(m["name"]): m for m in summary_models}
    measurements = list(measurements)
    keys = device_keys(measurements)
    newest: dict[str, dict[tuple[str, str, str, int], Measurement]] = {}
    for m, device in zip(measurements, keys, strict=True):
        key = (m.model_name, m.runtime, m.precision, int(m.batch))
        held = newest.setdefault(device, {}).get(key)
        if held is None or m.recorded_at >= held.recorded_at:
            newest[device][key] = m
    tables: dict[str, list[dict[str, Any]]] = {}
    for device, chosen in newest.items():
        rows = [_row(m, models.get(m.model_name)) for m in chosen.values()]
        rows.sort(key=lambda r: (r["batch"], r["p50_ms"], r["model"], r["runtime"]))
        for batch in sorted({r["batch"] for r in rows}):
            same = [r for r in rows if r["batch"] == batch]
            for i in pareto_front([(r["p50_ms"], r["accuracy"]) for r in same]):
                same[i]["pareto"] = True
        tables[device] = rows
    return tables


def device_keys(measurements: Sequence[Measurement]) -> list[str]:
    """The device each measurement is tabled under: its ``device_id``, except that rows an
    agent measured on the machine that also measured locally (an agent on loopback, same
    device id) are tabled apart as ``<id>-agent``: a different process with its own settings,
    whose numbers should be compared with the local ones, not merged into them."""
    local = {m.device_id for m in measurements if m.source == "local"}
    return [
        m.device_id if m.source == "local" or m.device_id not in local else f"{m.device_id}-agent"
        for m in measurements
    ]


def _row(m: Measurement, model: dict[str, Any] | None) -> dict[str, Any]:
    accuracy = None if model is None else model.get("accuracy")
    exact = model is not None and _base_precision(m.precision) == _base_precision(
        str(model.get("precision", ""))
    )
    return {
        "model": m.model_name,
        "runtime": m.runtime,
        "precision": m.precision,
        "batch": int(m.batch),
        "threads": int(m.threads),
        "p50_ms": round(float(m.p50_ms), 4),
        "p90_ms": round(float(m.p90_ms), 4),
        "p99_ms": round(float(m.p99_ms), 4),
        "mean_ms": round(float(m.mean_ms), 4),
        "throughput_per_s": round(float(m.throughput_per_s), 1),
        "accuracy": accuracy,
        "accuracy_exact": exact,
        "size_bytes": None if model is None else model.get("size_bytes"),
        "engine_build_s": m.engine_build_s,
        "memory_mb": m.memory_mb,
        "source": m.source,
        "recorded_at": m.recorded_at,
        "pareto": False,
    }


def plot_name(device: str) -> str:
    """File name of a device's accuracy-vs-latency plot, inside the report folder."""
    return f"device-{device}.png"


def render_device_plots(
    devices: Sequence[dict[str, Any]], folder: Path, *, metric_header: str, title: str
) -> list[str]:
    """One PNG per device: accuracy against batch-1 p50 latency, Pareto front drawn.

    Each device's smallest measured batch (batch 1 whenever it was measured) is plotted: x is
    p50 latency in ms on a log axis, y the accuracy, one marker shape per runtime and one
    colour per precision; the front is a step line through its points, each labelled
    ``model (runtime, precision)``. Written atomically with matplotlib's Agg backend.

    Args:
        devices: ``summary.json["devices"]`` entries (``id``, ``name``, ``rows``).
        folder: Where the PNGs go (the report stage folder).
        metric_header: The y-axis label (the task metric).
        title: Prefix of each plot's title (the recipe name).

    Returns:
        The written file names (relative to ``folder``), in the order of ``devices``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import NullFormatter

    from edgedistill.artifacts import atomic_save

    marker_cycle = ("o", "s", "^", "D", "v", "P", "X", "*")
    colors = {p: plt.get_cmap("tab10")(i) for i, p in enumerate(("fp32", "fp16", "bf16", "int8"))}
    written = []
    for device in devices:
        rows = [r for r in device["rows"] if _finite(r["accuracy"])]
        if rows:
            batch = min(r["batch"] for r in rows)
            rows = [r for r in rows if r["batch"] == batch]
        runtimes = sorted({r["runtime"] for r in rows})
        markers = {rt: marker_cycle[i % len(marker_cycle)] for i, rt in enumerate(runtimes)}
        fig, ax = plt.subplots(figsize=(7.2, 4.5), dpi=100)
        for r in rows:
            ax.scatter(
                r["p50_ms"],
                r["accuracy"],
                marker=markers[r["runtime"]],
                s=70 if r["pareto"] else 40,
                color=colors.get(_base_precision(r["precision"]), "grey"),
                edgecolors="black",
                linewidths=1.2 if r["pareto"] else 0.4,
                zorder=3,
            )
        front = sorted((r for r in rows if r["pareto"]), key=lambda r: r["p50_ms"])
        if front:
            ax.step(
                [r["p50_ms"] for r in front],
                [r["accuracy"] for r in front],
                where="post",
                color="black",
                alpha=0.5,
                zorder=2,
                label="Pareto front",
            )
            for i, r in enumerate(front):
                ax.annotate(  # alternate above/below: neighbours on a front are often close
                    f"{r['model']} ({r['runtime']}, {r['precision']})",
                    (r["p50_ms"], r["accuracy"]),
                    textcoords="offset points",
                    xytext=(5, 5 if i % 2 == 0 else -12),
                    fontsize=7,
                )
        handles = [
            Line2D([], [], color="grey", marker=m, linestyle="", label=rt)
            for rt, m in markers.items()
        ]
        handles += [
            Line2D([], [], color=c, marker="o", linestyle="", label=p)
            for p, c in colors.items()
            if any(_base_precision(r["precision"]) == p for r in rows)
        ]
        if handles:
            ax.legend(handles=handles, loc="lower right", fontsize=8)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # minor log labels overlap the major ones
        which = f"batch {rows[0]['batch']}" if rows else "no measurements with an accuracy"
        ax.set_xlabel(f"latency p50, {which} (ms, log scale)")
        ax.set_ylabel(metric_header)
        ax.set_title(f"{title} on {device['name']}")
        ax.grid(True, which="both", alpha=0.3)
        fig.tight_layout()
        name = plot_name(str(device["id"]))
        atomic_save(folder / name, partial(_save_png, fig))
        plt.close(fig)
        written.append(name)
    return written


def _save_png(fig: Any, path: Path) -> None:
    fig.savefig(path, format="png")


__all__ = ["device_keys", "device_tables", "pareto_front", "plot_name", "render_device_plots"]

"""Per-device results: local latency entries as store rows, and the report's Devices section.

The profile stage measures on the machine that runs the chain; device agents measure the same
model files on the boards they will ship to. Both land as
:class:`~edgedistill.agent.store.Measurement` rows in one results store, keyed by the model
file's sha256, and the report turns them into one table and one Pareto plot per device.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from edgedistill.agent.store import Measurement, device_id
from edgedistill.report.pareto import device_keys, device_tables, plot_name

# The libraries whose versions a runtime's numbers depend on (looked up in the environment's
# ``libraries``); a measurement is only comparable with another of the same versions.
RUNTIME_LIBRARIES: dict[str, tuple[str, ...]] = {
    "torch": ("torch",),
    "torch-cuda": ("torch",),
    "torch-tensorrt": ("torch", "torch-tensorrt", "tensorrt"),
    "onnxruntime": ("onnxruntime",),
    "onnxruntime-cuda": ("onnxruntime-gpu",),
    "onnxruntime-trt": ("onnxruntime-gpu", "tensorrt"),
    "openvino": ("openvino",),
    "tensorrt": ("tensorrt",),
}
ENVIRONMENT_KEYS = ("machine", "cpu", "cpu_count", "platform", "python", "gpu", "jetson")


def local_device_name(environment: Mapping[str, Any]) -> str:
    """``"host (CPU model)"``: the name of the machine that ran the chain."""
    return f"{environment.get('machine') or 'unknown'} ({environment.get('cpu') or 'unknown CPU'})"


def runtime_versions(runtime: str, environment: Mapping[str, Any]) -> dict[str, str]:
    """The versions of ``runtime``'s libraries (and edgedistill's) from an environment record."""
    libraries = environment.get("libraries") or {}
    names = ("edgedistill", *RUNTIME_LIBRARIES.get(runtime, (runtime,)))
    return {name: str(libraries[name]) for name in names if name in libraries}


def local_measurements(
    entries: Iterable[Mapping[str, Any]],
    *,
    model_sha256: Mapping[str, str],
    environment: Mapping[str, Any],
    run_id: str,
    threads: int,
) -> list[Measurement]:
    """Store rows of the profile stage's ``latency.json`` entries (one per model, runtime, batch).

    Args:
        entries: ``latency.json["entries"]``: ``model``, ``runtime``, ``precision``, ``batch``,
            ``p50``, ``p90``, ``p99``, ``mean`` (ms per call).
        model_sha256: Model name -> the sha256 that identifies it (see the profile stage).
            Entries of a model missing here are left out.
        environment: The profile's environment record (:func:`edgedistill.bench.env.environment`).
        run_id: The run folder's name.
        threads: The intra-op threads the runtimes were given.

    Returns:
        One :class:`Measurement` per entry, ``source="local"``; throughput is samples per
        second at the median latency (``batch * 1000 / p50``).
    """
    env = dict(environment)
    dev, name = device_id(env), local_device_name(env)
    rows = []
    for e in entries:
        sha = model_sha256.get(str(e["model"]))
        if sha is None:
            continue
        batch, p50 = int(e["batch"]), float(e["p50"])
        rows.append(
            Measurement(
                model_sha256=sha,
                model_name=str(e["model"]),
                device_id=dev,
                device_name=name,
                runtime=str(e["runtime"]),
                precision=str(e["precision"]).split()[0],  # "fp32 (f32 hint)" -> "fp32"
                batch=batch,
                threads=int(threads),
                p50_ms=p50,
                p90_ms=float(e["p90"]),
                p99_ms=float(e["p99"]),
                mean_ms=float(e.get("mean", p50)),
                throughput_per_s=batch * 1000.0 / p50 if p50 > 0 else 0.0,
                versions=runtime_versions(str(e["runtime"]), env),
                environment=env,
                run_id=run_id,
                source="local",
            )
        )
    return rows


def environment_summary(environment: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of an environment record a reader needs to trust a number (no long lists)."""
    return {k: environment[k] for k in ENVIRONMENT_KEYS if environment.get(k) is not None}


def device_sections(
    summary_models: Sequence[dict[str, Any]], measurements: Sequence[Measurement]
) -> list[dict[str, Any]]:
    """``summary.json["devices"]``: one entry per device that measured this run's models.

    Each entry: ``id``, ``name``, ``source`` ("local" or the agent URL of its newest row),
    ``environment`` (:func:`environment_summary` plus the libraries of its newest row),
    ``plot`` (the PNG's file name in the report folder) and ``rows``
    (:func:`~edgedistill.report.pareto.device_tables`). The local device comes first, then
    the others by name.
    """
    tables = device_tables(summary_models, measurements)
    newest: dict[str, Measurement] = {}
    for m, key in zip(measurements, device_keys(measurements), strict=True):
        if key not in newest or m.recorded_at >= newest[key].recorded_at:
            newest[key] = m
    sections = []
    for dev, rows in tables.items():
        m = newest[dev]
        env = environment_summary(m.environment)
        env["libraries"] = dict(m.environment.get("libraries") or m.versions)
        sections.append(
            {
                "id": dev,
                "name": m.device_name,
                "source": m.source,
                "environment": env,
                "plot": plot_name(dev),
                "rows": rows,
            }
        )
    sections.sort(key=lambda s: (s["source"] != "local", s["name"], s["id"]))
    return sections


_HEADER = ["model", "runtime", "precision", "{metric}", "size", "p50 ms", "p90 ms", "p99 ms"]
_HEADER += ["throughput /s", "Pareto"]


def _table(device: dict[str, Any], metric_header: str) -> tuple[list[str], list[list[str]]]:
    """Header and string cells of a device's batch-1 (smallest batch) rows."""
    header = [h.replace("{metric}", metric_header) for h in _HEADER]
    rows = device["rows"]
    if rows:
        batch = min(r["batch"] for r in rows)
        rows = [r for r in rows if r["batch"] == batch]
    cells = []
    for r in rows:
        acc = r["accuracy"]
        acc_text = "–" if acc is None else f"{acc:.2f}" + ("" if r["accuracy_exact"] else "*")
        size = r["size_bytes"]
        cells.append(
            [
                r["model"],
                r["runtime"],
                r["precision"],
                acc_text,
                "–" if size is None else f"{size / 1024:.1f} KiB",
                f"{r['p50_ms']:.3f}",
                f"{r['p90_ms']:.3f}",
                f"{r['p99_ms']:.3f}",
                f"{r['throughput_per_s']:.0f}",
                "★" if r["pareto"] else "",
            ]
        )
    return header, cells


def _describe(device: dict[str, Any]) -> str:
    env = device["environment"]
    where = "this machine" if device["source"] == "local" else f"agent {device['source']}"
    parts = [f"measured on {where}"]
    if env.get("cpu"):
        parts.append(f"CPU {env['cpu']}")
    if env.get("gpu"):
        parts.append(f"GPU {env['gpu']}")
    libs = ", ".join(f"{k} {v}" for k, v in (env.get("libraries") or {}).items())
    if libs:
        parts.append(libs)
    return "; ".join(str(p) for p in parts)


def _batch_of(device: dict[str, Any]) -> str:
    rows = device["rows"]
    return str(min(r["batch"] for r in rows)) if rows else "1"


def render_devices_markdown(devices: Sequence[dict[str, Any]], metric_header: str) -> str:
    """The report's "Devices" section in Markdown: a table and the plot of every device."""
    if not devices:
        return ""
    lines = [
        "## Devices",
        "",
        "Latency of this run's models on every device that measured them (batch-1 rows; every "
        "batch size is in `summary.json` under `devices`). ★: on the device's Pareto front "
        "(nothing else there is both faster and more accurate). *: accuracy of the verified "
        "model the engine was built from, not of the engine itself.",
        "",
    ]
    for device in devices:
        header, cells = _table(device, metric_header)
        lines += [
            f"### {device['name']} (`{device['id']}`)",
            "",
            f"{_describe(device)}. Batch {_batch_of(device)}.",
            "",
            "| " + " | ".join(header) + " |",
            "|" + "---|" * len(header),
            *["| " + " | ".join(c) + " |" for c in cells],
            "",
            f"![{device['name']}: accuracy vs latency]({device['plot']})",
            "",
        ]
    return "\n".join(lines)


def render_devices_html(devices: Sequence[dict[str, Any]], metric_header: str) -> str:
    """The same section as an HTML fragment (inserted before ``</body>`` of the report)."""
    if not devices:
        return ""
    esc = html.escape
    parts = [
        "<h2>Devices</h2><p>Batch-1 rows; every batch size is in <code>summary.json</code> "
        "(<code>devices</code>). ★ Pareto front; * accuracy of the verified model the engine "
        "was built from.</p>"
    ]
    for device in devices:
        header, cells = _table(device, metric_header)
        body = ""
        for c in cells:
            mark = ' class="pareto" style="font-weight:bold"' if c[-1] else ""
            body += f"<tr{mark}>" + "".join(f"<td>{esc(x)}</td>" for x in c) + "</tr>"
        parts.append(
            f"<h3>{esc(device['name'])} (<code>{esc(device['id'])}</code>)</h3>"
            f"<p>{esc(_describe(device))}. Batch {esc(_batch_of(device))}.</p>"
            "<table><thead><tr>"
            + "".join(f"<th>{esc(h)}</th>" for h in header)
            + f"</tr></thead><tbody>{body}</tbody></table>"
            f'<img src="{esc(device["plot"])}" alt="{esc(device["name"])}: accuracy vs latency"'
            ' width="720">'
        )
    return "\n".join(parts) + "\n"


__all__ = [
    "RUNTIME_LIBRARIES",
    "device_sections",
    "environment_summary",
    "local_device_name",
    "local_measurements",
    "render_devices_html",
    "render_devices_markdown",
    "runtime_versions",
]

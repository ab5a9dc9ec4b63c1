"""The ``report`` stage: summary.json (one row per model), Markdown, HTML and a plot; a table
and a Pareto plot per device from the run's results store; and :func:`refresh_report`, which
re-runs only this stage of a finished run when a device agent's rows arrive."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from edgedistill.agent.store import Measurement, ResultsStore
from edgedistill.artifacts import (
    atomic_write_json,
    atomic_write_text,
    read_json,
    sha256_file,
    sha256_json,
)
from edgedistill.config import Recipe
from edgedistill.errors import StageError
from edgedistill.metrics import count_macs, count_params
from edgedistill.pipeline.context import (
    MANIFEST,
    RunContext,
    StageOutcome,
    write_json_if_changed,
)
from edgedistill.pipeline.stages.export import (
    DeployedModel,
    deployed_models,
    input_dtype,
    torch_models,
)
from edgedistill.report.devices import (
    device_sections,
    local_measurements,
    render_devices_html,
    render_devices_markdown,
)
from edgedistill.report.pareto import render_device_plots
from edgedistill.report.render import render_html, render_markdown, render_plot
from edgedistill.report.sensitivity import add_sensitivity

UPSTREAM = ("pretrain", "distill", "prune", "export", "quantize", "verify", "profile", "bundle")
RESULTS_STORE = "results.sqlite"
RECIPE_FILE = "recipe.json"  # the validated recipe, so a finished run can be re-entered
SENSITIVITY = "sensitivity.json"  # the quantize stage's per-layer INT8 table, when written


def latency_b1(ctx: RunContext) -> dict[str, dict[str, dict[str, float]]]:
    """{model: {runtime: {p50, p90, p99}}} at batch 1 from the profile stage."""
    if "profile" not in ctx.manifests:
        return {}
    data = read_json(ctx.output("profile", "latency.json"))
    out: dict[str, dict[str, dict[str, float]]] = {}
    for e in data["entries"]:
        if e["batch"] == 1:
            out.setdefault(e["model"], {})[e["runtime"]] = {k: e[k] for k in ("p50", "p90", "p99")}
    return out


def latency_comparison(
    ctx: RunContext, a: str, b: str, runtime: str = "onnxruntime"
) -> dict[str, Any] | None:
    """The profile stage's interleaved comparison of model ``b`` against ``a`` on ``runtime``
    at batch 1 (a ``latency.json["comparisons"]`` row), or None when there is none (no
    profile stage, or a latency.json written before comparisons existed)."""
    if "profile" not in ctx.manifests:
        return None
    data = read_json(ctx.output("profile", "latency.json"))
    for row in data.get("comparisons", []):
        if row["models"] == [a, b] and row["runtimes"] == [runtime, runtime] and row["batch"] == 1:
            return dict(row)
    return None


def _recommendation(ctx: RunContext) -> dict[str, Any]:
    """Which bundled model to ship and why, as the bundle stage decided it, with the numbers
    the decision rests on: the interleaved INT8-vs-FP32 comparison in ONNX Runtime (``ratio``
    = p50 INT8 / p50 FP32, its interval, ``decision``: faster / slower / within_noise, and
    ``basis``) when the profile stage made one."""
    bundle = ctx.manifests.get("bundle")
    if bundle is None:
        return {}
    metrics = bundle["metrics"]
    rec: dict[str, Any] = {
        "file": metrics["recommended"],
        "model": metrics["model"],
        "reason": metrics["reason"],
    }
    fp32 = str(metrics["model"]).removesuffix("-int8")
    comparison = latency_comparison(ctx, fp32, f"{fp32}-int8")
    if comparison is None:  # no INT8 model, or profiled before comparisons existed
        return rec
    rec.update(
        {
            "basis": "interleaved comparison",
            "runtime": comparison["runtime"],
            "ratio": comparison["ratio"],
            "ci_low": comparison["ci_low"],
            "ci_high": comparison["ci_high"],
            "confidence": comparison["confidence"],
            "decision": comparison["decision"],
            "samples": comparison["samples"],
        }
    )
    return rec


def _latency_checks(ctx: RunContext) -> dict[str, Any]:
    """``latency_warning`` (one line when the machine looked busy while profiling, else None)
    and ``latency_comparisons`` (every interleaved comparison) from latency.json."""
    if "profile" not in ctx.manifests:
        return {"latency_warning": None, "latency_comparisons": []}
    data = read_json(ctx.output("profile", "latency.json"))
    return {
        "latency_warning": data.get("load_warning"),
        "latency_comparisons": data.get("comparisons", []),
    }


def build_summary(ctx: RunContext) -> dict[str, Any]:
    """The machine-readable summary: one row per model (see README, "summary.json")."""
    verify = read_json(ctx.output("verify", "verify.json"))["models"]
    latency = latency_b1(ctx)
    sweep: dict[str, list[dict[str, Any]]] = {}
    profile_env: dict[str, Any] = {}
    if "profile" in ctx.manifests:
        data = read_json(ctx.output("profile", "latency.json"))
        profile_env = data["environment"]
        for e in data["entries"]:
            sweep.setdefault(e["model"], []).append(
                {
                    k: e[k]
                    for k in (
                        "runtime",
                        "precision",
                        "batch",
                        "p50",
                        "p90",
                        "p99",
                        "per_sample_p50",
                    )
                }
            )
    modules = torch_models(ctx)
    task = ctx.task
    shape = task.input.shape
    dtype = input_dtype(ctx)
    rows = []
    for model in deployed_models(ctx):
        base = modules[model.source or model.name]
        rows.append(
            {
                "name": model.name,
                "precision": model.precision,
                "params": count_params(base),
                "macs": count_macs(base, shape, dtype=dtype),
                "size_bytes": _size_bytes(model, base),
                "accuracy": round(verify[model.name]["top1"], 2),
                "latency_ms": latency.get(model.name, {}),
                "latency_sweep_ms": sweep.get(model.name, []),
                "onnx": None if model.onnx is None else str(model.onnx.relative_to(ctx.out)),
            }
        )
    speedups = {}
    # Baseline: the teacher as a user runs it today — torch eager, or ONNX Runtime for an
    # ONNX teacher.
    teacher = latency.get("teacher", {})
    base_runtime = "torch" if "torch" in teacher else "onnxruntime"
    base_ms = teacher.get(base_runtime, {}).get("p50")
    for row in rows:
        ort = row["latency_ms"].get("onnxruntime", {}).get("p50")
        if base_ms and ort and not (row["name"] == "teacher" and base_runtime == "onnxruntime"):
            key = f"{row['name']} (onnxruntime) vs teacher ({base_runtime}), batch 1 p50"
            speedups[key] = round(base_ms / ort, 2)
    return {
        "recipe": ctx.recipe.name,
        "dataset": task.name,
        "modality": task.modality,
        "metric": task.metric,
        "metric_header": task.metric_info.header,
        "accuracy_metric": _metric_sentence(task),
        # False: the teacher card pins no sha256 (--allow-unverified-teacher); None: no card.
        "teacher_verified": ctx.teacher_verified,
        **_pretrain_summary(ctx),
        "models": rows,
        "speedups": speedups,
        "gates": ctx.recipe.gates.model_dump(mode="json"),
        "environment": profile_env,
        "bundle": str(ctx.stage_dir("bundle") / "app"),
        "recommended": _recommendation(ctx),
        **_latency_checks(ctx),
        "report": str(ctx.stage_dir("report") / "report.html"),
    }


def _size_bytes(model: Any, module: Any) -> int:
    """The ONNX file's size; for a torch-only teacher, its float32 weights (4 bytes each)."""
    if model.onnx is not None:
        return int(model.onnx.stat().st_size)
    return 4 * count_params(module)


def _metric_sentence(task: Any) -> str:
    """What the accuracy column holds, in words ("top-1 % on the 10000 held-out samples ...")."""
    where = f"on the {len(task.y_test)} held-out samples (ONNX Runtime)"
    if task.metric == "top1":
        return f"top-1 % {where}"
    return f"{task.metric}: {task.metric_info.describe} {where}"


def _pretrain_summary(ctx: RunContext) -> dict[str, Any]:
    """The pre-training's probe results, rounded and named, when a pretrain stage ran."""
    metrics = ctx.manifests.get("pretrain", {}).get("metrics", {})
    if not metrics.get("enabled"):
        return {}
    keep = ("term", "teacher_probe_top1", "student_probe_top1", "epochs", "windows")
    return {"pretrain": {k: metrics[k] for k in keep if k in metrics}}


# ---- the results store: written by the profile stage, read here --------------------------
def store_path(ctx: RunContext) -> Path:
    """The run's results store: ``profile.store`` when set, else ``<run>/results.sqlite``."""
    return ctx.recipe.profile.store or ctx.out / RESULTS_STORE


def model_sha256s(ctx: RunContext, models: list[DeployedModel]) -> dict[str, str]:
    """The sha256 that identifies each model in the results store, by model name.

    A model with an ONNX file is identified by that file's sha256 for every runtime, torch
    included (the torch row measures the same weights): an agent that measures the file on
    another device then reports the same id. A model without one (a torch-only teacher) is
    identified by the teacher's weights hash, any other by a hash of its state dict.
    """
    known: dict[str, str] = {}
    for stage in ("export", "quantize"):
        for name, digest in ctx.manifests.get(stage, {}).get("outputs", {}).items():
            known[str(ctx.stage_dir(stage) / name)] = digest
    shas = {}
    for model in models:
        if model.onnx is not None:
            shas[model.name] = known.get(str(model.onnx)) or sha256_file(model.onnx)
        elif model.name == "teacher" and ctx.has_teacher:
            shas[model.name] = ctx.teacher.weights_sha256
        elif (module := model.torch_model(ctx)) is not None:
            shas[model.name] = _state_sha256(module)
    return shas


def _state_sha256(module: torch.nn.Module) -> str:
    """sha256 over a module's state dict: every tensor's name, dtype, shape and bytes."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def record_measurements(
    ctx: RunContext, models: list[DeployedModel], latency: dict[str, Any]
) -> int:
    """Append the profile stage's measurements to the results store (run_id: the run folder's
    name, source "local") and keep the recipe next to them; returns the number of rows added.

    Called from the profile stage's body, so a skipped profile appends nothing.
    """
    atomic_write_json(ctx.out / RECIPE_FILE, ctx.recipe.model_dump(mode="json"))
    rows = local_measurements(
        latency["entries"],
        model_sha256=model_sha256s(ctx, models),
        environment=latency["environment"],
        run_id=ctx.out.name,
        threads=int(latency["threads"]),
    )
    return ResultsStore(store_path(ctx)).add(rows)


def store_rows(ctx: RunContext) -> list[Measurement]:
    """The newest store rows recorded for this run (run_id: the run folder's name), any device.

    Read without creating the store: a run that was never profiled has none.
    """
    path = store_path(ctx)
    if not path.is_file():
        return []
    return ResultsStore(path).latest(run_id=ctx.out.name)


def _devices(
    ctx: RunContext, summary: dict[str, Any], rows: list[Measurement]
) -> list[dict[str, Any]]:
    """``summary.json["devices"]``: rows of this run's model files (matched by sha256; a row
    of an earlier export with the same run folder is left out), named as in this run."""
    names: dict[str, str] = {}
    for name, sha in model_sha256s(ctx, deployed_models(ctx)).items():
        names.setdefault(sha, name)
    ours = [
        dataclasses.replace(m, model_name=names[m.model_sha256])
        for m in rows
        if m.model_sha256 in names
    ]
    return device_sections(summary["models"], ours)


def stage_report(ctx: RunContext) -> dict[str, Any]:
    """summary.json at the run root, report.md + report.html + accuracy-vs-latency PNG, and a
    table and a Pareto plot per device that measured the run's models (the results store)."""
    upstream = [
        s
        for s in ("pretrain", "distill", "prune", "verify", "profile", "bundle")
        if s in ctx.manifests
    ]
    inputs: dict[str, Any] = ctx.output_hashes(*upstream)
    # Rows a device agent adds after the run change this digest, so the report re-runs then.
    rows = store_rows(ctx)
    inputs["store"] = sha256_json([m.to_dict() for m in rows]) if rows else None
    sensitivity = ctx.manifests.get("quantize", {}).get("outputs", {}).get(SENSITIVITY)
    if sensitivity:  # only runs that wrote the table: other runs keep their fingerprint
        inputs[f"quantize/{SENSITIVITY}"] = sensitivity
    # Not an input of any model, but the summary reports it: a change re-renders the report.
    inputs["allow_unverified_teacher"] = ctx.allow_unverified_teacher
    inputs["teacher_verified"] = ctx.teacher_verified

    def body(stage_dir: Path, fingerprint: str) -> StageOutcome:
        summary = build_summary(ctx)
        summary["devices"] = _devices(ctx, summary, rows)
        atomic_write_json(stage_dir / "summary.json", summary)
        render_plot(summary, stage_dir / "accuracy_vs_latency.png")
        plots = render_device_plots(
            summary["devices"],
            stage_dir,
            metric_header=summary.get("metric_header", "top-1 %"),
            title=summary["recipe"],
        )
        training: dict[str, Any] = {
            s: ctx.manifests[s]["metrics"]
            for s in ("pretrain", "distill", "prune")
            if s in ctx.manifests and ctx.manifests[s]["metrics"].get("enabled", True)
        }
        header = summary.get("metric_header", "top-1 %")
        markdown = render_markdown(summary, training)
        markdown += "\n" + render_devices_markdown(summary["devices"], header)
        page = render_html(summary, training, "accuracy_vs_latency.png")
        page = page.replace("</body>", render_devices_html(summary["devices"], header) + "</body>")
        markdown, page = add_sensitivity(markdown, page, ctx.stage_dir("quantize") / SENSITIVITY)
        atomic_write_text(stage_dir / "report.md", markdown)
        atomic_write_text(stage_dir / "report.html", page)
        return StageOutcome(
            ["summary.json", "report.md", "report.html", "accuracy_vs_latency.png", *plots],
            {"models": len(summary["models"]), "devices": len(summary["devices"])},
        )

    manifest = ctx.run_stage("report", inputs, body)
    # The root summary.json is a copy users gate CI on, checked even when the stage skipped:
    # its paths are this folder's (a run folder copied elsewhere points at its own bundle),
    # and it is written only when it differs, so an unchanged re-run writes nothing.
    summary = read_json(ctx.stage_dir("report") / "summary.json")
    summary["bundle"] = str(ctx.stage_dir("bundle") / "app")
    summary["report"] = str(ctx.stage_dir("report") / "report.html")
    write_json_if_changed(ctx.out / "summary.json", summary)
    write_json_if_changed(ctx.out / RECIPE_FILE, ctx.recipe.model_dump(mode="json"))
    return manifest


def refresh_report(
    run_dir: Path,
    *,
    recipe: Recipe | None = None,
    console: Console | None = None,
    allow_unverified_teacher: bool = False,
) -> RunContext:
    """Re-run only the report stage of a finished run, e.g. after a device's rows arrived.

    The finished stages are taken from their manifests in the run folder (nothing upstream is
    re-checked against the recipe or re-run); a manifest whose outputs changed on disk, or
    whose recorded inputs are not its upstream stage's current outputs (a stale stage left
    from an earlier chain), is ignored. The report re-runs when its inputs changed — in
    particular when the results store gained rows for this run.

    Args:
        run_dir: The run folder.
        recipe: The run's recipe; default: the ``recipe.json`` the run wrote.
        console: Where progress goes.
        allow_unverified_teacher: As for :func:`~edgedistill.pipeline.run.run_pipeline`
            (the run's teacher card has no sha256).

    Returns:
        The context: ``executed == ["report"]`` when the report was rewritten.

    Raises:
        StageError: The folder holds no finished run (no recipe.json, export or verify).
    """
    run_dir = Path(run_dir).resolve()
    if recipe is None:
        path = run_dir / RECIPE_FILE
        if not path.is_file():
            raise StageError(
                f"{run_dir} has no {RECIPE_FILE}: run the chain into it first "
                f"(edgedistill profile RECIPE --out {run_dir})"
            )
        recipe = Recipe.from_dict(read_json(path), source=str(path))
    ctx = RunContext(
        recipe,
        run_dir,
        console=console,
        version=_package_version(),
        allow_unverified_teacher=allow_unverified_teacher,
    )
    for stage in UPSTREAM:
        manifest_path = ctx.stage_dir(stage) / MANIFEST
        if not manifest_path.is_file():
            continue
        manifest = read_json(manifest_path)
        if _consistent(manifest, ctx.manifests) and RunContext._outputs_intact(
            ctx.stage_dir(stage), manifest
        ):
            ctx.manifests[stage] = manifest
    missing = [s for s in ("distill", "export", "verify") if s not in ctx.manifests]
    if missing:
        raise StageError(
            f"{run_dir}: stage(s) {', '.join(missing)} not finished; run "
            f"`edgedistill profile RECIPE --out {run_dir}` first"
        )
    stage_report(ctx)
    return ctx


def _consistent(manifest: dict[str, Any], finished: dict[str, dict[str, Any]]) -> bool:
    """Whether every upstream output a manifest recorded as input ("stage/file": sha256) is
    what that finished stage holds now."""
    for key, digest in manifest.get("inputs", {}).items():
        stage, sep, name = str(key).partition("/")
        if not sep or stage not in UPSTREAM:
            continue
        if finished.get(stage, {}).get("outputs", {}).get(name) != digest:
            return False
    return True


def _package_version() -> str:
    """The installed edgedistill version, as :func:`run_pipeline` puts it in fingerprints."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("edgedistill")
    except PackageNotFoundError:  # running from a source tree without installing
        return "0+unknown"


__all__ = [
    "build_summary",
    "latency_b1",
    "latency_comparison",
    "model_sha256s",
    "record_measurements",
    "refresh_report",
    "stage_report",
    "store_path",
    "store_rows",
]

"""The ``export`` stage (ONNX with a dynamic batch, OpenVINO IR when installed) and the list
of deployed models every later stage walks (:func:`deployed_models`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgedistill.artifacts import atomic_copy
from edgedistill.errors import MissingDependencyError
from edgedistill.export.onnx import export_onnx
from edgedistill.export.openvino import export_openvino, openvino_available
from edgedistill.pipeline.context import RunContext, StageOutcome
from edgedistill.progress import progress_bar
from edgedistill.students.io import load_model


@dataclass(frozen=True)
class DeployedModel:
    """One row of the results: a model and where each of its forms lives."""

    name: str
    precision: str  # "fp32" or "int8"
    onnx: Path | None  # None: a teacher that runs only in torch (see is_exportable)
    openvino: Path | None
    source: str | None  # the FP32 model an INT8 model was made from

    def torch_model(self, ctx: RunContext) -> nn.Module | None:
        """The torch module behind an FP32 model (None for INT8 ONNX-only models)."""
        if self.precision != "fp32":
            return None
        if self.name == "teacher":
            # An ONNX teacher has no torch form: its export is the file itself.
            return None if is_onnx_model(ctx.teacher.model) else ctx.teacher.model
        stage = "distill" if self.name == "student" else "prune"
        return load_model(ctx.stage_dir(stage), self.name)


def is_exportable(model: nn.Module) -> bool:
    """Whether ``model`` can become one ONNX graph. A teacher that runs ONNX Runtime sessions
    or a tokenizer inside its forward (``exportable = False``: the speech embedding, text
    teachers) stays a torch-only row: verified and profiled in torch, never exported."""
    return bool(getattr(model, "exportable", True))


def is_onnx_model(model: nn.Module) -> bool:
    """Whether ``model`` is an ONNX file behind a module (an ONNX teacher)."""
    return getattr(model, "onnx_path", None) is not None


def torch_models(ctx: RunContext) -> dict[str, nn.Module]:
    """The FP32 torch models of this run, by name (teacher when the run has a teacher over
    the task's input, student, student-pruned)."""
    models: dict[str, nn.Module] = {"teacher": ctx.teacher.model} if ctx.has_teacher else {}
    models["student"] = load_model(ctx.stage_dir("distill"), "student")
    if ctx.recipe.prune.enabled:
        models["student-pruned"] = load_model(ctx.stage_dir("prune"), "student-pruned")
    return models


def deployed_models(ctx: RunContext) -> list[DeployedModel]:
    """Every exported model of the run, FP32 first, then their INT8 versions."""
    export_dir, quant_dir = ctx.stage_dir("export"), ctx.stage_dir("quantize")
    export_outputs = ctx.manifests["export"]["outputs"]
    rows = []
    for name in ctx.manifests["export"]["metrics"]["models"]:
        xml = f"{name}.xml"
        onnx = f"{name}.onnx"
        rows.append(
            DeployedModel(
                name,
                "fp32",
                export_dir / onnx if onnx in export_outputs else None,
                export_dir / xml if xml in export_outputs else None,
                None,
            )
        )
    quant = ctx.manifests.get("quantize")
    if quant is not None:
        for source in quant["metrics"].get("models", []):
            rows.append(
                DeployedModel(
                    f"{source}-int8", "int8", quant_dir / f"{source}-int8.onnx", None, source
                )
            )
    return rows


def input_dtype(ctx: RunContext) -> torch.dtype:
    """The torch dtype of the model input (int64 token ids, else float32)."""
    return torch.int64 if ctx.task.input.dtype == "int64" else torch.float32


def _want_openvino(ctx: RunContext) -> bool:
    choice = ctx.recipe.export.openvino
    if choice == "no":
        return False
    if choice == "yes" and not openvino_available():
        raise MissingDependencyError("openvino", "openvino", "export.openvino: yes")
    return openvino_available()


def stage_export(ctx: RunContext) -> dict[str, Any]:
    """ONNX (dynamic batch) for teacher, student and pruned student; OpenVINO IR when installed."""
    cfg = ctx.recipe.export
    use_ov = _want_openvino(ctx)
    upstream = ("distill", "prune") if ctx.recipe.prune.enabled else ("distill",)
    inputs = {
        **ctx.output_hashes(*upstream),
        "teacher": ctx.teacher.weights_sha256 if ctx.has_teacher else None,
        "export": cfg.model_dump(mode="json"),
        "openvino": use_ov,
    }

    def body(stage_dir: Path, fingerprint: str) -> StageOutcome:
        outputs, sizes = [], {}
        models = torch_models(ctx)
        with progress_bar(ctx.console, "export", len(models) * (2 if use_ov else 1)) as advance:
            for name, model in models.items():
                path = stage_dir / f"{name}.onnx"
                if not is_exportable(model):
                    advance(2 if use_ov else 1, f"{name} (torch only)")
                    continue
                if is_onnx_model(model):  # an ONNX teacher: its export is the file itself
                    atomic_copy(Path(model.onnx_path), path)  # type: ignore[arg-type]
                else:
                    to_deploy = getattr(model, "to_deploy", None)
                    deploy = to_deploy() if callable(to_deploy) else model
                    export_onnx(
                        deploy,
                        ctx.task.input.shape,
                        path,
                        opset=cfg.opset,
                        dynamic_batch=cfg.dynamic_batch,
                        input_dtype=input_dtype(ctx),
                    )
                outputs.append(path.name)
                sizes[name] = path.stat().st_size
                advance(1, name)
                if use_ov:
                    xml = export_openvino(path, stage_dir / f"{name}.xml")
                    outputs += [xml.name, xml.with_suffix(".bin").name]
                    advance(1, f"{name} (OpenVINO)")
        torch_only = [name for name, model in models.items() if not is_exportable(model)]
        return StageOutcome(
            outputs,
            {
                "models": list(models),
                "onnx_bytes": sizes,
                "openvino": use_ov,
                **({"torch_only": torch_only} if torch_only else {}),
            },
        )

    return ctx.run_stage("export", inputs, body)

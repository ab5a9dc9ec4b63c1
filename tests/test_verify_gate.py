"""The verify gate: it must fail on a perturbed export and on an INT8 model that loses accuracy."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from rich.console import Console

from edgedistill.config import Recipe
from edgedistill.errors import GateError
from edgedistill.metrics import topk_accuracy
from edgedistill.pipeline.context import RunContext
from edgedistill.pipeline.run import run_pipeline
from edgedistill.pipeline.stages.export import deployed_models
from edgedistill.pipeline.stages.verify import stage_verify, verify_models
from edgedistill.runtime import OnnxRuntimeRunner, run_batched

_BASE_RUNS: dict[str, Path] = {}


def _quiet() -> Console:
    return Console(file=io.StringIO())


@pytest.fixture
def quantized_run(
    tiny_recipe_dict: dict[str, Any], tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[RunContext, dict[str, Any]]:
    """A private copy of a run finished up to ``quantize`` (the stages run once per session;
    every test gets its own copy of the run directory, in which all stages are skipped)."""
    key = json.dumps(tiny_recipe_dict, sort_keys=True, default=str)
    if key not in _BASE_RUNS:
        base = tmp_path_factory.mktemp("verify-base") / "run"
        run_pipeline(Recipe.from_dict(tiny_recipe_dict), base, until="quantize", console=_quiet())
        _BASE_RUNS[key] = base
    out = tmp_path / "run"
    shutil.copytree(_BASE_RUNS[key], out)
    ctx = run_pipeline(Recipe.from_dict(tiny_recipe_dict), out, until="quantize", console=_quiet())
    assert ctx.executed == []  # the copy is complete: nothing had to run again
    return ctx, tiny_recipe_dict


def _edit_initializers(src: Path, dest: Path, edit: dict[str, Any]) -> None:
    """Copy an ONNX file, replacing initializers: name -> function(old array) -> new array."""
    model = onnx.load(str(src))
    done = set()
    for init in model.graph.initializer:
        if init.name in edit:
            new = edit[init.name](numpy_helper.to_array(init).copy())
            init.CopyFrom(numpy_helper.from_array(new.astype(np.float32), init.name))
            done.add(init.name)
    assert done == set(edit), f"initializers not found: {set(edit) - done}"
    dest.write_bytes(model.SerializeToString())


def _names(path: Path) -> dict[str, tuple[int, ...]]:
    return {i.name: tuple(i.dims) for i in onnx.load(str(path)).graph.initializer}


def _first_conv_weight(path: Path) -> str:
    return next(n for n, dims in _names(path).items() if len(dims) == 4)


def _classifier(path: Path) -> tuple[str, str]:
    names = _names(path)
    weight = next(n for n in names if n.endswith("classifier.weight"))
    bias = next(n for n in names if n.endswith("classifier.bias"))
    return weight, bias


def test_unperturbed_run_passes_all_gates(quantized_run: tuple[RunContext, dict[str, Any]]) -> None:
    ctx, _ = quantized_run
    models = deployed_models(ctx)
    assert [m.name for m in models] == [
        "teacher",
        "student",
        "student-pruned",
        "student-int8",
        "student-pruned-int8",
    ]
    report = verify_models(ctx, models)
    assert report["failures"] == []
    for name in ("teacher", "student", "student-pruned"):
        assert report["models"][name]["max_abs_diff"] <= 1e-4
    assert report["models"]["student-int8"]["accuracy_drop"] == pytest.approx(
        report["models"]["student"]["top1"] - report["models"]["student-int8"]["top1"]
    )


def test_perturbed_fp32_export_fails_parity_gate(
    quantized_run: tuple[RunContext, dict[str, Any]],
) -> None:
    ctx, _ = quantized_run
    path = ctx.stage_dir("export") / "student.onnx"
    _edit_initializers(path, path, {_first_conv_weight(path): lambda w: w + 0.01})

    report = verify_models(ctx, deployed_models(ctx))
    failures = report["failures"]
    student = [f for f in failures if f.startswith("student in onnxruntime differs from torch")]
    assert len(student) == 1, failures
    assert report["models"]["student"]["max_abs_diff"] > 1e-3
    # nothing else is blamed: the teacher, the pruned student and the OpenVINO IR are intact
    assert not [f for f in failures if f.startswith(("teacher", "student-pruned"))]
    assert not [f for f in failures if "openvino" in f]

    # through the stage: GateError naming the model and the runtime; no manifest vouches for it
    with pytest.raises(GateError) as info:
        stage_verify(ctx)
    message = str(info.value)
    assert "student" in message and "onnxruntime" in message and "differs from torch" in message
    assert not (ctx.stage_dir("verify") / "manifest.json").exists()
    saved = json.loads((ctx.stage_dir("verify") / "verify.json").read_text())
    assert saved["failures"] == failures


def test_int8_gate_fails_when_accuracy_drops(
    quantized_run: tuple[RunContext, dict[str, Any]],
) -> None:
    ctx, _ = quantized_run
    ctx.recipe = ctx.recipe.model_copy(
        update={"gates": ctx.recipe.gates.model_copy(update={"int8_max_accuracy_drop": 0.0})}
    )
    export_dir = ctx.stage_dir("export")
    int8 = ctx.stage_dir("quantize") / "student-int8.onnx"

    # A stand-in "INT8 student" with its classifier rows rotated by one class: it never agrees
    # with the FP32 student.
    weight, bias = _classifier(export_dir / "student.onnx")
    _edit_initializers(
        export_dir / "student.onnx",
        int8,
        {weight: lambda w: np.roll(w, 1, axis=0), bias: lambda b: np.roll(b, 1)},
    )
    report = verify_models(ctx, deployed_models(ctx))
    assert report["models"]["student-int8"]["top1_agreement_with_fp32"] == 0.0

    # The tiny student is close to chance (31%), so a rotated student barely loses accuracy.
    # A rotated teacher (85% top-1, same input) is right at most 15% of the time: a sure drop.
    weight, bias = _classifier(export_dir / "teacher.onnx")
    _edit_initializers(
        export_dir / "teacher.onnx",
        int8,
        {weight: lambda w: np.roll(w, 1, axis=0), bias: lambda b: np.roll(b, 1)},
    )
    report = verify_models(ctx, deployed_models(ctx))
    rows = report["models"]
    assert rows["teacher"]["top1"] > 70  # the premise of the construction
    assert rows["student-int8"]["top1"] <= 100 - rows["teacher"]["top1"] + 1e-9
    drop = rows["student"]["top1"] - rows["student-int8"]["top1"]
    assert drop > 10
    assert rows["student-int8"]["accuracy_drop"] == pytest.approx(drop)
    losers = [f for f in report["failures"] if f.startswith("student-int8 loses")]
    assert len(losers) == 1, report["failures"]
    assert f"{drop:.2f} top-1 points against student (gate 0)" in losers[0]
    assert not [f for f in report["failures"] if f.startswith("student-pruned-int8")]
    assert not [f for f in report["failures"] if "differs from torch" in f]

    # with the default-like gate of 100 points the same model passes
    ctx.recipe = ctx.recipe.model_copy(
        update={"gates": ctx.recipe.gates.model_copy(update={"int8_max_accuracy_drop": 100.0})}
    )
    assert verify_models(ctx, deployed_models(ctx))["failures"] == []
    ctx.recipe = ctx.recipe.model_copy(
        update={"gates": ctx.recipe.gates.model_copy(update={"int8_max_accuracy_drop": 0.0})}
    )
    with pytest.raises(GateError, match="student-int8 loses"):
        stage_verify(ctx)


def test_absurd_parity_tolerance_fails_the_pipeline(
    quantized_run: tuple[RunContext, dict[str, Any]],
) -> None:
    ctx, recipe_dict = quantized_run
    strict = {**recipe_dict, "gates": {**recipe_dict["gates"], "fp32_max_abs_diff": 1e-12}}
    with pytest.raises(GateError) as info:
        run_pipeline(Recipe.from_dict(strict), ctx.out, until="verify", console=_quiet())
    assert "differs from torch" in str(info.value)
    assert "> 1e-12" in str(info.value)
    assert not (ctx.out / "verify" / "manifest.json").exists()
    report = json.loads((ctx.out / "verify" / "verify.json").read_text())
    assert report["failures"]
    # and the same run with the default tolerance passes and writes the manifest
    run_pipeline(Recipe.from_dict(recipe_dict), ctx.out, until="verify", console=_quiet())
    assert (ctx.out / "verify" / "manifest.json").is_file()


def test_nan_producing_export_fails_parity_gate(
    quantized_run: tuple[RunContext, dict[str, Any]],
) -> None:
    ctx, _ = quantized_run
    path = ctx.stage_dir("export") / "student.onnx"
    _, bias = _classifier(path)
    _edit_initializers(path, path, {bias: lambda b: np.full_like(b, np.nan)})
    report = verify_models(ctx, deployed_models(ctx))
    assert np.isnan(report["models"]["student"]["max_abs_diff"])  # the export really is broken
    assert any(f.startswith("student in onnxruntime") for f in report["failures"]), report


def test_teacher_is_verified_with_its_own_normalization(
    quantized_run: tuple[RunContext, dict[str, Any]],
) -> None:
    ctx, _ = quantized_run
    student_norm = ctx.task.input.normalization()
    teacher_norm = ctx.teacher_input.normalization()
    assert student_norm != teacher_norm  # premise: the card's mean/std (0.3/0.3) differ
    teacher_x = ctx.teacher_input.prepare(ctx.task.x_test).numpy()
    with OnnxRuntimeRunner(ctx.stage_dir("export") / "teacher.onnx", "teacher") as runner:
        expected = topk_accuracy(run_batched(runner, teacher_x), ctx.y_test)
    # the distill stage measures the teacher with its own normalisation
    assert ctx.manifests["distill"]["metrics"]["teacher_top1"] == pytest.approx(expected)
    report = verify_models(ctx, deployed_models(ctx))
    assert report["models"]["teacher"]["top1"] == pytest.approx(expected)

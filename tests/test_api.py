"""The Python API (edgedistill.run and one function per stage): the documented example runs,
results carry summary.json's numbers, stage functions stop where the CLI's commands stop, an
unchanged re-run skips everything, bad inputs raise the project's errors.

The examples of docs/api.md and of README.md's "## Python API" section are executed as
written, with the smoke recipe's path swapped for the tests' tiny recipe (the smoke recipe takes
one to two minutes on two cores; ``--runslow`` runs the example verbatim on it).
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml

import edgedistill
import edgedistill.api
from edgedistill.config import Recipe
from edgedistill.errors import RecipeError, StageError
from edgedistill.pipeline.run import STAGES

ROOT = Path(__file__).resolve().parents[1]
SMOKE = "students/fashion_mnist_smoke.yaml"
FASHION = Path("/usr/share/datasets/fashion-mnist")


def python_blocks(markdown: str, heading: str) -> list[str] | None:
    """The ```python blocks of the section under ``heading`` (up to the next heading of the
    same level), or None when the heading is absent."""
    level = heading.split(" ")[0]
    lines = markdown.splitlines()
    if heading not in lines:
        return None
    start = lines.index(heading) + 1
    end = next(
        (i for i in range(start, len(lines)) if re.match(rf"{level} \S", lines[i])), len(lines)
    )
    section = "\n".join(lines[start:end])
    return re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)


def api_example(markdown: str, heading: str) -> str | None:
    """The first block of the section that calls ``edgedistill.run``."""
    blocks = python_blocks(markdown, heading) or []
    return next((b for b in blocks if "edgedistill.run(" in b), None)


@pytest.fixture(scope="module")
def recipe_dict(tiny_idx_dir: Path, tiny_teacher_card: Path) -> dict[str, Any]:
    """conftest's tiny recipe (three classes of bars, a small teacher), profiled briefly."""
    return {
        "name": "tiny-api",
        "seed": 0,
        "threads": 1,
        "data": {"path": str(tiny_idx_dir), "name": "bars", "labels": ["left", "middle", "right"]},
        "teacher": {"card": str(tiny_teacher_card)},
        "student": {"arch": "convnet", "config": {"widths": [16, 32]}},
        "distill": {"epochs": 2, "batch_size": 64, "lr": 0.05},
        "prune": {"target_macs_ratio": 0.7, "finetune_epochs": 1},
        "quantize": {"calibration_samples": 64},
        "profile": {
            "threads": 1,
            "batch_sizes": [1],
            "warmup": 2,
            "runs": 100,
            "runtimes": ["torch", "onnxruntime"],
        },
        "gates": {"parity_samples": 64, "int8_max_accuracy_drop": 100.0},
    }


@pytest.fixture(scope="module")
def recipe_file(recipe_dict: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("recipe") / "tiny.yaml"
    path.write_text(yaml.safe_dump(recipe_dict))
    return path


@pytest.fixture(scope="module")
def example_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The one run folder both documented examples write to: the first runs every stage,
    the second finds them all unchanged."""
    return tmp_path_factory.mktemp("example")


def first_temporary_folder_is(out: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The example's ``tempfile.mkdtemp()`` (the first call) returns ``out``; later calls (the
    libraries' own scratch folders) make fresh folders as usual."""
    real = tempfile.mkdtemp
    calls = []

    def mkdtemp(*args: Any, **kwargs: Any) -> str:
        calls.append(args)
        return str(out) if len(calls) == 1 else real(*args, **kwargs)

    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)


def run_example(
    code: str, recipe: Path, out: Path, monkeypatch: pytest.MonkeyPatch
) -> dict[str, Any]:
    """Execute the example with the tiny recipe and ``out`` as its temporary folder."""
    assert f'"{SMOKE}"' in code, "the example no longer runs the smoke recipe"
    first_temporary_folder_is(out, monkeypatch)
    namespace: dict[str, Any] = {"__name__": "__example__"}
    exec(compile(code.replace(SMOKE, str(recipe)), "example", "exec"), namespace)
    return namespace


def check_example_output(printed: str, namespace: dict[str, Any], out: Path) -> None:
    """What the example printed is summary.json's numbers."""
    result = namespace["result"]
    assert isinstance(result, edgedistill.RunResult) and result.out == out.resolve()
    summary = json.loads((out / "summary.json").read_text())
    assert result.summary == summary
    assert summary["accuracy_metric"] in printed
    for row in summary["models"]:
        p50 = row["latency_ms"]["onnxruntime"]["p50"]
        assert f"{row['name']:<20} {row['accuracy']:6.2f}  {p50:.3f} ms" in printed
    speedup = summary["speedups"]["student-int8 (onnxruntime) vs teacher (torch), batch 1 p50"]
    assert f"student-int8: {speedup:.1f}x faster" in printed
    recommended = out.resolve() / "bundle" / "app" / summary["recommended"]["file"]
    assert f"ship {recommended} ({summary['recommended']['model']})" in printed
    assert recommended.is_file() and result.report is not None and result.report.is_file()


def test_docs_example_runs(
    recipe_file: Path,
    example_out: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = api_example((ROOT / "docs" / "api.md").read_text(), "## Example")
    assert code is not None, "docs/api.md has no example calling edgedistill.run"
    namespace = run_example(code, recipe_file, example_out, monkeypatch)
    check_example_output(capsys.readouterr().out, namespace, example_out)


def test_readme_example_runs(
    recipe_file: Path,
    example_out: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    readme = (ROOT / "README.md").read_text()
    if python_blocks(readme, "## Python API") is None:
        pytest.skip("README.md has no '## Python API' section (docs/api.md's test runs it)")
    code = api_example(readme, "## Python API")
    if code is None:
        pytest.skip("README.md's '## Python API' section has no edgedistill.run example yet")
    assert code == api_example((ROOT / "docs" / "api.md").read_text(), "## Example"), (
        "README.md's Python API example differs from docs/api.md's: keep them the same"
    )
    namespace = run_example(code, recipe_file, example_out, monkeypatch)
    check_example_output(capsys.readouterr().out, namespace, example_out)


@pytest.mark.slow
@pytest.mark.skipif(not FASHION.is_dir(), reason="needs Debian's dataset-fashion-mnist")
def test_docs_example_verbatim_on_fashion_mnist(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code = api_example((ROOT / "docs" / "api.md").read_text(), "## Example")
    assert code is not None
    monkeypatch.chdir(ROOT)
    first_temporary_folder_is(tmp_path, monkeypatch)
    namespace: dict[str, Any] = {"__name__": "__example__"}
    exec(compile(code, "example", "exec"), namespace)
    check_example_output(capsys.readouterr().out, namespace, tmp_path)


def test_full_run_results_match_summary_and_rerun_skips_everything(
    recipe_file: Path, example_out: Path
) -> None:
    """Typed accessors give summary.json's numbers; an unchanged re-run skips all stages."""
    first = edgedistill.run(recipe_file, out=example_out)  # the examples' folder: maybe a rerun
    again = edgedistill.run(recipe_file, out=example_out)
    assert [s.name for s in again.stages] == list(STAGES)
    assert again.executed == () and again.skipped == STAGES
    assert all(s.skipped for s in again.stages)
    assert again.summary == first.summary
    summary = json.loads((example_out / "summary.json").read_text())
    rows = {row["name"]: row for row in summary["models"]}
    assert list(again.models) == list(rows)
    assert again.accuracy == {name: row["accuracy"] for name, row in rows.items()}
    for name, row in rows.items():
        model = again.models[name]
        assert (model.params, model.macs, model.size_bytes) == (
            row["params"],
            row["macs"],
            row["size_bytes"],
        )
        for runtime, stats in row["latency_ms"].items():
            assert again.latency_p50(name, runtime) == stats["p50"]
        assert model.onnx == example_out.resolve() / row["onnx"]
    assert again.models["student-int8"].precision == "int8"
    assert again.speedups == summary["speedups"]
    assert (
        again.speedup("student")
        == summary["speedups"]["student (onnxruntime) vs teacher (torch), batch 1 p50"]
    )
    rec = again.recommended
    assert rec is not None and rec.model == summary["recommended"]["model"] and rec.file.is_file()
    assert again.bundle == example_out.resolve() / "bundle" / "app"
    assert (again.bundle / "manifest.json").is_file()
    distill = again.stage("distill")
    assert distill.metrics["student_top1"] == rows["student"]["accuracy"]
    assert {p.name for p in distill.outputs} >= {"student.safetensors"}
    assert all(p.is_file() for p in distill.outputs) and distill.seconds is not None
    assert not again.stage("pretrain").enabled and distill.enabled
    with pytest.raises(KeyError, match="not measured on openvino"):
        again.latency_p50("student", "openvino")
    with pytest.raises(KeyError, match="no model 'nope'"):
        again.latency_p50("nope")


def test_stage_functions_stop_where_the_commands_stop(
    recipe_dict: dict[str, Any], tmp_path: Path
) -> None:
    """distill(dict) then export(Recipe) into one folder: the second call keeps distill (same
    recipe either way), runs prune and export, and stops there."""
    out = tmp_path / "run"
    first = edgedistill.api.distill(recipe_dict, out)
    assert [s.name for s in first.stages] == ["pretrain", "distill"]
    assert first.executed == ("pretrain", "distill") and first.until == "distill"
    assert first.summary is None and first.bundle is None and first.report is None
    assert first.recommended is None
    assert not (out / "prune").exists() and (out / "distill" / "manifest.json").is_file()
    with pytest.raises(StageError, match="until='report'"):
        _ = first.accuracy
    with pytest.raises(KeyError, match="did not run"):
        first.stage("export")

    second = edgedistill.api.export(Recipe.from_dict(recipe_dict), out=out)
    assert second.skipped == ("pretrain", "distill")
    assert second.executed == ("prune", "export")
    assert {p.name for p in second.stage("export").outputs} >= {"student.onnx", "teacher.onnx"}
    assert second.stage("distill").metrics == first.stage("distill").metrics
    assert not (out / "quantize").exists()


def test_quiet_by_default_progress_on_request(
    recipe_dict: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    edgedistill.api.pretrain(recipe_dict, tmp_path / "run")
    captured = capsys.readouterr()
    assert "pretrain" not in captured.err + captured.out
    kept = edgedistill.api.pretrain(recipe_dict, tmp_path / "run", progress=True)
    assert "pretrain  unchanged, skipped" in capsys.readouterr().err
    assert kept.skipped == ("pretrain",)
    forced = edgedistill.api.pretrain(recipe_dict, tmp_path / "run", force=True)
    assert forced.executed == ("pretrain",)


def test_validate_checks_without_training(recipe_dict: dict[str, Any], tmp_path: Path) -> None:
    checked = edgedistill.validate(recipe_dict)
    assert checked.recipe == "tiny-api" and checked.classes == 3
    assert checked.student.startswith("convnet") and "tiny-teacher" in (checked.teacher or "")
    # 384 samples / batch 64 = 6 steps per epoch; 2 distill epochs + 1 pruning recovery epoch.
    assert checked.estimate.steps == 18 and checked.estimate.seconds > 0
    bad = {**recipe_dict, "student": {"arch": "convnet", "config": {"num_classes": 5}}}
    with pytest.raises(RecipeError, match="outputs 5 classes"):
        edgedistill.validate(bad)


def test_bad_inputs_raise_project_errors(recipe_dict: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="does not exist") as missing:
        edgedistill.run(tmp_path / "missing.yaml", out=tmp_path / "run")
    assert missing.value.exit_code == 2
    with pytest.raises(RecipeError, match="until='deploy' is not a stage"):
        edgedistill.run(recipe_dict, out=tmp_path / "run", until="deploy")
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    with pytest.raises(RecipeError, match="is a file"):
        edgedistill.api.distill(recipe_dict, out=a_file)
    with pytest.raises(RecipeError, match="'data' is required"):
        edgedistill.api.distill({"name": "no-data"}, out=tmp_path / "run")
    with pytest.raises(RecipeError, match=r"distill\.epochs"):
        edgedistill.api.distill({**recipe_dict, "distill": {"epochs": -1}}, out=tmp_path / "run")
    with pytest.raises(TypeError, match="not int"):
        edgedistill.run(3, out=tmp_path / "run")  # type: ignore[arg-type]
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


def test_target_profile_overrides_a_dict_recipe(
    recipe_dict: dict[str, Any], tmp_path: Path
) -> None:
    """``target=`` merges a profile's sections into a dict or Recipe as into a YAML file."""
    from edgedistill.api.stages import _recipe

    target = tmp_path / "target.yaml"
    target.write_text(yaml.safe_dump({"name": "t", "profile": {"runs": 150}}))
    for recipe in (recipe_dict, Recipe.from_dict(recipe_dict)):
        merged = _recipe(recipe, target)
        assert merged.profile.runs == 150 and merged.profile.warmup == 2
    assert recipe_dict["profile"]["runs"] == 100  # the caller's dict is left as it was


def test_top_level_names_and_subpackages_do_not_clash() -> None:
    """run/validate are re-exported at the top level; the stage functions stay in
    edgedistill.api, so edgedistill.distill/export/report remain the subpackages."""
    import types

    import edgedistill.export.onnx
    import edgedistill.report.pareto
    from edgedistill.distill import kd_loss
    from edgedistill.export import export_onnx

    for name in ("run", "validate"):
        assert getattr(edgedistill, name) is getattr(edgedistill.api, name), name
        assert name in edgedistill.__all__
    for name in STAGES:
        assert callable(getattr(edgedistill.api, name)), name
    for name in ("distill", "export", "report"):
        assert isinstance(getattr(edgedistill, name), types.ModuleType), name
    assert callable(kd_loss) and callable(export_onnx)

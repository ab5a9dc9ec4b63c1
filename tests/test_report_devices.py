"""Per-device results in a real (tiny) run: the profile stage fills the results store, the
report gains a Devices section, a second device's rows re-run only the report (directly and
through ``edgedistill profile --device``), and the target profiles load."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path
from typing import Any

import pytest
import yaml
from rich.console import Console
from typer.testing import CliRunner

from edgedistill.agent.store import Measurement, ResultsStore
from edgedistill.artifacts import read_json
from edgedistill.config import Recipe, load_recipe, load_target
from edgedistill.errors import RecipeError, StageError
from edgedistill.pipeline.run import STAGES, run_pipeline
from edgedistill.pipeline.stages.report import refresh_report

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
AGENT = "http://jetson.test:8765"
LABELS = ["left", "middle", "right"]  # the tiny data set's (conftest.py)
JETSON_ENV = {"machine": "jetson", "cpu": "ARMv8 Processor rev 1 (v8l)", "gpu": "Orin"}


def _quiet() -> Console:
    return Console(file=io.StringIO(), force_terminal=False)


@pytest.fixture(scope="module")
def finished_run(
    tmp_path_factory: pytest.TempPathFactory, tiny_idx_dir: Path, tiny_teacher_card: Path
) -> tuple[Path, Path, Any]:
    """A whole tiny chain (no pruning, 1 epoch) run once for the module: (recipe file, run
    folder, context)."""
    folder = tmp_path_factory.mktemp("devices")
    raw = {
        "name": "tiny-devices",
        "seed": 0,
        "threads": 1,
        "data": {"path": str(tiny_idx_dir), "name": "bars", "labels": LABELS},
        "teacher": {"card": str(tiny_teacher_card)},
        "student": {"arch": "convnet", "config": {"widths": [16, 32]}},
        "distill": {"epochs": 1, "batch_size": 64, "lr": 0.05},
        "prune": {"enabled": False},
        "quantize": {"calibration_samples": 64},
        "profile": {
            "threads": 1,
            "batch_sizes": [1, 4],
            "warmup": 1,
            "runs": 100,
            "runtimes": ["torch", "onnxruntime"],
        },
        "gates": {"parity_samples": 64, "int8_max_accuracy_drop": 100.0},
    }
    recipe_file = folder / "recipe.yaml"
    recipe_file.write_text(yaml.safe_dump(raw))
    out = folder / "run"
    ctx = run_pipeline(load_recipe(recipe_file), out, console=_quiet())
    return recipe_file, out, ctx


def _jetson_rows(
    local: list[Measurement], latency: dict[str, float], **kw: Any
) -> list[Measurement]:
    """Rows of a second device for the run's models (by the sha256 the local rows use)."""
    shas = {m.model_name: m.model_sha256 for m in local}
    rows = []
    for name, p50 in latency.items():
        rows.append(
            Measurement(
                model_sha256=shas[name],
                model_name=name,
                device_id="jetson0001",
                device_name="jetson (Orin)",
                runtime="tensorrt",
                precision="int8" if name.endswith("-int8") else "fp16",
                batch=1,
                threads=1,
                p50_ms=p50,
                p90_ms=p50 * 1.2,
                p99_ms=p50 * 1.5,
                mean_ms=p50,
                throughput_per_s=1000.0 / p50,
                versions={"tensorrt": "10.3.0"},
                environment=JETSON_ENV,
                run_id="run",
                source=AGENT,
                **kw,
            )
        )
    return rows


def test_profile_rows_reach_the_store_and_the_summary(finished_run: tuple[Path, Path, Any]) -> None:
    _, out, ctx = finished_run
    assert ctx.executed == list(STAGES)
    latency = read_json(out / "profile" / "latency.json")
    rows = ResultsStore(out / "results.sqlite").query()
    assert len(rows) == len(latency["entries"]) > 0
    assert {r.run_id for r in rows} == {"run"} and {r.source for r in rows} == {"local"}
    assert len({r.device_id for r in rows}) == 1
    # Every row is one latency.json entry, with the same numbers.
    entries = {(e["model"], e["runtime"], int(e["batch"])): e for e in latency["entries"]}
    for r in rows:
        e = entries[(r.model_name, r.runtime, r.batch)]
        assert r.p50_ms == e["p50"] and r.throughput_per_s == pytest.approx(
            r.batch * 1000 / e["p50"]
        )
    # ONNX models are identified by their file's sha256, for torch rows as well.
    onnx_sha = read_json(out / "export" / "manifest.json")["outputs"]["student.onnx"]
    assert {r.model_sha256 for r in rows if r.model_name == "student"} == {onnx_sha}
    summary = read_json(out / "summary.json")
    assert len(summary["devices"]) == 1
    device = summary["devices"][0]
    assert device["source"] == "local" and device["id"] == rows[0].device_id
    assert len(device["rows"]) == len(rows)
    assert (out / "report" / device["plot"]).read_bytes()[:8] == PNG_MAGIC
    assert (out / "recipe.json").is_file()
    assert "## Devices" in (out / "report" / "report.md").read_text()

    # A re-run with nothing changed skips every stage and appends nothing.
    again = run_pipeline(ctx.recipe, out, console=_quiet())
    assert again.executed == []
    assert len(ResultsStore(out / "results.sqlite")) == len(rows)


def test_second_device_rows_rerun_only_the_report(finished_run: tuple[Path, Path, Any]) -> None:
    _, out, _ = finished_run
    store = ResultsStore(out / "results.sqlite")
    local = store.query(run_id="run")
    summary = read_json(out / "summary.json")
    accuracy = {m["name"]: m["accuracy"] for m in summary["models"]}
    # Students at the same latency, the teacher slower: the front is the most accurate of the
    # students (every one tied with it), plus the teacher only if it beats them all.
    latency = {name: (5.0 if name == "teacher" else 1.0) for name in accuracy}
    added = store.add(_jetson_rows(local, latency))
    # Rows that are not this run's models: an old export, another run folder.
    foreign = _jetson_rows(local, {"student": 0.01})[0]
    store.add(
        [
            dataclasses.replace(foreign, model_sha256="0" * 64),
            dataclasses.replace(foreign, run_id="another-run"),
        ]
    )
    ctx = refresh_report(out, console=_quiet())
    assert ctx.executed == ["report"]
    summary = read_json(out / "summary.json")
    devices = {d["source"]: d for d in summary["devices"]}
    assert list(devices) == ["local", AGENT]  # local first
    jetson = devices[AGENT]
    assert jetson["id"] == "jetson0001" and jetson["environment"]["gpu"] == "Orin"
    assert len(jetson["rows"]) == added == len(accuracy)
    best = max(acc for name, acc in accuracy.items() if name != "teacher")
    expected = {n for n, acc in accuracy.items() if n != "teacher" and acc == best}
    if accuracy["teacher"] > best:
        expected.add("teacher")
    assert {r["model"] for r in jetson["rows"] if r["pareto"]} == expected
    for row in jetson["rows"]:
        assert row["accuracy"] == accuracy[row["model"]]
        assert row["accuracy_exact"] is row["model"].endswith("-int8")  # fp16 engines: not
    for device in summary["devices"]:
        assert (out / "report" / device["plot"]).read_bytes()[:8] == PNG_MAGIC
    md = (out / "report" / "report.md").read_text()
    assert "jetson (Orin)" in md and md.count("### ") == 2
    assert "<h2>Devices</h2>" in (out / "report" / "report.html").read_text()
    # The manifest lists both plots, so deleting one re-runs the report.
    outputs = read_json(out / "report" / "manifest.json")["outputs"]
    assert {d["plot"] for d in summary["devices"]} <= set(outputs)

    # Nothing new: the report is skipped.
    assert refresh_report(out, console=_quiet()).executed == []


def test_profile_command_with_a_device(
    finished_run: tuple[Path, Path, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``edgedistill profile RECIPE --device URL --token-file F``: the local chain (skipped),
    the agent client (faked here: it appends one row per model), then the report refreshed."""
    import edgedistill.agent.client as client
    import edgedistill.pipeline.device as device
    from edgedistill.cli.app import app

    recipe_file, out, _ = finished_run
    calls: list[dict[str, Any]] = []

    def fake(run_dir: Path, url: str, token: str, **kw: Any) -> Any:
        calls.append({"run_dir": run_dir, "url": url, "token": token, **kw})
        store = ResultsStore(kw.get("store") or Path(run_dir) / "results.sqlite")
        local = [m for m in store.query(run_id="run") if m.source == "local"]
        rows = _jetson_rows(local, {"student": 0.5}, engine_build_s=3.0)
        store.add(rows)
        return client.DeviceResults("job-1", "jetson0001", "jetson (Orin)", rows, [])

    monkeypatch.setattr(device, "profile_run_on_device", fake)
    token = tmp_path / "token"
    token.write_text("a-token-of-enough-length-1234\n")
    before = read_json(out / "report" / "manifest.json")["fingerprint"]
    result = CliRunner().invoke(
        app,
        ["profile", str(recipe_file), "--out", str(out), "--device", AGENT, "--token-file", str(token)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert len(calls) == 1 and calls[0]["token"] == "a-token-of-enough-length-1234"
    assert calls[0]["url"] == AGENT and Path(calls[0]["run_dir"]).resolve() == out
    assert calls[0]["runtimes"] == ["onnxruntime"]  # torch takes a module: stays local
    assert list(calls[0]["batch_sizes"]) == [1, 4]
    assert read_json(out / "report" / "manifest.json")["fingerprint"] != before
    jetson = next(d for d in read_json(out / "summary.json")["devices"] if d["source"] == AGENT)
    student = next(r for r in jetson["rows"] if r["model"] == "student")
    assert student["p50_ms"] == 0.5 and student["engine_build_s"] == 3.0  # the newest row


def test_refresh_needs_a_finished_run(tmp_path: Path) -> None:
    with pytest.raises(StageError, match=r"recipe\.json"):
        refresh_report(tmp_path)


def test_target_profiles_load_through_the_target_loader(tmp_path: Path) -> None:
    recipe = ROOT / "students" / "fashion_mnist.yaml"
    gpu = load_recipe(recipe, target=ROOT / "export" / "desktop-gpu.yaml")
    assert gpu.profile.runtimes == ("torch-cuda", "tensorrt", "onnxruntime")
    assert gpu.profile.precisions == ("fp32", "fp16")
    assert gpu.profile.batch_sizes == (1, 8, 32)
    assert load_target(ROOT / "export" / "desktop-gpu.yaml").device is None
    jetson_target = load_target(ROOT / "export" / "jetson-orin.yaml")
    assert jetson_target.device is not None and jetson_target.device.url.startswith("http://")
    jetson = load_recipe(recipe, target=ROOT / "export" / "jetson-orin.yaml")
    assert jetson.profile.runtimes == ("tensorrt",) and jetson.profile.batch_sizes == (1, 8)
    assert "fp16" in jetson.profile.precisions and jetson.quantize.enabled
    # A bad device URL or an unknown key is one RecipeError naming the file.
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"name": "x", "device": {"url": "jetson:8765"}}))
    with pytest.raises(RecipeError, match=r"bad\.yaml: device\.url"):
        load_target(bad)
    bad.write_text(yaml.safe_dump({"name": "x", "devices": {}}))
    with pytest.raises(RecipeError, match="unknown key 'devices'"):
        load_recipe(recipe, target=bad)


def test_profile_store_path_resolves_against_the_recipe(
    tmp_path: Path, tiny_idx_dir: Path, tiny_teacher_card: Path
) -> None:
    base = {
        "data": {"path": str(tiny_idx_dir), "labels": LABELS},
        "teacher": {"card": str(tiny_teacher_card)},
    }
    recipe = Recipe.from_dict(
        {**base, "profile": {"store": "stores/results.sqlite"}}, base_dir=tmp_path
    )
    assert recipe.profile.store == tmp_path / "stores" / "results.sqlite"
    assert Recipe.from_dict(base).profile.store is None

"""Early-exit deployment report: truncated exit models, exports, parity gate, cascade table."""

from __future__ import annotations

import math
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
import torch

from edgedistill.early_exits import (
    ALL_EXITS_FILE,
    DEFAULT_THRESHOLDS,
    ExitExport,
    ExitModel,
    ExitReport,
    cascade_table,
    evaluate_exits,
    exit_logits,
    exit_models,
    exit_report_markdown,
    export_exits,
    read_exit_report,
    write_exit_report,
)
from edgedistill.errors import GateError, RecipeError
from edgedistill.metrics import count_macs, count_params, topk_accuracy
from edgedistill.students.multi_exit import (
    ExitHead,
    MultiExitDeploy,
    MultiExitStudent,
    exit_output_names,
)
from edgedistill.students.vision import ConvNet

SHAPE = (1, 16, 16)


def _student() -> MultiExitStudent:
    """3 exits over 3 classes, 2 joint transforms, batch norm statistics away from defaults."""
    torch.manual_seed(0)
    student = MultiExitStudent(ConvNet(num_classes=3, widths=(4, 8, 8)), num_transforms=2)
    student.train()
    with torch.no_grad():
        for _ in range(3):
            student.forward_exits(torch.randn(8, *SHAPE) * 2 + 0.5)
    return student.eval()


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny ops: one torch thread avoids spinning on shared CPUs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@dataclass
class Evaluated:
    student: MultiExitStudent
    x: torch.Tensor
    y: np.ndarray
    files: ExitExport
    reports: list[ExitReport]


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory, _one_thread: None) -> Evaluated:
    """One export and one evaluation (INT8 included) shared by the tests below."""
    student = _student()
    x = torch.randn(64, *SHAPE, generator=torch.Generator().manual_seed(1))
    y = np.random.default_rng(2).integers(0, 3, 64)
    out = tmp_path_factory.mktemp("exits")
    files = export_exits(student, SHAPE, out)
    settings: dict[str, Any] = {"input_shape": SHAPE, "warmup": 2, "runs": 20}
    reports = evaluate_exits(
        student, x, y, out, int8_calibration=x[:16], exported=files, **settings
    )
    return Evaluated(student, x, y, files, reports)


# ----------------------------------------------------------------------------- exit models


def test_exit_models_match_the_multi_exit_deploy() -> None:
    student = _student()
    models = exit_models(student)
    assert len(models) == 3 and not any(m.training for m in models)
    assert all(isinstance(m, ExitModel) for m in models[:2])
    assert type(models[-1]) is ConvNet  # the deepest exit is the plain deployed student
    x = torch.randn(5, *SHAPE)
    with torch.no_grad():
        want = student.to_deploy(keep_exits=True)(x)
        for model, ref in zip(models, want, strict=True):
            torch.testing.assert_close(model(x), ref, rtol=0, atol=1e-5)
    # no batch norm left, and a shallow exit holds no parameters of the later stages
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for n in models for m in n.modules())
    params = [count_params(m) for m in models]
    assert params[0] < params[1] < params[2] == count_params(student.to_deploy())
    deploy = student.to_deploy(keep_exits=True)
    assert isinstance(deploy, MultiExitDeploy)
    stage0, head0 = deploy.trunk.stage_modules()[0], deploy.heads[0]
    assert params[0] == count_params(stage0) + count_params(head0)


def test_exit_logits_are_the_deploy_outputs() -> None:
    student = _student()
    x = torch.randn(7, *SHAPE)
    logits = exit_logits(student, x, batch_size=3)
    with torch.no_grad():
        want = student.to_deploy(keep_exits=True)(x)
    assert [z.shape for z in logits] == [(7, 3)] * 3
    for got, ref in zip(logits, want, strict=True):
        np.testing.assert_allclose(got, ref.numpy(), rtol=0, atol=1e-6)


def test_bad_inputs_raise_recipe_error(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="MultiExitStudent"):
        exit_models(ConvNet(widths=(4, 8)))  # type: ignore[arg-type]
    student, x, y = _student(), torch.randn(4, *SHAPE), np.zeros(4, dtype=int)
    bad: list[dict[str, Any]] = [
        {"input_shape": (1, 8, 8)},
        {"batch_size": 5},
        {"runs": 0},
        {"tolerance": -1},
        {"tolerance": float("nan")},
        {"int8_calibration": torch.zeros(2, 1, 8, 8)},
    ]
    for kwargs in bad:
        with pytest.raises(RecipeError):
            evaluate_exits(student, x, y, tmp_path, **{"input_shape": SHAPE, **kwargs})
    with pytest.raises(RecipeError, match="y_test"):
        evaluate_exits(student, x, y[:3], tmp_path, input_shape=SHAPE)
    assert not list(tmp_path.iterdir())  # rejected before exporting anything


# --------------------------------------------------------------------- export and evaluation


def test_exported_files_and_output_names(evaluated: Evaluated) -> None:
    import onnxruntime as ort

    files = evaluated.files
    assert files.all_exits.name == ALL_EXITS_FILE
    assert [p.name for p in files.exits] == ["exit0.onnx", "exit1.onnx", "exit2.onnx"]
    assert all(p.is_file() for p in (files.all_exits, *files.exits))
    cpu = ["CPUExecutionProvider"]
    shared = ort.InferenceSession(str(files.all_exits), providers=cpu)
    assert [o.name for o in shared.get_outputs()] == exit_output_names(3)
    for path in files.exits:
        session = ort.InferenceSession(str(path), providers=cpu)
        assert [o.name for o in session.get_outputs()] == ["logits"]
        assert (path.parent / f"{path.stem}-int8.onnx").is_file()


def test_reports_parity_accuracy_macs_and_latency(evaluated: Evaluated) -> None:
    reports, student = evaluated.reports, evaluated.student
    assert [r.index for r in reports] == [0, 1, 2]
    logits = exit_logits(student, evaluated.x)
    for r, z in zip(reports, logits, strict=True):
        assert 0 <= r.max_abs_diff <= 1e-4
        assert r.top1_torch == pytest.approx(topk_accuracy(z, evaluated.y))
        assert abs(r.top1_onnx - r.top1_torch) <= 100 / 64 + 1e-9  # at most one near-tie flips
        assert {"p50", "p90", "p99"} <= set(r.latency_ms) and r.latency_ms["runs"] == 20
        assert 0 < r.latency_ms["p50"] <= r.latency_ms["p90"] <= r.latency_ms["p99"]
        assert r.top1_int8 is not None and 0 <= r.top1_int8 <= 100
        assert r.latency_int8_ms is not None and r.latency_int8_ms["p50"] > 0
    macs = [r.macs for r in reports]
    assert macs[0] < macs[1] < macs[2] == count_macs(student.to_deploy(), SHAPE)
    models = exit_models(student)
    assert [r.params for r in reports] == [count_params(m) for m in models]
    # a cascade sample stopping at exit i also paid for heads 0..i-1
    assert reports[0].cascade_macs == macs[0]
    assert all(r.cascade_macs > r.macs for r in reports[1:])
    head0 = reports[1].cascade_macs - macs[1]
    assert reports[2].cascade_macs - macs[2] > head0 > 0


def test_parity_gate_names_the_exit(evaluated: Evaluated, tmp_path: Path) -> None:
    src = evaluated.files
    copied = ExitExport(
        Path(shutil.copy(src.all_exits, tmp_path)),
        tuple(Path(shutil.copy(p, tmp_path)) for p in src.exits),
    )
    x, y = evaluated.x[:8], evaluated.y[:8]
    fast: dict[str, Any] = {"input_shape": SHAPE, "warmup": 0, "runs": 1, "parity_samples": 8}
    # the truncated graph of exit 1 replaced by exit 0's: same shapes, other numbers
    shutil.copy(src.exits[0], copied.exits[1])
    with pytest.raises(GateError, match=r"^exit 1: exit1\.onnx .* differs from torch by") as err:
        evaluate_exits(evaluated.student, x, y, tmp_path, exported=copied, **fast)
    assert "\n" not in str(err.value)
    # a student changed after export: its exit 0 no longer matches the shared graph
    student = _student()
    with torch.no_grad():
        cast(ExitHead, student.heads[0]).fc.weight.add_(0.5)
    with pytest.raises(GateError, match=rf"^exit 0: {ALL_EXITS_FILE}"):
        evaluate_exits(student, x, y, tmp_path, exported=src, **fast)
    # NaN never passes the gate
    nan = _student()
    with torch.no_grad():
        cast(ExitHead, nan.heads[1]).fc.bias.fill_(float("nan"))
    with pytest.raises(GateError, match=r"exit 1: .* by nan"):
        evaluate_exits(nan, x, y, tmp_path, exported=src, **fast)


# ---------------------------------------------------------------------------- cascade table

# Two exits over two classes. Exit 0 confidences: 0.8, 0.5, 0.95, 0.9 (logit gaps ln 4, 0,
# ln 19, ln 9); exit 1 is confident everywhere. Labels [0, 1, 1, 1].
EXIT0 = np.array([[math.log(4), 0], [0, 0], [0, math.log(19)], [math.log(9), 0]])
EXIT1 = np.array([[0, 5.0], [0, 5.0], [5.0, 0], [5.0, 0]])
LABELS = np.array([0, 1, 1, 1])


def test_cascade_table_on_a_hand_made_example() -> None:
    rows = cascade_table([EXIT0, EXIT1], LABELS, [10, 30], thresholds=(0.7, 0.92))
    assert [r["threshold"] for r in rows] == [0.7, 0.92]
    # 0.7: samples 0, 2, 3 stop at exit 0 (predictions 0, 1, 0); sample 1 goes on (exit 1: 1)
    assert rows[0]["exit_fraction"] == [0.75, 0.25]
    assert rows[0]["top1"] == pytest.approx(75.0)  # only sample 3 wrong
    assert rows[0]["expected_macs"] == pytest.approx(0.75 * 10 + 0.25 * 30)  # 15
    assert rows[0]["macs_ratio"] == pytest.approx(15 / 30)
    # 0.92: only sample 2 stops early; exit 1 predicts 1, 1, 0 for samples 0, 1, 3
    assert rows[1]["exit_fraction"] == [0.25, 0.75]
    assert rows[1]["top1"] == pytest.approx(50.0)  # samples 1 and 2 right
    assert rows[1]["expected_macs"] == pytest.approx(25.0)
    (row,) = cascade_table([EXIT0, EXIT1], LABELS, [10, 30], (0.7,), baseline_macs=20)
    assert row["macs_ratio"] == pytest.approx(15 / 20)


def test_cascade_extremes_and_the_inclusive_threshold() -> None:
    low, half, high = cascade_table([EXIT0, EXIT1], LABELS, [10, 30], thresholds=(0, 0.5, 1.01))
    assert low["exit_fraction"] == [1.0, 0.0] and low["expected_macs"] == 10
    assert low["top1"] == pytest.approx(50.0)  # exit 0 alone: predictions 0, 0, 1, 0
    assert half["exit_fraction"] == [1.0, 0.0]  # confidence exactly 0.5 stops (>=)
    assert high["exit_fraction"] == [0.0, 1.0] and high["expected_macs"] == 30
    assert high["top1"] == pytest.approx(25.0)  # exit 1 alone: predictions 1, 1, 0, 0


def test_cascade_extremes_on_real_logits(evaluated: Evaluated) -> None:
    logits = exit_logits(evaluated.student, evaluated.x)
    costs = [r.cascade_macs for r in evaluated.reports]
    rows = cascade_table(logits, evaluated.y, costs, thresholds=(0.0, *DEFAULT_THRESHOLDS, 1.5))
    assert rows[0]["exit_fraction"] == [1.0, 0.0, 0.0]
    assert rows[0]["top1"] == pytest.approx(evaluated.reports[0].top1_torch)
    assert rows[-1]["exit_fraction"] == [0.0, 0.0, 1.0]
    assert rows[-1]["top1"] == pytest.approx(evaluated.reports[-1].top1_torch)
    assert rows[-1]["expected_macs"] == costs[-1] and rows[-1]["macs_ratio"] == 1.0
    for row in rows:
        assert sum(row["exit_fraction"]) == pytest.approx(1.0)
    expected = [r["expected_macs"] for r in rows]
    assert expected == sorted(expected)  # a stricter threshold never costs less


@pytest.mark.parametrize(
    "logits, labels, macs, thresholds",
    [
        ([EXIT0, EXIT1], LABELS, [10], (0.5,)),
        ([], LABELS, [], (0.5,)),
        ([EXIT0, EXIT1[:3]], LABELS, [10, 30], (0.5,)),
        ([EXIT0, EXIT1], LABELS[:0], [10, 30], (0.5,)),
        ([EXIT0, EXIT1], LABELS, [10, 30], (float("nan"),)),
    ],
)
def test_cascade_table_rejects_bad_input(
    logits: list[np.ndarray], labels: np.ndarray, macs: list[int], thresholds: tuple[float, ...]
) -> None:
    with pytest.raises(RecipeError):
        cascade_table(logits, labels, macs, thresholds)


# ------------------------------------------------------------------------------- reporting


def test_report_json_round_trip_and_markdown(evaluated: Evaluated, tmp_path: Path) -> None:
    logits = exit_logits(evaluated.student, evaluated.x)
    costs = [r.cascade_macs for r in evaluated.reports]
    cascade = cascade_table(logits, evaluated.y, costs, baseline_macs=evaluated.reports[-1].macs)
    path = write_exit_report(evaluated.reports, cascade, tmp_path / "exits.json")
    reports, table = read_exit_report(path)
    assert reports == evaluated.reports and table == cascade
    assert not [p for p in tmp_path.iterdir() if p.name != "exits.json"]  # no temporary left
    text = exit_report_markdown(evaluated.reports, cascade)
    lines = text.splitlines()
    assert sum(line.startswith("| exit") for line in lines) == 3 + 1  # header + one row per exit
    assert [line.split(" | ")[0] for line in lines if line.startswith("| exit")][1:] == [
        "| exit0",
        "| exit1",
        "| exit2",
    ]
    assert sum(line.startswith("| 0.") for line in lines) == len(DEFAULT_THRESHOLDS)
    assert "INT8 top-1 %" in lines[0]
    plain = [
        ExitReport(**{**r.as_dict(), "top1_int8": None, "latency_int8_ms": None}) for r in reports
    ]
    assert "INT8" not in exit_report_markdown(plain, [])

"""Every mistake a user can make is one line and an exit code, never a traceback.

Covers: unreadable recipes (not UTF-8, a folder), a bad ``--out`` (a file, not creatable,
not writable), a full disk (a real file-size limit on a child process, then a resume that
matches a clean run byte for byte), an unchanged re-run of a finished (read-only) run that
writes nothing, a run folder copied elsewhere, absurd counts, and ``validate`` refusing what
``run`` refuses before training.
"""

from __future__ import annotations

import copy
import hashlib
import os
import resource
import shutil
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from typer.testing import CliRunner

from edgedistill.cli.app import app
from edgedistill.pipeline import context

LABELS = ["left", "middle", "right"]
MODEL_FILES = (
    "distill/student.safetensors",
    "prune/student-pruned.safetensors",
    "export/student.onnx",
    "export/student-pruned.onnx",
    "export/teacher.onnx",
    "quantize/student-int8.onnx",
    "quantize/student-pruned-int8.onnx",
    "bundle/app/model.onnx",
)
DROP_DAC = [
    "--inh-caps=-dac_override,-dac_read_search",
    "--bounding-set=-dac_override,-dac_read_search",
]


@pytest.fixture(autouse=True)
def _keep_torch_threads() -> Iterator[None]:
    """The pipeline sets torch's thread count process-wide; restore it for other tests."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _recipe(idx: Path, card: Path) -> dict[str, Any]:
    """The tiny image recipe, trimmed to what these tests need (one runtime, no OpenVINO)."""
    return {
        "name": "tiny",
        "threads": 1,
        "data": {"path": str(idx), "name": "bars", "labels": LABELS},
        "teacher": {"card": str(card)},
        "student": {"arch": "convnet", "config": {"widths": [16, 32]}},
        "distill": {"epochs": 2, "batch_size": 64, "lr": 0.05},
        "prune": {"target_macs_ratio": 0.7, "finetune_epochs": 1},
        "quantize": {"calibration_samples": 64},
        "export": {"openvino": "no"},
        "profile": {
            "threads": 1,
            "batch_sizes": [1],
            "warmup": 2,
            "runs": 100,
            "runtimes": ["onnxruntime"],
        },
        "gates": {"parity_samples": 64, "int8_max_accuracy_drop": 100.0},
    }


@pytest.fixture
def recipe_dict(tiny_idx_dir: Path, tiny_teacher_card: Path) -> dict[str, Any]:
    return _recipe(tiny_idx_dir, tiny_teacher_card)


def _write(folder: Path, raw: dict[str, Any], name: str = "recipe.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def finished(
    tmp_path_factory: pytest.TempPathFactory, tiny_idx_dir: Path, tiny_teacher_card: Path
) -> tuple[Path, Path]:
    """(recipe file, run folder) of one finished clean run of the tiny recipe (CLI, 1 thread)."""
    base = tmp_path_factory.mktemp("finished")
    recipe = _write(base, _recipe(tiny_idx_dir, tiny_teacher_card))
    out = base / "run"
    threads = torch.get_num_threads()
    try:
        result = CliRunner().invoke(app, ["run", str(recipe), "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    return recipe, out


def _tree(root: Path) -> dict[str, tuple[str, int]]:
    """{relative path: (sha256, mtime in ns)} of every file under ``root``."""
    return {
        str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _one_line(text: str) -> str:
    lines = text.splitlines()
    assert len(lines) == 1, f"expected exactly one line, got {lines!r}"
    return lines[0]


def _error_line(text: str) -> str:
    """The one ``error:`` line of a run's stderr (progress lines may precede it)."""
    assert "Traceback" not in text, text
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, text
    return errors[0]


def _cli(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


def _subprocess_env() -> dict[str, str]:
    return {**os.environ, "COLUMNS": "250", "NO_COLOR": "1"}


def _unprivileged() -> list[str] | None:
    """A command prefix that runs a child without root's permission override, or None.

    As root, chmod does not stop writes; ``setpriv`` dropping CAP_DAC_OVERRIDE makes the
    kernel check permissions as for any user (the files stay readable: root owns them).
    """
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return None
    probe = subprocess.run([setpriv, *DROP_DAC, "true"], capture_output=True, check=False)
    return [setpriv, *DROP_DAC] if probe.returncode == 0 else None


def _make_read_only(root: Path) -> None:
    for path in [root, *root.rglob("*")]:
        mode = path.stat().st_mode
        path.chmod(stat.S_IMODE(mode) & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def _make_writable(root: Path) -> None:
    for path in [root, *root.rglob("*")]:
        path.chmod(stat.S_IMODE(path.stat().st_mode) | stat.S_IWUSR)


# ---- the recipe file --------------------------------------------------------------------


@pytest.mark.parametrize("command", ["validate", "run"])
def test_recipe_that_is_not_utf8_is_one_line(tmp_path: Path, command: str) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_bytes(b"name: tiny\n# caf\xe9 latin-1\n")
    out = tmp_path / "out"
    result = _cli(command, str(path), *(["--out", str(out)] if command == "run" else []))
    assert result.exit_code == 2
    line = _one_line(result.stderr)
    assert line.startswith("error: ") and str(path) in line
    assert "not UTF-8" in line and "0xe9" in line and "line 2" in line
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert not out.exists()


def test_recipe_path_that_is_a_folder_says_so(tmp_path: Path) -> None:
    result = _cli("validate", str(tmp_path))
    assert result.exit_code == 2
    line = _one_line(result.stderr)
    assert str(tmp_path) in line and "is a folder" in line and "does not exist" not in line


# ---- --out ------------------------------------------------------------------------------


def test_out_that_is_a_file_is_refused_before_anything(
    tmp_path: Path, recipe_dict: dict[str, Any]
) -> None:
    recipe = _write(tmp_path, recipe_dict)
    out = tmp_path / "out.txt"
    out.write_text("keep me")
    result = _cli("run", str(recipe), "--out", str(out))
    assert result.exit_code == 2
    line = _one_line(result.stderr)
    assert str(out) in line and "is a file" in line and "--out" in line
    assert out.read_text() == "keep me"


def test_out_below_a_file_cannot_be_created(tmp_path: Path, recipe_dict: dict[str, Any]) -> None:
    recipe = _write(tmp_path, recipe_dict)
    (tmp_path / "blocker").write_text("")
    out = tmp_path / "blocker" / "run"
    result = _cli("distill", str(recipe), "--out", str(out))
    assert result.exit_code == 2
    line = _one_line(result.stderr)
    assert str(out) in line and "cannot be created" in line


def test_unwritable_out_is_refused_checked_like_the_kernel(
    tmp_path: Path, recipe_dict: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The code path, in-process: ``os.access`` says no (as it does for a non-root user on a
    0o500 folder); nothing is written and the message names the folder."""
    recipe = _write(tmp_path, recipe_dict)
    out = tmp_path / "locked"
    out.mkdir()
    out.chmod(0o500)
    real_access = os.access
    locked = out.resolve()

    def access(path: Any, mode: int, **kwargs: Any) -> bool:
        if Path(path).resolve() == locked and mode & os.W_OK:
            return False
        return real_access(path, mode, **kwargs)

    monkeypatch.setattr(context.os, "access", access)
    try:
        result = _cli("run", str(recipe), "--out", str(out))
        assert result.exit_code == 2
        line = _one_line(result.stderr)
        assert str(locked) in line and "not writable" in line and "--out" in line
        assert list(out.iterdir()) == []
    finally:
        out.chmod(0o755)


def test_unwritable_out_for_real(tmp_path: Path, recipe_dict: dict[str, Any]) -> None:
    """A child without permission override (a non-root user, or root without
    CAP_DAC_OVERRIDE) on a 0o500 folder: one line, exit 2, nothing written."""
    prefix = _unprivileged()
    if prefix is None:
        pytest.skip("cannot run a child without root's permission override here")
    recipe = _write(tmp_path, recipe_dict)
    out = tmp_path / "locked"
    out.mkdir()
    out.chmod(0o500)
    try:
        proc = subprocess.run(
            [*prefix, sys.executable, "-m", "edgedistill", "run", str(recipe), "--out", str(out)],
            capture_output=True,
            text=True,
            env=_subprocess_env(),
            timeout=300,
            check=False,
        )
        assert proc.returncode == 2, proc.stderr
        line = _one_line(proc.stderr)
        assert "Traceback" not in proc.stderr
        assert str(out) in line and "not writable" in line
        assert list(out.iterdir()) == []
    finally:
        out.chmod(0o755)


# ---- re-runs of a finished run ----------------------------------------------------------


def test_unchanged_rerun_writes_nothing(finished: tuple[Path, Path], tmp_path: Path) -> None:
    recipe, source = finished
    out = tmp_path / "run"
    shutil.copytree(source, out)  # copy2: bytes and mtimes kept
    result = _cli("run", str(recipe), "--out", str(out))  # one rewrite for the new folder
    assert result.exit_code == 0, result.output
    before = _tree(out)
    again = _cli("run", str(recipe), "--out", str(out))
    assert again.exit_code == 0, again.output
    assert again.stderr.count("unchanged, skipped") == 9
    after = _tree(out)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert changed == []  # summary.json, recipe.json, manifests, logs: bytes and mtimes


def test_unchanged_rerun_of_a_read_only_run_succeeds(
    finished: tuple[Path, Path], tmp_path: Path
) -> None:
    prefix = _unprivileged()
    if prefix is None:
        pytest.skip("cannot run a child without root's permission override here")
    recipe, source = finished
    out = tmp_path / "run"
    shutil.copytree(source, out)
    # Settle the copy in its new folder first (its summary paths name the new folder).
    assert _cli("report", str(recipe), "--out", str(out)).exit_code == 0
    before = _tree(out)
    _make_read_only(out)
    try:
        proc = subprocess.run(
            [*prefix, sys.executable, "-m", "edgedistill", "run", str(recipe), "--out", str(out)],
            capture_output=True,
            text=True,
            env=_subprocess_env(),
            timeout=300,
            check=False,
        )
        after = _tree(out)
    finally:
        _make_writable(out)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "error" not in proc.stderr
    assert after == before
    assert f"bundle:  {out / 'bundle' / 'app'}" in proc.stdout


def test_copied_run_folder_reports_its_own_paths(
    finished: tuple[Path, Path], tmp_path: Path
) -> None:
    recipe, source = finished
    out = tmp_path / "moved"
    shutil.copytree(source, out)
    result = _cli("run", str(recipe), "--out", str(out))
    assert result.exit_code == 0, result.output
    assert f"bundle:  {out / 'bundle' / 'app'}" in result.stdout
    assert f"report:  {out / 'report' / 'report.html'}" in result.stdout
    assert str(source) not in result.stdout
    summary = yaml.safe_load((out / "summary.json").read_text())
    assert summary["bundle"] == str(out / "bundle" / "app")
    assert summary["report"] == str(out / "report" / "report.html")
    assert str(source) not in (out / "summary.json").read_text()


# ---- a full disk ------------------------------------------------------------------------


def _file_size_limit(limit: int) -> None:
    """In the child before exec: writes past ``limit`` bytes fail with EFBIG (SIGXFSZ, which
    would kill the process, is ignored, and stays ignored across exec)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def test_full_disk_is_one_line_and_the_run_resumes_to_a_clean_runs_files(
    finished: tuple[Path, Path], tmp_path: Path
) -> None:
    recipe, clean = finished
    out = tmp_path / "run"
    # Every file up to the export stage fits; the teacher's ONNX file does not.
    limit = (clean / "export" / "teacher.onnx").stat().st_size - 1
    command = [sys.executable, "-m", "edgedistill", "run", str(recipe), "--out", str(out)]
    proc = subprocess.run(
        command,
        capture_output=True,
        text=True,
        env=_subprocess_env(),
        timeout=600,
        check=False,
        preexec_fn=lambda: _file_size_limit(limit),
    )
    assert proc.returncode == 5, proc.stderr
    line = _error_line(proc.stderr)
    assert "File too large" in line and "run the same command again" in line
    named = line.removeprefix("error: cannot write ").split(":", 1)[0]
    assert Path(named).is_relative_to(out), line
    assert proc.stderr.rstrip().endswith(line)
    assert not (out / "report" / "manifest.json").exists()
    assert [p for p in out.rglob("*") if ".tmp" in p.name] == []

    resumed = subprocess.run(
        command, capture_output=True, text=True, env=_subprocess_env(), timeout=600, check=False
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "distill   unchanged, skipped" in resumed.stderr  # finished stages were kept
    for name in MODEL_FILES:
        assert (out / name).read_bytes() == (clean / name).read_bytes(), name


# ---- absurd counts ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("section", "key", "value", "limit"),
    [
        ("distill", "epochs", 1_000_000_000_000, "10,000"),
        ("distill", "batch_size", 10_000_000, "65,536"),
        ("distill", "teacher_batch_size", 10_000_000, "65,536"),
        ("prune", "finetune_epochs", 50_000, "10,000"),
        ("quantize", "calibration_samples", 10**9, "100,000"),
        ("profile", "runs", 10**9, "1,000,000"),
        ("profile", "warmup", 10**9, "100,000"),
        ("profile", "threads", 100_000, "1,024"),
        ("gates", "parity_samples", 10**9, "1,000,000"),
    ],
)
def test_absurd_counts_are_refused_with_the_limit(
    tmp_path: Path, recipe_dict: dict[str, Any], section: str, key: str, value: int, limit: str
) -> None:
    raw = copy.deepcopy(recipe_dict)
    raw[section][key] = value
    result = _cli("validate", str(_write(tmp_path, raw)))
    assert result.exit_code == 2
    line = _one_line(result.stderr)
    assert f"{section}.{key} = {value}" in line and f"at most {limit}" in line


def test_negative_seed_is_refused(tmp_path: Path, recipe_dict: dict[str, Any]) -> None:
    result = _cli("validate", str(_write(tmp_path, {**recipe_dict, "seed": -1})))
    assert result.exit_code == 2
    assert "seed = -1" in _one_line(result.stderr)


def test_profile_batch_sizes_are_bounded(tmp_path: Path, recipe_dict: dict[str, Any]) -> None:
    raw = copy.deepcopy(recipe_dict)
    raw["profile"]["batch_sizes"] = [1, 10**8]
    result = _cli("validate", str(_write(tmp_path, raw)))
    assert result.exit_code == 2
    assert "at most 65,536" in _one_line(result.stderr)


# ---- validate checks what run checks ----------------------------------------------------


def _teacher_copy(tmp_path: Path, card: Path, damage: str) -> Path:
    folder = tmp_path / f"teacher-{damage}"
    shutil.copytree(card.parent, folder)
    weights = folder / "teacher.safetensors"
    if damage == "missing":
        weights.unlink()
    else:
        weights.write_bytes(weights.read_bytes()[:100])
    return folder / card.name


def _bad_recipe(
    case: str, raw: dict[str, Any], tmp_path: Path, card: Path
) -> tuple[dict[str, Any], str]:
    """(a recipe that ``run`` refuses before training, a phrase of the expected error)."""
    raw = copy.deepcopy(raw)
    if case == "unknown_arch":
        raw["student"]["arch"] = "resnet9000"
        return raw, "unknown model architecture 'resnet9000'"
    if case == "bad_student_args":
        raw["student"]["config"]["depth_multiplier"] = 3
        return raw, "depth_multiplier"
    if case == "student_classes":
        raw["student"]["config"]["num_classes"] = 5
        return raw, "outputs 5 classes but the data has 3"
    if case == "teacher_classes":
        raw["data"]["labels"] = [*LABELS, "extra"]
        return raw, "outputs 3 classes but the data has 4"
    if case == "labels_too_few":
        raw["data"]["labels"] = LABELS[:2]
        return raw, "2 classes"
    if case == "teacher_missing":
        raw["teacher"]["card"] = str(_teacher_copy(tmp_path, card, "missing"))
        return raw, "does not exist"
    if case == "teacher_corrupt":
        raw["teacher"]["card"] = str(_teacher_copy(tmp_path, card, "truncated"))
        return raw, "sha256"
    if case == "empty_data":
        (tmp_path / "empty").mkdir()
        raw["data"]["path"] = str(tmp_path / "empty")
        return raw, str(tmp_path / "empty")
    raise AssertionError(case)


@pytest.mark.parametrize(
    "case",
    [
        "unknown_arch",
        "bad_student_args",
        "student_classes",
        "teacher_classes",
        "labels_too_few",
        "teacher_missing",
        "teacher_corrupt",
        "empty_data",
    ],
)
def test_validate_refuses_what_run_refuses(
    tmp_path: Path, recipe_dict: dict[str, Any], tiny_teacher_card: Path, case: str
) -> None:
    raw, phrase = _bad_recipe(case, recipe_dict, tmp_path, tiny_teacher_card)
    recipe = _write(tmp_path, raw)
    checked = _cli("validate", str(recipe))
    assert checked.exit_code not in (0, 1), checked.output
    line = _one_line(checked.stderr)
    assert line.startswith("error: ") and phrase in line, line

    out = tmp_path / "out"
    ran = _cli("run", str(recipe), "--out", str(out))
    assert ran.exit_code == checked.exit_code
    assert _error_line(ran.stderr) == line  # the same check, the same words
    assert not (out / "distill" / "manifest.json").exists()
    assert not (out / "distill" / "checkpoint.pt").exists()  # refused before training


def test_validate_prints_what_it_checked_and_an_estimate(
    tmp_path: Path, recipe_dict: dict[str, Any]
) -> None:
    recipe = _write(tmp_path, recipe_dict)
    result = _cli("validate", str(recipe))
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    assert lines[0].startswith("ok: ") and "'tiny'" in lines[0]
    text = "\n".join(lines)
    assert "384 train / 192 test, 3 classes" in text
    assert "student: convnet" in text and "3 classes" in text
    assert "teacher: tiny-teacher, convnet, weights sha256 checked" in text
    estimate = next(line for line in lines if "estimate:" in line)
    # 384 samples / batch 64 = 6 steps per epoch: 2 distill epochs + 1 recovery epoch.
    assert "18 steps" in estimate and "an estimate" in estimate
    assert not (tmp_path / "runs").exists()

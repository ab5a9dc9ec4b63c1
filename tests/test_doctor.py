"""``edgedistill doctor`` and ``--version``: the row builders on fake inputs, the CLI end to end."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from edgedistill.bench.doctor import (
    LOW_DISK_BYTES,
    SECTIONS,
    Check,
    cpu_flags,
    gpu_checks,
    instruction_set_checks,
    python_checks,
    report_dict,
    required_missing,
    runtime_checks,
    thread_check,
)
from edgedistill.bench.doctor_assets import data_checks, disk_check, teacher_check, teacher_checks
from edgedistill.cli.app import app

CPUINFO_VNNI = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512_vnni avx512_bf16 amx_tile amx_int8 amx_bf16

processor\t: 1
flags\t\t: fpu sse2 avx avx2
"""
CPUINFO_AVX2 = "model name\t: AMD EPYC\nflags\t\t: fpu sse2 avx avx2 fma\n"
CPUINFO_ARM = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes crc32 asimddp\n"


def _by_name(rows: list[Check]) -> dict[str, Check]:
    return {row.name: row for row in rows}


def test_cpu_flags_reads_first_flags_line_only() -> None:
    flags = cpu_flags(CPUINFO_VNNI)
    assert {"avx2", "avx512_vnni", "amx_int8"} <= flags
    assert "fpu" in flags and len(flags) == 11
    assert cpu_flags(CPUINFO_ARM) == {"fp", "asimd", "evtstrm", "aes", "crc32", "asimddp"}
    assert cpu_flags("model name: x\n") == frozenset()


def test_instruction_sets_with_vnni_and_amx() -> None:
    rows = _by_name(instruction_set_checks(cpu_flags(CPUINFO_VNNI)))
    assert [r.status for r in rows.values()] == ["ok"] * 5
    assert (
        "avx512_vnni" in rows["VNNI"].detail and "reduce_range may be false" in rows["VNNI"].detail
    )
    assert "amx_int8" in rows["AMX"].detail
    assert all(r.section == "cpu" and not r.required for r in rows.values())


def test_instruction_sets_without_vnni_warn_about_reduce_range() -> None:
    rows = _by_name(instruction_set_checks(cpu_flags(CPUINFO_AVX2)))
    assert rows["AVX2"].status == "ok"
    assert {n for n, r in rows.items() if r.status == "warn"} == {
        "AVX-512F",
        "VNNI",
        "AVX-512 BF16",
        "AMX",
    }
    assert "reduce_range must stay true" in rows["VNNI"].detail
    # avx_vnni (AVX2-class VNNI on client CPUs) counts as VNNI too.
    vnni = _by_name(instruction_set_checks(frozenset({"avx2", "avx_vnni"})))["VNNI"]
    assert vnni.status == "ok" and "avx_vnni" in vnni.detail
    # AMX tiles without amx_int8 are bf16 only.
    amx = _by_name(instruction_set_checks(frozenset({"amx_tile"})))["AMX"]
    assert amx.status == "ok" and "bf16 only" in amx.detail


def test_instruction_sets_arm_and_unknown() -> None:
    rows = _by_name(instruction_set_checks(cpu_flags(CPUINFO_ARM)))
    assert rows["NEON"].status == "ok" and rows["dot product"].status == "ok"
    assert rows["fp16"].status == "warn"
    (only,) = instruction_set_checks(frozenset())
    assert only.status == "warn" and "cannot read" in only.detail


def test_runtime_checks_from_fake_status() -> None:
    status: dict[str, dict[str, Any]] = {
        "torch": {"installed": True, "precisions": ["fp32"], "needs_gpu": False, "install": None},
        "onnxruntime": {
            "installed": False,
            "precisions": ["fp32", "int8"],
            "needs_gpu": False,
            "install": "pip install 'edgedistill[core]'",
        },
        "openvino": {
            "installed": False,
            "precisions": ["fp32", "int8"],
            "needs_gpu": False,
            "install": "pip install 'edgedistill[openvino]'",
        },
        "tensorrt": {
            "installed": True,
            "precisions": ["fp32", "fp16", "int8"],
            "needs_gpu": True,
            "gpu": False,
            "install": None,
        },
        "torch-cuda": {
            "installed": True,
            "precisions": ["fp32", "fp16"],
            "needs_gpu": True,
            "gpu": True,
            "install": None,
        },
    }
    rows = _by_name(runtime_checks(status))
    assert rows["torch"].status == "ok" and rows["torch"].required
    assert rows["onnxruntime"].status == "missing" and rows["onnxruntime"].required
    assert rows["openvino"].status == "missing" and not rows["openvino"].required
    assert rows["openvino"].fix == "pip install 'edgedistill[openvino]'"
    assert rows["tensorrt"].status == "warn" and "no CUDA GPU" in rows["tensorrt"].detail
    assert rows["torch-cuda"].status == "ok" and rows["torch-cuda"].detail == "fp32/fp16 on GPU"
    assert [r.name for r in required_missing(list(rows.values()))] == ["onnxruntime"]


def test_python_checks() -> None:
    rows = _by_name(python_checks((3, 10, 4), "2.14.1", "13.0", False, None))
    assert rows["python"].status == "missing" and rows["python"].required
    assert rows["torch"].status == "ok" and "CUDA 13.0 build" in rows["torch"].detail
    assert rows["torch CUDA"].status == "warn"
    assert rows["torchvision"].status == "missing"
    ok = _by_name(python_checks((3, 11, 7), "2.13.0+cpu", None, False, "0.28.0"))
    assert all(r.status == "ok" for r in ok.values())
    assert "CPU-only build" in ok["torch"].detail
    assert _by_name(python_checks((3, 11, 0), None))["torch"].status == "missing"


def test_gpu_checks() -> None:
    (no_gpu, trt) = gpu_checks({}, tensorrt_importable=False)
    assert no_gpu.detail.startswith("no NVIDIA GPU") and no_gpu.status == "warn"
    assert trt.status == "warn"  # TensorRT is not expected without a GPU
    env = {
        "driver": "570.1",
        "cuda_driver": "12.8",
        "gpus": [
            {"index": 0, "name": "NVIDIA H200", "memory_total_mib": 143771,
             "compute_capability": "9.0"},
        ],
    }  # fmt: skip
    rows = _by_name(gpu_checks(env, tensorrt_importable=False))
    assert "570.1" in rows["driver"].detail and "12.8" in rows["driver"].detail
    assert "NVIDIA H200, 143771 MiB" in rows["GPU 0"].detail
    assert rows["tensorrt"].status == "missing" and "edgedistill[trt]" in str(rows["tensorrt"].fix)
    assert _by_name(gpu_checks(env, tensorrt_importable=True))["tensorrt"].status == "ok"


def test_thread_and_disk_checks(tmp_path: Path) -> None:
    assert thread_check(16, 16).status == "ok"
    assert thread_check(16, 2).status == "warn"
    low = disk_check(tmp_path / "runs" / "not-yet", free_bytes=LOW_DISK_BYTES - 1)
    assert low.status == "warn" and "2.0 GiB" in low.detail and str(tmp_path) in low.detail
    assert disk_check(tmp_path, free_bytes=LOW_DISK_BYTES).status == "ok"
    real = disk_check(tmp_path / "missing")  # measured on the nearest existing parent
    assert real.section == "disk" and "GiB free" in real.detail


def _card(folder: Path, data: bytes, pinned: bytes | None = None, **extra: Any) -> Path:
    (folder / "weights").mkdir(exist_ok=True)
    (folder / "weights" / "w.safetensors").write_bytes(data)
    raw = {
        "name": "tiny",
        "arch": "convnet",
        "weights": "weights/w.safetensors",
        "sha256": hashlib.sha256(data if pinned is None else pinned).hexdigest(),
        **extra,
    }
    card = folder / "tiny.yaml"
    card.write_text(yaml.safe_dump(raw))
    return card


def test_teacher_card_ok_mismatch_and_missing_file(tmp_path: Path) -> None:
    card = _card(tmp_path, b"weights")
    ok = teacher_check(card)
    assert ok.status == "ok" and "sha256 matches" in ok.detail and " s)" in ok.detail
    bad = teacher_check(
        _card(tmp_path, b"weights", pinned=b"other", trained={"command": "python train.py"})
    )
    assert bad.status == "missing" and "hash mismatch" in bad.detail
    assert bad.fix == "retrain: python train.py"
    # --no-hash locates the file without hashing: the wrong hash is not noticed.
    assert teacher_check(card, hash_weights=False).status == "ok"
    (tmp_path / "weights" / "w.safetensors").unlink()
    for hashed in (True, False):
        gone = teacher_check(card, hash_weights=hashed)
        assert gone.status == "missing" and "does not exist" in gone.detail


def test_teacher_card_missing_package(tmp_path: Path) -> None:
    raw = {
        "name": "packaged",
        "arch": "crepe",
        "package": "surely_not_installed_pkg",
        "weights": "assets/full.pth",
        "sha256": "0" * 64,
        "install": "pip install --no-deps surely-not-installed-pkg==1.0",
    }
    card = tmp_path / "packaged.yaml"
    card.write_text(yaml.safe_dump(raw))
    for hashed in (True, False):
        row = teacher_check(card, hash_weights=hashed)
        assert row.status == "missing" and "surely_not_installed_pkg" in row.detail
        assert row.fix == raw["install"]
    assert teacher_checks(tmp_path / "none")[0].status == "warn"


def test_data_checks_with_fakes(tmp_path: Path) -> None:
    rows = _by_name(
        data_checks(tmp_path, which=lambda p: None, package_data=lambda pkg, rel: pkg == "seglearn")
    )
    assert rows["fashion-mnist"].status == "missing"
    assert rows["fashion-mnist"].fix == "apt-get install dataset-fashion-mnist"
    assert rows["seglearn-watch"].status == "ok"
    assert rows["rotten-tomatoes"].status == "missing"
    assert rows["espeak-ng"].fix == "apt-get install espeak-ng"
    for name in ("train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz"):
        (tmp_path / name).write_bytes(b"")
    rows = _by_name(data_checks(tmp_path, which=lambda p: f"/usr/bin/{p}"))
    assert rows["fashion-mnist"].status == "ok" and rows["flite"].detail == "/usr/bin/flite"


def test_report_dict_sections_and_counts() -> None:
    rows = [
        Check("python", "torch", "ok", "2.14"),
        Check("cpu", "VNNI", "warn", "absent"),
        Check("runtimes", "onnxruntime", "missing", "x", "pip install onnxruntime", True),
    ]
    report = report_dict(rows, 1.23456)
    assert tuple(report["sections"]) == SECTIONS
    assert report["counts"] == {"ok": 1, "missing": 1, "warn": 1}
    assert report["required_missing"] == ["onnxruntime"]
    assert report["seconds"] == 1.235
    json.dumps(report)


def test_doctor_json_cli(tmp_path: Path) -> None:
    _card(tmp_path, b"weights")
    result = CliRunner().invoke(
        app, ["doctor", "--json", "--out", str(tmp_path / "runs"), "--teachers", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert set(report["sections"]) == set(SECTIONS)
    assert all(report["sections"][s] for s in SECTIONS)  # every section has rows
    (teacher,) = report["sections"]["teachers"]
    assert teacher["name"] == "tiny" and teacher["status"] == "ok"
    runtimes = {r["name"]: r for r in report["sections"]["runtimes"]}
    assert runtimes["torch"]["status"] == "ok"
    assert report["edgedistill"] == importlib.metadata.version("edgedistill")


def test_doctor_strict_exit_code(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import edgedistill.bench.doctor as doctor

    missing = [Check("runtimes", "onnxruntime", "missing", "x", "pip install onnxruntime", True)]
    monkeypatch.setattr(doctor, "collect", lambda out, cards, hash_weights: missing)
    runner = CliRunner()
    assert runner.invoke(app, ["doctor", "--json"]).exit_code == 0
    strict = runner.invoke(app, ["doctor", "--strict", "--no-hash"])
    assert strict.exit_code == 4
    assert "onnxruntime" in strict.output


def test_version() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"edgedistill {importlib.metadata.version('edgedistill')}"

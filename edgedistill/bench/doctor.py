"""What this machine can do, checked before a run rather than discovered ten minutes into one.

``edgedistill doctor`` prints the rows these functions return: Python and torch, every runtime
of :func:`edgedistill.runtime.registry.runtime_status`, ONNX Runtime's providers and OpenVINO's
devices, the CPU's instruction sets and what they mean for INT8, the GPU, the offline teachers
(their weights' sha256 checked against the cards, never building a model), the offline data
sets and the free disk of the run folder.

Each row is a :class:`Check` with a status: ``ok``, ``missing`` (with what to install) or
``warn`` (works, but slower or with a caveat). A row marked ``required`` is something the
default chain cannot run without; ``doctor --strict`` fails when one of those is missing.
The row builders take their inputs as arguments (cpuinfo text, a ``runtime_status`` dict, a
GPU description, a card folder) so they are tested on fake inputs; :func:`collect` feeds them
this machine.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

Status = Literal["ok", "missing", "warn"]

LOW_DISK_BYTES = 2 * 1024**3
"""Below this much free space in the run folder a run may fail writing checkpoints/exports."""

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
CORE_RUNTIMES = ("torch", "onnxruntime")
"""Runtimes the default chain profiles on (``--strict`` fails without them)."""
SECTIONS = ("python", "runtimes", "cpu", "gpu", "teachers", "data", "disk")


@dataclass(frozen=True)
class Check:
    """One row of the doctor's table.

    Attributes:
        section: One of :data:`SECTIONS`.
        name: What was checked ("torch", "AVX-512 VNNI", a card name, ...).
        status: ``ok``, ``missing`` or ``warn``.
        detail: What was found (a version, a device list, what a flag means).
        fix: What to install or do when not ok (one line), else None.
        required: Whether the default chain needs it (``--strict`` fails when it is missing).
    """

    section: str
    name: str
    status: Status
    detail: str
    fix: str | None = None
    required: bool = False

    def as_dict(self) -> dict[str, Any]:
        """The row as plain JSON types."""
        return asdict(self)


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


# --- Python, torch -------------------------------------------------------------------------


def python_checks(
    python: tuple[int, int, int] | None = None,
    torch_version: str | None = None,
    torch_cuda: str | None = None,
    cuda_available: bool = False,
    torchvision_version: str | None = None,
) -> list[Check]:
    """Rows for Python, torch (CUDA build or not, GPU visible or not) and torchvision.

    Args:
        python: (major, minor, micro); None reads this interpreter.
        torch_version: ``torch.__version__`` (None: not installed).
        torch_cuda: ``torch.version.cuda`` (None: a CPU-only build).
        cuda_available: ``torch.cuda.is_available()``.
        torchvision_version: installed torchvision version (None: not installed).
    """
    major, minor, micro = python or tuple(sys.version_info[:3])  # type: ignore[misc]
    rows = [
        Check(
            "python",
            "python",
            "ok" if (major, minor) >= (3, 11) else "missing",
            f"{major}.{minor}.{micro}",
            None if (major, minor) >= (3, 11) else "edgedistill needs Python >= 3.11",
            required=True,
        )
    ]
    if torch_version is None:
        rows.append(Check("python", "torch", "missing", "not installed", "pip install torch", True))
    else:
        build = f"CUDA {torch_cuda} build" if torch_cuda else "CPU-only build"
        rows.append(Check("python", "torch", "ok", f"{torch_version} ({build})", required=True))
        if torch_cuda and not cuda_available:
            rows.append(
                Check(
                    "python",
                    "torch CUDA",
                    "warn",
                    "CUDA build, but torch.cuda.is_available() is False: GPU runtimes are off",
                    "check the NVIDIA driver (nvidia-smi) and CUDA_VISIBLE_DEVICES",
                )
            )
        else:
            seen = "a CUDA device is visible" if cuda_available else "no CUDA device (CPU only)"
            rows.append(Check("python", "torch CUDA", "ok", seen))
    rows.append(
        Check("python", "torchvision", "ok", torchvision_version)
        if torchvision_version
        else Check(
            "python",
            "torchvision",
            "missing",
            "not installed",
            "pip install torchvision (the same release line as torch)",
            True,
        )
    )
    return rows


# --- runtimes ------------------------------------------------------------------------------


def runtime_checks(status: dict[str, dict[str, Any]]) -> list[Check]:
    """Rows from :func:`edgedistill.runtime.registry.runtime_status` output.

    A CPU runtime of the core install (torch, onnxruntime) is required; an installed GPU
    runtime on a machine without a CUDA device is a warning, not a missing package.
    """
    rows = []
    for name, entry in status.items():
        precisions = "/".join(entry.get("precisions", ()))
        needs_gpu = bool(entry.get("needs_gpu"))
        required = name in CORE_RUNTIMES
        if not entry.get("installed"):
            rows.append(
                Check(
                    "runtimes",
                    name,
                    "missing",
                    f"not installed ({precisions})",
                    entry.get("install"),
                    required,
                )
            )
        elif needs_gpu and not entry.get("gpu"):
            rows.append(Check("runtimes", name, "warn", f"installed ({precisions}); no CUDA GPU"))
        else:
            where = "GPU" if needs_gpu else "CPU"
            rows.append(Check("runtimes", name, "ok", f"{precisions} on {where}", None, required))
    return rows


def onnxruntime_check() -> Check:
    """ONNX Runtime's version and execution providers (imported here, guarded)."""
    try:
        import onnxruntime

        providers = ", ".join(onnxruntime.get_available_providers())
        return Check(
            "runtimes", "onnxruntime providers", "ok", f"{onnxruntime.__version__}: {providers}"
        )
    except Exception as exc:  # ImportError, or a broken install (missing shared library)
        return Check(
            "runtimes",
            "onnxruntime providers",
            "missing",
            f"cannot import: {type(exc).__name__}",
            "pip install onnxruntime (or onnxruntime-gpu, never both)",
            required=True,
        )


def openvino_check() -> Check:
    """OpenVINO's version and the devices its Core sees (imported here, guarded)."""
    if importlib.util.find_spec("openvino") is None:
        return Check(
            "runtimes", "openvino devices", "missing", "not installed",
            "pip install 'edgedistill[openvino]'",
        )  # fmt: skip
    try:
        import openvino

        devices = ", ".join(openvino.Core().available_devices) or "none"
        return Check("runtimes", "openvino devices", "ok", f"{openvino.__version__}: {devices}")
    except Exception as exc:  # a broken install: report, never crash the doctor
        return Check(
            "runtimes", "openvino devices", "warn", f"installed but failed: {exc}".splitlines()[0],
            "pip install --force-reinstall 'edgedistill[openvino]'",
        )  # fmt: skip


# --- CPU -----------------------------------------------------------------------------------

# (row name, flags any of which means present, meaning when present, meaning when absent)
INSTRUCTION_SETS: tuple[tuple[str, tuple[str, ...], str, str], ...] = (
    (
        "AVX2",
        ("avx2",),
        "baseline fast fp32 kernels (ONNX Runtime, OpenVINO, torch)",
        "fp32 kernels fall back to SSE: expect several times slower CPU latency",
    ),
    (
        "AVX-512F",
        ("avx512f",),
        "512-bit fp32 kernels",
        "256-bit kernels only (fine; AVX2 is what most edge x86 has)",
    ),
    (
        "VNNI",
        ("avx512_vnni", "avx_vnni"),
        "INT8 ONNX Runtime kernels fast; quantize.reduce_range may be false",
        "INT8 kernels add u8 x s8 pairs in int16 and saturate: quantize.reduce_range must "
        "stay true, and INT8 speed-ups are small",
    ),
    (
        "AVX-512 BF16",
        ("avx512_bf16",),
        "OpenVINO runs fp32 IR in bf16 by default: set INFERENCE_PRECISION_HINT=f32 for parity",
        "OpenVINO runs fp32 in fp32",
    ),
    (
        "AMX",
        ("amx_tile",),
        "AMX tiles: bf16/INT8 matrix units (OpenVINO, oneDNN) much faster than fp32",
        "no AMX matrix units",
    ),
)

ARM_INSTRUCTION_SETS: tuple[tuple[str, tuple[str, ...], str, str], ...] = (
    ("NEON", ("asimd",), "fp32 SIMD kernels", "scalar kernels only: slow"),
    (
        "dot product",
        ("asimddp",),
        "INT8 dot-product kernels fast",
        "INT8 kernels without SDOT: small INT8 speed-ups",
    ),
    ("fp16", ("fphp", "asimdhp"), "fp16 arithmetic available", "no fp16 arithmetic"),
)


def cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The instruction-set flags of ``/proc/cpuinfo`` text (x86 ``flags``, ARM ``Features``).

    Only the first such line is read: every core of one CPU lists the same flags.
    """
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def instruction_set_checks(flags: frozenset[str]) -> list[Check]:
    """One row per instruction set that matters for edge inference, with what it means.

    Absent sets are warnings (the chain still runs, slower or with a caveat); AMX needs both
    ``amx_tile`` and ``amx_int8`` for INT8. No flags at all (not Linux, or an unknown CPU) is
    one warning row.
    """
    if not flags:
        return [Check("cpu", "instruction sets", "warn", "cannot read /proc/cpuinfo flags")]
    table = ARM_INSTRUCTION_SETS if "asimd" in flags else INSTRUCTION_SETS
    rows = []
    for name, any_of, present, absent in table:
        found = sorted(f for f in any_of if f in flags)
        if found:
            detail = f"{', '.join(found)}: {present}"
            if name == "AMX" and "amx_int8" not in flags:
                detail = f"{detail} (no amx_int8: bf16 only)"
            elif name == "AMX":
                detail = f"amx_tile, amx_int8: {present}"
            rows.append(Check("cpu", name, "ok", detail))
        else:
            rows.append(Check("cpu", name, "warn", f"absent: {absent}"))
    return rows


def thread_check(cpu_count: int | None, torch_threads: int | None) -> Check:
    """Logical CPUs and torch's intra-op threads; fewer threads than CPUs is a warning."""
    detail = f"{cpu_count} logical CPUs, torch uses {torch_threads} threads"
    if cpu_count and torch_threads and torch_threads < cpu_count // 2:
        return Check(
            "cpu", "threads", "warn", detail,
            "OMP_NUM_THREADS or torch.set_num_threads limits training speed",
        )  # fmt: skip
    return Check("cpu", "threads", "ok", detail)


# --- GPU -----------------------------------------------------------------------------------


def gpu_checks(env: dict[str, Any], tensorrt_importable: bool) -> list[Check]:
    """Rows from :func:`edgedistill.bench.device_env.gpu_environment` output and TensorRT.

    Args:
        env: ``{}`` when there is no NVIDIA driver, else driver, cuda_driver and gpus.
        tensorrt_importable: Whether ``import tensorrt`` would work.
    """
    if not env.get("gpus"):
        rows = [Check("gpu", "NVIDIA GPU", "warn", "no NVIDIA GPU (CPU runtimes only)")]
    else:
        rows = [
            Check(
                "gpu",
                "driver",
                "ok",
                f"driver {env.get('driver')}, CUDA driver {env.get('cuda_driver')}",
            )
        ]
        for gpu in env["gpus"]:
            memory = gpu.get("memory_total_mib")
            cc = gpu.get("compute_capability")
            rows.append(
                Check(
                    "gpu",
                    f"GPU {gpu.get('index')}",
                    "ok",
                    f"{gpu.get('name')}, {memory} MiB, compute capability {cc}",
                )
            )
    if tensorrt_importable:
        rows.append(Check("gpu", "tensorrt", "ok", _version("tensorrt") or "importable"))
    else:
        rows.append(
            Check(
                "gpu", "tensorrt", "missing" if env.get("gpus") else "warn", "not importable",
                "pip install 'edgedistill[trt]' (from NVIDIA's index; JetPack ships TensorRT)",
            )
        )  # fmt: skip
    return rows


# --- everything ----------------------------------------------------------------------------


def collect(out: Path, cards_dir: Path, *, hash_weights: bool = True) -> list[Check]:
    """Every row, for this machine (a few seconds; hashing the teachers' weights dominates)."""
    import torch

    from edgedistill.bench.device_env import gpu_environment
    from edgedistill.bench.doctor_assets import data_checks, disk_check, teacher_checks
    from edgedistill.bench.env import cpu_model
    from edgedistill.runtime.registry import runtime_status

    rows = python_checks(
        tuple(sys.version_info[:3]),  # type: ignore[arg-type]
        torch.__version__,
        torch.version.cuda,
        bool(torch.cuda.is_available()),
        _version("torchvision"),
    )
    rows += runtime_checks(runtime_status())
    rows += [onnxruntime_check(), openvino_check()]
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        cpuinfo = ""
    rows.append(Check("cpu", "model", "ok", f"{cpu_model()} ({platform.machine()})"))
    rows += instruction_set_checks(cpu_flags(cpuinfo))
    rows.append(thread_check(os.cpu_count(), torch.get_num_threads()))
    rows += gpu_checks(gpu_environment(), importlib.util.find_spec("tensorrt") is not None)
    rows += teacher_checks(cards_dir, hash_weights=hash_weights)
    rows += data_checks()
    rows.append(disk_check(out))
    return rows


def required_missing(rows: list[Check]) -> list[Check]:
    """The required rows that are missing (what ``--strict`` fails on)."""
    return [row for row in rows if row.required and row.status == "missing"]


def report_dict(rows: list[Check], seconds: float) -> dict[str, Any]:
    """The JSON object of ``doctor --json``: version, rows per section, required-missing."""
    return {
        "edgedistill": _version("edgedistill"),
        "seconds": round(seconds, 3),
        "sections": {s: [r.as_dict() for r in rows if r.section == s] for s in SECTIONS},
        "required_missing": [r.name for r in required_missing(rows)],
        "counts": {s: sum(r.status == s for r in rows) for s in ("ok", "missing", "warn")},
    }

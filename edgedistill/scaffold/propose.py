"""From findings to a recipe: the student sized for a target, short training, quick checks.

The student family follows the modality (the shipped recipes in ``students/*.yaml``): convnet
for images, imu_cnn for IMU windows, audio_dscnn (log-mel front end inside the model) for
clips, text_cnn for byte-level text. Its width follows the target profile (``export/*.yaml``):
"small" for a one-thread target, "large" for a GPU target, "medium" otherwise. The defaults
keep a first run short (10 epochs, more for a small data set, one recovery epoch after pruning, latency at batch 1 with
the minimum of timed runs); the written comments say what to raise for a real run.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from edgedistill.config import TargetProfile, load_target
from edgedistill.errors import RecipeError
from edgedistill.scaffold.findings import Findings
from edgedistill.scaffold.teachers import ADAPT, TeacherFit

GPU_RUNTIMES = frozenset(
    {"torch-cuda", "tensorrt", "onnxruntime-cuda", "onnxruntime-trt", "torch-tensorrt"}
)
STUDENTS: dict[str, tuple[str, dict[str, dict[str, Any]]]] = {
    "image": (
        "convnet",
        {
            "small": {"widths": [8, 16, 32]},
            "medium": {"widths": [16, 32, 64]},
            "large": {"widths": [32, 64, 128], "blocks_per_stage": 2, "residual": True},
        },
    ),
    "imu": (
        "imu_cnn",
        {
            "small": {"widths": [8, 16, 32]},
            "medium": {"widths": [16, 32, 64]},
            "large": {"widths": [32, 64, 128]},
        },
    ),
    "audio": (
        "audio_dscnn",
        {
            "small": {"widths": [16, 24, 24, 32]},
            "medium": {"widths": [32, 32, 32, 32]},
            "large": {"widths": [48, 48, 48, 48, 48]},
        },
    ),
    "text": (
        "text_cnn",
        {
            "small": {"embed_dim": 16, "widths": [32, 32], "kernel_size": 3},
            "medium": {"embed_dim": 32, "widths": [64, 64, 64], "kernel_size": 5},
            "large": {"embed_dim": 64, "widths": [128, 128, 128], "kernel_size": 5},
        },
    ),
}
DEFAULT_EPOCHS = 10
MIN_STEPS = 200  # a small data set gets more epochs: at least this many optimiser steps ...
MAX_EPOCHS = 50  # ... up to this many epochs
NAME = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class Target:
    """A target profile and the student size it calls for."""

    path: Path
    profile: TargetProfile
    tier: str  # "small" | "medium" | "large"


def default_export_dir() -> Path:
    """``export/`` of the working folder, else the one next to the package (a checkout)."""
    here = Path("export")
    return here if here.is_dir() else Path(__file__).resolve().parents[2] / "export"


def resolve_target(value: str, export_dir: Path | None = None) -> Target:
    """``--target``: a profile file, or a profile name in ``export/`` (e.g. desktop-cpu).

    Raises:
        RecipeError: no such profile (the profiles found are listed), or an invalid one.
    """
    folder = export_dir or default_export_dir()
    path = Path(value).expanduser()
    if not path.is_file():
        path = folder / f"{value.removesuffix('.yaml')}.yaml"
    if not path.is_file():
        known = ", ".join(p.stem for p in sorted(folder.glob("*.yaml"))) or f"none in {folder}"
        raise RecipeError(f"--target {value}: no such target profile (profiles: {known})")
    profile = load_target(path)
    runtimes = set((profile.profile or {}).get("runtimes") or ())
    threads = int((profile.profile or {}).get("threads") or 2)
    if runtimes & GPU_RUNTIMES and profile.device is None:
        tier = "large"
    elif threads <= 1:
        tier = "small"
    else:
        tier = "medium"
    return Target(path.resolve(), profile, tier)


def recipe_name(value: str) -> str:
    """A recipe name the schema accepts (letters, digits, ``.``, ``_``, ``-``)."""
    name = NAME.sub("-", value).strip("-._") or "my-data"
    return name if name[0].isalnum() else f"r{name}"


@dataclass
class Proposal:
    """Everything the written recipe says, section by section (``data`` paths absolute)."""

    name: str
    findings: Findings
    target: Target
    teacher: TeacherFit | None
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def student_config(found: Findings, tier: str) -> tuple[str, dict[str, Any]]:
    """The student arch and config for the modality and size tier."""
    arch, tiers = STUDENTS[found.modality]
    config = dict(tiers[tier])
    if found.modality == "audio":
        rate = int(found.data["sample_rate_hz"])
        hop = max(1, round(rate / 100))  # 10 ms hops
        config.update(sample_rate=rate, hop_length=hop, n_fft=2 ** math.ceil(math.log2(2.5 * hop)))
    return arch, config


def propose(
    found: Findings,
    target: Target,
    teacher: TeacherFit | None,
    *,
    name: str,
    epochs: int | None = None,
) -> Proposal:
    """Assemble the recipe's sections from the findings, the target and the teacher."""
    data = dict(found.data)
    if teacher is not None:
        data.update(teacher.data)
    train = max(1, found.total - found.held_out)
    held = max(1, found.held_out)
    # with the teacher's data keys: it may have changed the audio sample rate
    arch, config = student_config(replace(found, data=data), target.tier)
    terms: list[dict[str, Any]] = (
        [{"name": "ce", "weight": 0.3}, {"name": "kd", "weight": 0.7, "temperature": 2.0}]
        if teacher is not None
        else [{"name": "ce", "weight": 1.0}]
    )
    # About 8 steps an epoch or more (a power of two, 4..64), then enough epochs for
    # MIN_STEPS steps: a folder of 20 images trains as well as one of 20,000.
    batch = max(4, min(64, 2 ** max(0, math.floor(math.log2(train / 8)))))
    steps = math.ceil(train / batch)
    distill = {
        "epochs": epochs or min(MAX_EPOCHS, max(DEFAULT_EPOCHS, math.ceil(MIN_STEPS / steps))),
        "batch_size": batch,
        "lr": 0.05,
        "terms": terms,
    }
    widths = config.get("widths") or [8]
    sections: dict[str, dict[str, Any]] = {
        "data": data,
        "student": {"arch": arch, "config": config},
        "distill": distill,
        "prune": {
            "target_macs_ratio": 0.7,
            "round_to": 4 if min(widths) < 32 else 8,
            "finetune_epochs": 1,
        },
        "quantize": {
            **(target.profile.quantize or {}),
            "calibration_samples": max(8, min(256, train)),
        },
        "export": dict(target.profile.export or {"openvino": "auto"}),
        "profile": _quick_profile(target),
        "gates": {
            # one test sample is 100 / held points: allow two of them to flip in INT8
            "int8_max_accuracy_drop": max(1.0, math.ceil(2 * 1000 / held) / 10),
            "parity_samples": min(1000, held),
        },
    }
    if teacher is not None:
        sections["teacher"] = {
            "card": teacher.card,
            **({"adapt": dict(ADAPT)} if teacher.adapt else {}),
        }
    proposal = Proposal(name, found, target, teacher, sections)
    if found.imbalance > 3:
        proposal.notes.append(
            f"classes are imbalanced ({found.imbalance:.1f}x): accuracy favours the large "
            "classes; more data for the small ones helps most"
        )
    small = [k for k, n in found.classes.items() if n < 10]
    if small:
        proposal.notes.append(
            f"few {found.unit} in {', '.join(small[:5])}: the test split holds very few of "
            "them, so accuracy numbers are noisy"
        )
    return proposal


def _quick_profile(target: Target) -> dict[str, Any]:
    """The target's runtimes (and ONNX Runtime on the CPU) and threads, measured quickly:
    batch 1, the minimum of timed runs."""
    cfg = dict(target.profile.profile or {})
    runtimes = list(cfg.get("runtimes") or ["torch"])
    if "onnxruntime" not in runtimes:  # the CPU baseline: a GPU-less machine measures it
        runtimes.append("onnxruntime")
    quick: dict[str, Any] = {
        "runtimes": runtimes,
        "threads": int(cfg.get("threads") or 2),
        "batch_sizes": [1],
        "warmup": 5,
        "runs": 100,
    }
    if cfg.get("precisions"):
        quick["precisions"] = list(cfg["precisions"])
    return quick

"""Save and load models as (architecture JSON, safetensors): nothing is ever unpickled."""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import load_file, save_file
from torch import nn

from edgedistill.artifacts import atomic_save, atomic_write_json, read_json
from edgedistill.students.base import build_model


def save_model(model: nn.Module, arch: str, folder: Path, name: str) -> list[str]:
    """Save ``model`` as ``name.safetensors`` + ``name.json`` (arch and live config)."""
    config = model.current_config()  # type: ignore[operator]
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    atomic_save(folder / f"{name}.safetensors", lambda tmp: save_file(state, str(tmp)))
    atomic_write_json(folder / f"{name}.json", {"arch": arch, "config": config})
    return [f"{name}.safetensors", f"{name}.json"]


def load_model(folder: Path, name: str) -> nn.Module:
    """Inverse of :func:`save_model` (safetensors only, nothing is unpickled)."""
    spec = read_json(folder / f"{name}.json")
    model = build_model(spec["arch"], spec["config"])
    model.load_state_dict(load_file(str(folder / f"{name}.safetensors")))
    return model.eval()

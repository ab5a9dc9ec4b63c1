"""Run-directory primitives: atomic writes, file hashes, stage manifests, safe weight reads.

Nothing is ever visible under its final name half-written: every artifact is written to a
temporary file in the same folder and moved into place with :func:`os.replace` (atomic on
POSIX). A stage's ``manifest.json`` is written last, so its presence means the stage finished.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from edgedistill.errors import RecipeError, UnsafeFileError


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_json(obj: Any) -> str:
    """Hex sha256 of a JSON-serialisable object in canonical form (sorted keys)."""
    text = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success move it to ``path`` atomically.

    The temporary file keeps ``path``'s suffix, so libraries that infer a format from the
    extension (onnx, numpy, safetensors) behave the same. On an exception it is removed.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent
    )
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        # mkstemp creates 0600; give the file the mode a plain open() would (0666 - umask),
        # so shipped bundles are readable by the app's user.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def atomic_save(path: Path, writer: Callable[[Path], None]) -> None:
    """Call ``writer(tmp_path)`` and move the result to ``path`` atomically."""
    with atomic_path(path) as tmp:
        writer(tmp)


def atomic_copy(src: Path, dest: Path) -> None:
    """Copy ``src`` to ``dest`` atomically."""
    with atomic_path(dest) as tmp:
        shutil.copyfile(src, tmp)


def read_json(path: Path) -> Any:
    """Parse a JSON file."""
    return json.loads(Path(path).read_text())


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """Read a state dict: ``.safetensors`` with safetensors, anything else as a weights-only pickle.

    A checkpoint that wraps the state dict under ``state_dict`` or ``model`` is unwrapped.

    Raises:
        RecipeError: the file does not exist or holds no state dict.
        UnsafeFileError: the pickle references anything but tensors and plain containers.
    """
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise RecipeError(f"weights file {path}: cannot read: {exc}") from None
    try:
        state: Any = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "Weights only load failed" not in text:
            raise RecipeError(f"weights file {path}: cannot read: {text[:200]}") from None
        marker = "WeightsUnpickler error:"
        after = text.split(marker, 1)[1].strip() if marker in text else "not weights-only"
        why = after.splitlines()[0].split(" was not", 1)[0] if after else "not weights-only"
        raise UnsafeFileError(f"weights file {path}: refused by weights_only ({why})") from None
    except (RuntimeError, EOFError) as exc:
        raise RecipeError(f"weights file {path}: cannot read: {str(exc)[:200]}") from None
    if isinstance(state, dict) and not any(isinstance(v, torch.Tensor) for v in state.values()):
        state = state.get("state_dict", state.get("model", state))
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise RecipeError(f"weights file {path}: not a state dict of tensors")
    return state

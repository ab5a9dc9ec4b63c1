"""Run-directory primitives: atomic writes, file hashes, stage manifests, safe weight reads.

Nothing is ever visible under its final name half-written: every artifact is written to a
temporary file in the same folder and moved into place with :func:`os.replace` (atomic on
POSIX). A stage's ``manifest.json`` is written last, so its presence means the stage finished.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import pickle
import re
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from edgedistill.errors import RecipeError, StageError, UnsafeFileError


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
    extension (onnx, numpy, safetensors) behave the same. On an exception it is removed; a
    process killed mid-write leaves it behind, named ``.<stem>.<pid>-<random>.tmp<suffix>``
    so that :func:`remove_stale_temporaries` can tell it from a live writer's.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{path.stem}.{os.getpid()}-", suffix=f".tmp{path.suffix}", dir=path.parent
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
    except Exception as exc:
        full = no_space(exc)
        if full is None:
            raise
        raise StageError(
            f"cannot write {path}: {full.strerror or 'no space'} (disk full or over the "
            "file-size limit): free space and run the same command again; finished stages "
            "are kept"
        ) from None
    finally:
        if tmp.exists():
            tmp.unlink()


NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT})


def no_space(exc: BaseException) -> OSError | None:
    """The "disk full" / "file too large" / "quota exceeded" OSError behind ``exc``, if any.

    Writers wrap it: torch's zip writer reports a failed write as a RuntimeError whose context
    is the OSError, so the whole ``__cause__`` / ``__context__`` chain is searched.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in NO_SPACE_ERRNOS:
            return current
        current = current.__cause__ or current.__context__
    return None


_TEMPORARY = re.compile(r"^\..*\.(\d+)-\w+\.tmp(\.[^.]*)?$")
"""An :func:`atomic_path` temporary; group 1 is the writer's process id."""


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete the temporaries of atomic writes cut short by a killed process under ``folder``.

    SIGKILL (OOM killer, a cancelled job) skips :func:`atomic_path`'s clean-up, leaving a
    hidden temporary as large as the artifact (a teacher cache, a checkpoint) that nothing
    would ever read or delete. Only temporaries whose writer process is gone are removed, so
    a concurrent writer (another DDP rank) is never disturbed.

    Returns:
        The removed files.
    """
    removed = []
    for path in Path(folder).rglob(".*.tmp*"):
        match = _TEMPORARY.match(path.name)
        if match is None or not path.is_file() or _process_alive(int(match.group(1))):
            continue
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: existence check only
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


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


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Read a ``.safetensors`` file; a truncated or garbled one is one line naming the file.

    Raises:
        RecipeError: the file is missing, truncated, or not safetensors at all.
    """
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"weights file {path} does not exist")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise RecipeError(
            f"weights file {path}: cannot read it as safetensors ({reason}); it is truncated or "
            "corrupt: download or export it again (and update the sha256 that pins it)"
        ) from None


def _weights_only_reason(text: str) -> str:
    """The one line of a ``weights_only`` refusal that says why (torch's advice dropped)."""
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1]
    advice = ("weights only load failed", "weights_only", "check the documentation", "safe_globals")
    for line in text.splitlines():
        line = line.split(" was not an allowed", 1)[0].split(". Please use", 1)[0].strip()
        if line and not any(word in line.lower() for word in advice):
            return line.rstrip(".")[:160]
    return "not weights-only"


class _Unreadable(Exception):
    """Internal: why ``torch.load(weights_only=True)`` failed; callers word the message."""

    def __init__(self, why: str, *, unsafe: bool) -> None:
        super().__init__(why)
        self.why = why
        self.unsafe = unsafe


def _first_sentence(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line.split(". ", 1)[0].rstrip(".")[:160]


def _torch_load(path: Path) -> Any:
    """``torch.load(weights_only=True)``; any failure becomes :class:`_Unreadable`.

    ``unsafe`` is set when weights_only refused a global (the pickle could run code; nothing
    of it was executed); otherwise the file is truncated, garbled or not a torch file.
    """
    try:
        with warnings.catch_warnings():
            # torch warns (several lines) about the protocol of a foreign pickle before
            # refusing it; the refusal below is the one line that matters.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        why = _weights_only_reason(str(exc))
        raise _Unreadable(why, unsafe="global" in why.lower()) from None
    except Exception as exc:  # zip, EOF, struct, unicode, ...: any way a file can be damaged
        raise _Unreadable(_first_sentence(str(exc)) or type(exc).__name__, unsafe=False) from None


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """Read a state dict: ``.safetensors`` with safetensors, anything else as a weights-only pickle.

    A checkpoint that wraps the state dict under ``state_dict`` or ``model`` is unwrapped.

    Raises:
        RecipeError: the file does not exist, cannot be read or holds no state dict.
        UnsafeFileError: the pickle references anything but tensors and plain containers.
    """
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    try:
        state: Any = _torch_load(path)
    except _Unreadable as exc:
        if exc.unsafe:
            raise UnsafeFileError(
                f"weights file {path}: refused by weights_only ({exc.why})"
            ) from None
        raise RecipeError(f"weights file {path}: cannot read: {exc.why}") from None
    if isinstance(state, dict) and not any(isinstance(v, torch.Tensor) for v in state.values()):
        state = state.get("state_dict", state.get("model", state))
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise RecipeError(f"weights file {path}: not a state dict of tensors")
    return state


# ---- training checkpoints: crash-safe, never unpickled beyond weights_only ---------------
def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a training checkpoint (``torch.save`` of a dict) with ``weights_only=True``.

    Never falls back to ``weights_only=False``: a checkpoint is only ever what this package
    wrote, tensors and plain containers.

    Raises:
        UnsafeFileError: it references globals weights_only refuses (e.g. ``os.system``).
        StageError: it is truncated, garbled, or not a dict.
    """
    path = Path(path)
    try:
        state = _torch_load(path)
    except _Unreadable as exc:
        if exc.unsafe:
            raise UnsafeFileError(
                f"{path}: refused by weights_only ({exc.why}); nothing in it was run"
            ) from None
        raise StageError(f"{path}: corrupt or truncated ({exc.why})") from None
    if not isinstance(state, dict):
        raise StageError(f"{path}: not a checkpoint (holds a {type(state).__name__}, not a dict)")
    return state


def set_aside(path: Path) -> Path:
    """Rename ``path`` to ``<name>.corrupt-<UTC timestamp>`` next to it (kept for inspection).

    Returns:
        The new path (a numeric suffix is added if that name is taken).
    """
    path = Path(path)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while target.exists():
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
        n += 1
    os.replace(path, target)
    return target


def discard_checkpoint(path: Path, reason: str, warn: Callable[[str], None]) -> Path:
    """Set a checkpoint aside and say so in one line: the stage restarts from scratch.

    Args:
        path: The checkpoint that could not be resumed.
        reason: One line saying why (names the file).
        warn: Where the warning line goes (a console's print, :func:`warn_stderr`).
    """
    moved = set_aside(path)
    warn(f"{reason}; moved it to {moved.name} and restarting this stage from scratch")
    return moved


def resume_checkpoint(path: Path, warn: Callable[[str], None]) -> dict[str, Any] | None:
    """The checkpoint at ``path``, or None when there is none or it cannot be read.

    A checkpoint that is corrupt, truncated or refused by ``weights_only`` is moved aside
    (:func:`set_aside`) with one warning line, so the stage restarts from scratch instead of
    failing on every re-run.
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return load_checkpoint(path)
    except (StageError, UnsafeFileError) as exc:
        discard_checkpoint(path, f"checkpoint {exc}", warn)
        return None


def warn_stderr(message: str) -> None:
    """Print ``warning: message`` as one line on stderr (the default warning sink)."""
    print(f"warning: {message}", file=sys.stderr, flush=True)

"""Data files shipped inside installed Python packages.

Packages are located with :func:`importlib.util.find_spec`, which does not import (run) them.
A file is addressed by (package, path inside the package), never by a free path, and must not
resolve through a link to anywhere outside the package.
"""

from __future__ import annotations

import importlib
import importlib.util
import pickle
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from edgedistill.artifacts import sha256_file
from edgedistill.errors import DataError, MissingDependencyError, UnsafeFileError

_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("_codecs", "encode"),
}


def package_file(package: str, *candidates: str, extra: str, purpose: str) -> Path:
    """The first of ``candidates`` (paths relative to ``package``'s folder) that exists.

    Raises:
        MissingDependencyError: if the package is not installed (``extra`` names the pip
            extra that brings it, ``purpose`` what it is needed for).
        UnsafeFileError: if the file resolves (through a link) outside the package.
        DataError: if none of the candidates exists.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(package, extra, purpose)
    root = Path(next(iter(spec.submodule_search_locations))).resolve()
    for relative in candidates:
        path = root / relative
        if path.is_file():
            if not path.resolve().is_relative_to(root):
                raise UnsafeFileError(f"{path} resolves outside the {package} package; refused")
            return path
    raise DataError(f"the installed {package} package ({root}) has none of {list(candidates)}")


def import_optional(
    module: str, *, package: str, extra: str, purpose: str, hint: str | None = None
) -> ModuleType:
    """Import an optional module, or raise :class:`MissingDependencyError` naming its package.

    Args:
        module: Module to import, e.g. "PIL.Image".
        package: The pip package that provides it; extra: the edgedistill extra that brings
            it; purpose: what it is needed for; hint: a direct install command, if any.
    """
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingDependencyError(package, extra, purpose, hint) from None


def pinned_package_file(
    module: str,
    relative: str,
    sha256: str,
    *,
    package: str,
    extra: str,
    purpose: str,
    hint: str | None = None,
) -> Path:
    """A weights file inside an installed (never imported) package, checked against a pin.

    Raises:
        MissingDependencyError: ``package`` (providing ``module``) is not installed.
        UnsafeFileError: the file's sha256 is not ``sha256``.
    """
    try:
        path = package_file(module, relative, extra=extra, purpose=purpose)
    except MissingDependencyError:
        raise MissingDependencyError(package, extra, purpose, hint) from None
    actual = sha256_file(path)
    if actual != sha256:
        raise UnsafeFileError(f"{path}: sha256 {actual[:12]}… is not the pinned {sha256[:12]}…")
    return path


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only: any other global is refused."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise UnsafeFileError(f"a packaged pickle references {module}.{name}; refused")
        if module.endswith(".multiarray"):
            try:
                return getattr(importlib.import_module("numpy._core.multiarray"), name)
            except ImportError:  # numpy < 2
                return getattr(importlib.import_module("numpy.core.multiarray"), name)
        return super().find_class(module, name)


def load_packaged_object_npy(
    package: str, *candidates: str, extra: str, purpose: str
) -> tuple[Path, Any]:
    """Read a pickled object array (.npy) shipped inside an installed package.

    Only a file resolved by :func:`package_file` is read, and only with
    :class:`NumpyOnlyUnpickler`: numpy arrays, lists, dicts and scalars come back, nothing
    that could run code. A 0-d object array is unwrapped to its item.

    Returns:
        (path, object).
    """
    path = package_file(package, *candidates, extra=extra, purpose=purpose)
    try:
        with path.open("rb") as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                _, _, dtype = np.lib.format.read_array_header_1_0(fh)
            else:
                _, _, dtype = np.lib.format.read_array_header_2_0(fh)
            if not dtype.hasobject:
                raise DataError(f"{path}: expected a pickled object array, found {dtype}")
            raw = NumpyOnlyUnpickler(fh).load()
    except (OSError, ValueError, EOFError, pickle.UnpicklingError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    return path, raw.item() if isinstance(raw, np.ndarray) and raw.shape == () else raw

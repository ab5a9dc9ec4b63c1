"""Safe handling of uploaded models: a bundle as ``.tar``/``.tar.gz``/``.zip``, or one ``.onnx``.

An upload comes from the network, so every archive member is checked before a byte is
written: no absolute paths, no ``..``, no links, no device files or FIFOs, no member larger than
the limit and no more than the limit in total. Sizes are checked against what the archive
declares *and* counted while extracting, so a zip that lies about its sizes (a zip bomb) stops
at the limit. Extraction goes into a fresh folder; every ``.onnx`` found is then checked with
:func:`edgedistill.export.onnx.check_onnx_file` (external data must stay inside the folder) and
described (input name, shape, dtype; whether it is a QDQ INT8 model).
"""

from __future__ import annotations

import re
import shutil
import stat
import tarfile
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

from edgedistill.artifacts import sha256_file
from edgedistill.errors import DataError, UnsafeFileError

KINDS = ("tar", "zip", "onnx")
MAX_MEMBERS = 10_000
_CHUNK = 1 << 20
_NAME = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class ModelFile:
    """One ONNX model of an upload.

    Attributes:
        name: Its path inside the upload without ``.onnx`` (``model-int8``, ``app/model``).
        path: Path relative to the upload's ``files/`` folder.
        sha256: Hex sha256 of the .onnx file.
        size: Bytes of the .onnx file.
        precision: ``int8`` for a QDQ-quantized model, else ``fp32``.
        input_name: Name of the first graph input.
        input_shape: Its dims; ``None`` for a symbolic dim (the batch).
        input_dtype: ``float32`` or ``int64``.
    """

    name: str
    path: str
    sha256: str
    size: int
    precision: str
    input_name: str
    input_shape: list[int | None]
    input_dtype: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return asdict(self)


def safe_name(name: str, default: str = "model") -> str:
    """``name`` reduced to ``[A-Za-z0-9._-]`` (a file name that cannot leave its folder)."""
    cleaned = _NAME.sub("_", name).strip("._")
    return cleaned[:100] or default


def _member_path(name: str, upload: str) -> PurePosixPath:
    """The relative path of an archive member, or :class:`UnsafeFileError`."""
    if "\x00" in name:
        raise UnsafeFileError(f"{upload}: member {name!r} has a NUL byte in its name")
    posix = name.replace("\\", "/")
    path = PurePosixPath(posix)
    if posix.startswith("/") or re.match(r"^[A-Za-z]:", posix):
        raise UnsafeFileError(f"{upload}: member {name!r} has an absolute path")
    if ".." in path.parts:
        raise UnsafeFileError(f"{upload}: member {name!r} leaves the upload folder ('..')")
    parts = [p for p in path.parts if p not in ("", ".")]
    if not parts:
        raise UnsafeFileError(f"{upload}: member {name!r} has an empty path")
    return PurePosixPath(*parts)


class _Budget:
    """Counts extracted bytes against the per-member and total limits."""

    def __init__(self, upload: str, max_member: int, max_total: int) -> None:
        self.upload, self.max_member, self.max_total = upload, max_member, max_total
        self.total = 0

    def declared(self, name: str, size: int) -> None:
        if size > self.max_member:
            raise UnsafeFileError(
                f"{self.upload}: member {name!r} is {size} bytes, over the {self.max_member} "
                "byte limit"
            )
        if self.total + size > self.max_total:
            raise UnsafeFileError(
                f"{self.upload}: member {name!r} takes the upload over the {self.max_total} "
                "byte limit"
            )

    def copy(self, name: str, source: IO[bytes], target: Path) -> None:
        """Copy ``source`` to a new file, stopping as soon as a limit is passed."""
        written = 0
        with open(target, "xb") as out:
            while block := source.read(_CHUNK):
                written += len(block)
                self.total += len(block)
                if written > self.max_member or self.total > self.max_total:
                    raise UnsafeFileError(
                        f"{self.upload}: member {name!r} expands past the size limit "
                        f"({self.max_member} bytes per member, {self.max_total} in total)"
                    )
                out.write(block)


def _target(dest: Path, rel: PurePosixPath, upload: str) -> Path:
    target = dest.joinpath(*rel.parts)
    if not target.resolve().is_relative_to(dest.resolve()):
        raise UnsafeFileError(f"{upload}: member {rel.as_posix()!r} leaves the upload folder")
    return target


def _extract_tar(source: Path, dest: Path, upload: str, budget: _Budget) -> None:
    try:
        archive = tarfile.open(source, mode="r:*")  # noqa: SIM115 - closed by the with below
    except (tarfile.TarError, OSError) as exc:
        raise UnsafeFileError(f"{upload}: not a readable tar archive ({exc})") from None
    with archive:
        count = 0
        try:
            for member in archive:
                count += 1
                if count > MAX_MEMBERS:
                    raise UnsafeFileError(f"{upload}: more than {MAX_MEMBERS} members")
                rel = _member_path(member.name, upload)
                if member.issym() or member.islnk():
                    raise UnsafeFileError(f"{upload}: member {member.name!r} is a link")
                if member.isdir():
                    _target(dest, rel, upload).mkdir(parents=True, exist_ok=True)
                    continue
                if not member.isfile():
                    raise UnsafeFileError(
                        f"{upload}: member {member.name!r} is not a regular file "
                        "(device, FIFO or other special file)"
                    )
                budget.declared(member.name, member.size)
                target = _target(dest, rel, upload)
                target.parent.mkdir(parents=True, exist_ok=True)
                handle = archive.extractfile(member)
                if handle is None:  # pragma: no cover - isfile() members always have data
                    raise UnsafeFileError(f"{upload}: member {member.name!r} has no data")
                with handle:
                    budget.copy(member.name, handle, target)
        except FileExistsError as exc:
            raise UnsafeFileError(f"{upload}: member {exc.filename!r} appears twice") from None
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise UnsafeFileError(f"{upload}: broken tar archive ({exc})") from None


def _extract_zip(source: Path, dest: Path, upload: str, budget: _Budget) -> None:
    try:
        archive = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError) as exc:
        raise UnsafeFileError(f"{upload}: not a readable zip archive ({exc})") from None
    with archive:
        infos = archive.infolist()
        if len(infos) > MAX_MEMBERS:
            raise UnsafeFileError(f"{upload}: more than {MAX_MEMBERS} members")
        try:
            for info in infos:
                rel = _member_path(info.filename, upload)
                mode = info.external_attr >> 16
                kind = stat.S_IFMT(mode)
                if stat.S_ISLNK(mode):
                    raise UnsafeFileError(f"{upload}: member {info.filename!r} is a link")
                if info.is_dir():
                    _target(dest, rel, upload).mkdir(parents=True, exist_ok=True)
                    continue
                if kind not in (0, stat.S_IFREG):
                    raise UnsafeFileError(
                        f"{upload}: member {info.filename!r} is not a regular file"
                    )
                budget.declared(info.filename, info.file_size)
                target = _target(dest, rel, upload)
                target.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(info) as handle:
                    budget.copy(info.filename, handle, target)
        except FileExistsError as exc:
            raise UnsafeFileError(f"{upload}: member {exc.filename!r} appears twice") from None
        except (zipfile.BadZipFile, NotImplementedError, EOFError, OSError) as exc:
            raise UnsafeFileError(f"{upload}: broken zip archive ({exc})") from None


def describe_onnx(path: Path, root: Path) -> ModelFile:
    """Check one extracted model and describe it (see :class:`ModelFile`)."""
    import onnx

    from edgedistill.export.onnx import check_onnx_file

    check_onnx_file(path)
    model = onnx.load(str(path), load_external_data=False)
    initializers = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    rel = path.relative_to(root).as_posix()
    if not inputs:
        raise DataError(f"{rel}: the model has no input")
    tensor = inputs[0].type.tensor_type
    dims: list[int | None] = [
        d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim
    ]
    dtypes = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.INT64: "int64"}
    if tensor.elem_type not in dtypes:
        kind = onnx.TensorProto.DataType.Name(tensor.elem_type)
        raise DataError(f"{rel}: input of type {kind}; the agent feeds float32 or int64")
    qdq = any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)
    return ModelFile(
        name=rel[: -len(".onnx")],
        path=rel,
        sha256=sha256_file(path),
        size=path.stat().st_size,
        precision="int8" if qdq else "fp32",
        input_name=inputs[0].name,
        input_shape=dims,
        input_dtype=dtypes[tensor.elem_type],
    )


def unpack_upload(
    source: Path,
    dest: Path,
    *,
    kind: str,
    name: str,
    max_member_bytes: int,
    max_total_bytes: int,
) -> list[ModelFile]:
    """Extract (or place) an uploaded file into the fresh folder ``dest`` and check its models.

    Args:
        source: The uploaded bytes on disk (removed by the caller).
        dest: A folder that must not exist yet; removed again when anything is refused.
        kind: ``tar`` (plain or gzip), ``zip`` or ``onnx``.
        name: The upload's name (the file name of a single model; used in messages).
        max_member_bytes: Largest extracted file allowed.
        max_total_bytes: Largest total of extracted bytes allowed.

    Returns:
        The models found, sorted by name.

    Raises:
        UnsafeFileError: A refused member (named) or a model whose data leaves the folder.
        DataError: The upload holds no .onnx model, or an unknown ``kind``.
    """
    if kind not in KINDS:
        raise DataError(f"unknown upload kind {kind!r}; use one of {list(KINDS)}")
    label = safe_name(name, "upload")
    dest.mkdir(parents=True, exist_ok=False)
    budget = _Budget(label, max_member_bytes, max_total_bytes)
    try:
        if kind == "onnx":
            stem = label[: -len(".onnx")] if label.endswith(".onnx") else label
            target = dest / f"{safe_name(stem)}.onnx"
            budget.declared(target.name, source.stat().st_size)
            with open(source, "rb") as handle:
                budget.copy(target.name, handle, target)
        elif kind == "tar":
            _extract_tar(source, dest, label, budget)
        else:
            _extract_zip(source, dest, label, budget)
        paths = sorted(p for p in dest.rglob("*.onnx") if p.is_file())
        if not paths:
            raise DataError(f"{label}: no .onnx model in the upload")
        return [describe_onnx(p, dest) for p in paths]
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise

"""A client of the device agent, standard library only (``urllib.request``).

:class:`AgentClient` speaks the agent's HTTP API; :func:`profile_on_device` uploads models,
runs one job, waits for it and appends its measurements to a :class:`ResultsStore`;
:func:`profile_run_on_device` does that for every deployed ONNX model of a run folder. Every
failure is one line: the URL and why (connection refused, HTTP status and the agent's message).
"""

from __future__ import annotations

import gzip
import io
import json
import os
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from edgedistill.agent.errors import AgentError
from edgedistill.agent.store import Measurement, ResultsStore

ProgressFn = Callable[[dict[str, Any]], None]
TOKEN_ENV = "EDGEDISTILL_AGENT_TOKEN"
MIN_TOKEN_CHARS = 16


def read_token(token_file: Path | None = None) -> str:
    """The agent token from ``token_file`` or the ``EDGEDISTILL_AGENT_TOKEN`` variable.

    Raises:
        AgentError: No token, or one shorter than 16 characters.
    """
    if token_file is not None:
        try:
            token = Path(token_file).read_text().strip()
        except OSError as exc:
            raise AgentError(f"cannot read token file {token_file}: {exc.strerror}") from None
    else:
        token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise AgentError(
            f"no agent token: pass --token-file FILE or set {TOKEN_ENV} "
            "(make one with: python -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )
    if len(token) < MIN_TOKEN_CHARS:
        raise AgentError(f"the agent token is shorter than {MIN_TOKEN_CHARS} characters")
    return token


@dataclass
class DeviceResults:
    """What one profiling job on a device produced.

    Attributes:
        job_id: The agent's job id.
        device_id: :func:`edgedistill.agent.store.device_id` of the device.
        device_name: Its readable name.
        measurements: One row per measurement that succeeded (already in the store if given).
        errors: ``{"item": ..., "error": ...}`` for measurements that failed on the device
            (e.g. a runtime that needs a GPU the device lacks).
    """

    job_id: str
    device_id: str
    device_name: str
    measurements: list[Measurement] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)


class AgentClient:
    """Talks to one agent.

    Args:
        url: Base URL, e.g. ``http://jetson.local:8765``.
        token: The agent's bearer token.
        timeout: Seconds per HTTP request (uploads of large bundles may need more).
    """

    def __init__(self, url: str, token: str, *, timeout: float = 120.0) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout

    # --- plumbing ----------------------------------------------------------------------------
    def _request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        data: Any = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        """One request; the JSON answer, or :class:`AgentError` in one line."""
        all_headers = {"Authorization": f"Bearer {self.token}", **(headers or {})}
        if body is not None:
            data = json.dumps(body).encode()
            all_headers["Content-Type"] = "application/json"
        request = urllib.request.Request(
            self.url + path, data=data, method=method, headers=all_headers
        )
        where = f"{method} {self.url}{path.split('?')[0]}"
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            raise AgentError(f"{where}: HTTP {exc.code}: {_detail(exc)}") from None
        except urllib.error.URLError as exc:
            reason = exc.reason
            if isinstance(reason, ConnectionRefusedError):
                raise AgentError(
                    f"cannot reach the agent at {self.url}: connection refused "
                    "(is `edgedistill agent serve` running there?)"
                ) from None
            raise AgentError(f"cannot reach the agent at {self.url}: {reason}") from None
        except (ConnectionResetError, BrokenPipeError):
            raise AgentError(
                f"{where}: the agent closed the connection (an upload over its "
                "--max-upload-mb limit?)"
            ) from None
        except TimeoutError:
            raise AgentError(f"{where}: no answer within {self.timeout:.0f} s") from None
        except json.JSONDecodeError:
            raise AgentError(f"{where}: the answer is not JSON (is this an agent?)") from None

    # --- API ---------------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        """``ok``, agent version, device id and name."""
        return cast(dict[str, Any], self._request("GET", "/health"))

    def environment(self) -> dict[str, Any]:
        """The device's environment and which runtimes/precisions it can run."""
        return cast(dict[str, Any], self._request("GET", "/environment"))

    def uploads(self) -> list[dict[str, Any]]:
        """Every upload the agent holds."""
        return cast(list[dict[str, Any]], self._request("GET", "/uploads"))

    def upload(self, path: Path, *, name: str | None = None) -> dict[str, Any]:
        """Upload a bundle folder (tarred deterministically), an archive or one ``.onnx``.

        Returns:
            The upload record: ``id`` and ``models`` (name, sha256, size, precision, input).
        """
        path = Path(path)
        if path.is_dir():
            with _tarred(path) as archive:
                return self._upload_file(archive, name or f"{path.name}.tar.gz", "tar")
        if not path.is_file():
            raise AgentError(f"{path} is neither a bundle folder nor a model/archive file")
        low = path.name.lower()
        kind = (
            "onnx"
            if low.endswith(".onnx")
            else "zip"
            if low.endswith(".zip")
            else "tar"
            if low.endswith((".tar", ".tar.gz", ".tgz"))
            else None
        )
        if kind is None:
            raise AgentError(f"{path}: upload a folder, .onnx, .tar, .tar.gz or .zip")
        return self._upload_file(path, name or path.name, kind)

    def _upload_file(self, path: Path, name: str, kind: str) -> dict[str, Any]:
        query = urllib.parse.urlencode({"name": name, "kind": kind})
        with open(path, "rb") as fh:
            headers = {
                "Content-Type": "application/octet-stream",
                "Content-Length": str(os.fstat(fh.fileno()).st_size),
            }
            return cast(
                dict[str, Any],
                self._request("POST", f"/uploads?{query}", data=fh, headers=headers),
            )

    def start_job(
        self,
        upload_id: str,
        *,
        runtimes: Sequence[str] = ("onnxruntime",),
        precisions: Sequence[str] = ("fp32", "int8"),
        batch_sizes: Sequence[int] = (1,),
        threads: Sequence[int] = (1,),
        warmup: int = 20,
        runs: int = 200,
        models: Sequence[str] | None = None,
    ) -> str:
        """Queue a profiling job; returns its id (the agent runs jobs one at a time)."""
        body = {
            "upload_id": upload_id,
            "runtimes": list(runtimes),
            "precisions": list(precisions),
            "batch_sizes": [int(b) for b in batch_sizes],
            "threads": [int(t) for t in threads],
            "warmup": warmup,
            "runs": runs,
            "models": None if models is None else list(models),
        }
        return str(self._request("POST", "/jobs", body=body)["id"])

    def job(self, job_id: str) -> dict[str, Any]:
        """A job's status: ``state`` (queued/running/done/failed), ``progress``, ``reason``."""
        return cast(dict[str, Any], self._request("GET", f"/jobs/{_quote(job_id)}"))

    def jobs(self) -> list[dict[str, Any]]:
        """Every job's status."""
        return cast(list[dict[str, Any]], self._request("GET", "/jobs"))

    def wait(
        self,
        job_id: str,
        on_progress: ProgressFn | None = None,
        *,
        poll_s: float = 0.2,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Poll until the job is done; ``on_progress(status)`` on every change.

        Raises:
            AgentError: The job failed (with the agent's reason) or ``timeout`` passed.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        last: Any = None
        while True:
            status = self.job(job_id)
            seen = (status["state"], status.get("progress"))
            if on_progress is not None and seen != last:
                on_progress(status)
            last = seen
            if status["state"] == "done":
                return status
            if status["state"] == "failed":
                raise AgentError(f"job {job_id} on {self.url} failed: {status.get('reason')}")
            if deadline is not None and time.monotonic() > deadline:
                raise AgentError(f"job {job_id} on {self.url} still {status['state']} after wait")
            time.sleep(poll_s)

    def results(self, job_id: str) -> dict[str, Any]:
        """A finished job's results (measurements, errors, device, environment)."""
        return cast(dict[str, Any], self._request("GET", f"/jobs/{_quote(job_id)}/results"))

    def measurements(self, results: dict[str, Any], *, run_id: str = "") -> list[Measurement]:
        """Rows for the results store (``source`` = this agent's URL)."""
        return to_measurements(results, source=self.url, run_id=run_id)


def to_measurements(results: dict[str, Any], *, source: str, run_id: str = "") -> list[Measurement]:
    """Convert an agent's results into :class:`Measurement` rows.

    ``run_id`` defaults to the job id; each row's environment records its thread count.
    """
    rows = []
    for m in results["measurements"]:
        rows.append(
            Measurement(
                model_sha256=m["model_sha256"],
                model_name=m["model_name"],
                device_id=results["device_id"],
                device_name=results["device_name"],
                runtime=m["runtime"],
                precision=m["precision"],
                batch=int(m["batch"]),
                threads=int(m["threads"]),
                p50_ms=float(m["p50_ms"]),
                p90_ms=float(m["p90_ms"]),
                p99_ms=float(m["p99_ms"]),
                mean_ms=float(m["mean_ms"]),
                throughput_per_s=float(m["throughput_per_s"]),
                versions=dict(m["versions"]),
                environment={
                    **results["environment"],
                    "threads": m["threads"],
                    "timing": m.get("timing", "wall"),
                },
                engine_build_s=m.get("engine_build_s"),
                memory_mb=m.get("memory_mb"),
                run_id=run_id or results["job_id"],
                source=source,
                recorded_at=m.get("recorded_at", ""),
            )
        )
    return rows


def profile_on_device(
    models: dict[str, Path],
    url: str,
    token: str,
    store: ResultsStore | None,
    *,
    runtimes: Sequence[str] = ("onnxruntime",),
    precisions: Sequence[str] = ("fp32", "int8"),
    batch_sizes: Sequence[int] = (1,),
    threads: Sequence[int] = (1,),
    warmup: int = 20,
    runs: int = 200,
    run_id: str = "",
    on_progress: ProgressFn | None = None,
    timeout: float | None = None,
) -> DeviceResults:
    """Upload ``models`` (name → .onnx), profile them on the agent, append rows to ``store``.

    ``int8`` measures the QDQ models among ``models``, other precisions the FP32 ones.

    Raises:
        AgentError: The agent is unreachable, refused the upload or the job, or the job failed.
    """
    client = AgentClient(url, token)
    with _models_tar(models) as archive:
        record = client._upload_file(archive, "models.tar.gz", "tar")
    job_id = client.start_job(
        record["id"],
        runtimes=runtimes,
        precisions=precisions,
        batch_sizes=batch_sizes,
        threads=threads,
        warmup=warmup,
        runs=runs,
    )
    client.wait(job_id, on_progress, timeout=timeout)
    results = client.results(job_id)
    rows = client.measurements(results, run_id=run_id)
    if store is not None:
        store.add(rows)
    return DeviceResults(
        job_id, results["device_id"], results["device_name"], rows, results["errors"]
    )


# --- deterministic archives ------------------------------------------------------------------
def _add(tar: tarfile.TarFile, path: Path, arcname: str) -> None:
    """Add one regular file with fixed owner, mode and time (same bytes → same archive)."""
    info = tarfile.TarInfo(arcname)
    info.size = path.stat().st_size
    info.mode = 0o644
    info.mtime = 0
    with open(path, "rb") as fh:
        tar.addfile(info, fh)


@contextmanager
def _writing_tar() -> Iterator[tuple[tarfile.TarFile, Path]]:
    fd, name = tempfile.mkstemp(suffix=".tar.gz", prefix="edgedistill-upload-")
    os.close(fd)
    path = Path(name)
    try:
        with (
            open(path, "wb") as raw,
            gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as gz,
            tarfile.open(
                fileobj=cast(io.BufferedIOBase, gz), mode="w", format=tarfile.PAX_FORMAT
            ) as tar,
        ):
            yield tar, path
    except BaseException:
        path.unlink(missing_ok=True)
        raise


@contextmanager
def _tarred(folder: Path) -> Iterator[Path]:
    """A gzip tar of ``folder``'s files (sorted, fixed metadata); removed afterwards."""
    with _writing_tar() as (tar, path):
        for item in sorted(folder.rglob("*")):
            rel = item.relative_to(folder).as_posix()
            if item.is_symlink():
                raise AgentError(f"{item}: links cannot be uploaded; copy the file instead")
            if item.is_file():
                _add(tar, item, rel)
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


@contextmanager
def _models_tar(models: dict[str, Path]) -> Iterator[Path]:
    """A gzip tar holding ``<name>.onnx`` for each model, with its external-data files."""
    import onnx

    with _writing_tar() as (tar, path):
        for name in sorted(models):
            source = Path(models[name])
            if not name or "/" in name or "\\" in name or name.startswith("."):
                raise AgentError(f"model name {name!r}: use a plain file name")
            if not source.is_file():
                raise AgentError(f"model {name}: {source} does not exist")
            _add(tar, source, f"{name}.onnx")
            model = onnx.load(str(source), load_external_data=False)
            locations = {
                e.value
                for t in model.graph.initializer
                if t.data_location == onnx.TensorProto.EXTERNAL
                for e in t.external_data
                if e.key == "location"
            }
            for location in sorted(locations):
                _add(tar, source.parent / location, location)
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


def _detail(exc: urllib.error.HTTPError) -> str:
    """The agent's error message (FastAPI's ``detail``), one line."""
    try:
        raw = exc.read()
        detail = json.loads(raw).get("detail", raw.decode(errors="replace"))
    except Exception:
        detail = exc.reason
    if not isinstance(detail, str):  # a validation error: a list of problems
        detail = json.dumps(detail)[:300]
    return " ".join(str(detail).split())


def _quote(value: str) -> str:
    return urllib.parse.quote(value, safe="")

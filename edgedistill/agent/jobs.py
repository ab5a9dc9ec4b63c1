"""The agent's state folder and its job queue: one worker thread, one measurement at a time.

Latency on a device is only meaningful when nothing else competes for it, so jobs never run in
parallel: each waits in a FIFO until the worker takes it. A job runs in the worker thread, not
in an HTTP request, so it survives the client disconnecting. Layout of the state folder::

    STATE/
      uploads/<id>/upload.json    written last: name, kind, models (name, sha256, size, input)
      uploads/<id>/files/         the extracted bundle (or the single .onnx)
      jobs/<id>/job.json          the request (upload, runtimes, precisions, batches, ...)
      jobs/<id>/status.json       state (queued/running/done/failed), progress, times, reason
      jobs/<id>/results.json      written atomically once the job has finished
      jobs/<id>/log.txt           one line per measurement

On start-up a job found ``running`` (the agent was killed) is marked ``failed`` with the reason
``agent restarted`` and any results file of it is removed; ``queued`` jobs run again in order.
"""

from __future__ import annotations

import queue
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from edgedistill.agent.plan import (
    JobSpec,
    device_environment,
    example_input,
    new_id,
    peak_rss_mb,
    plan,
    relevant_versions,
)
from edgedistill.agent.store import device_id, device_name, utc_now
from edgedistill.agent.unpack import unpack_upload
from edgedistill.artifacts import atomic_write_json, read_json
from edgedistill.errors import DataError

RESTARTED = "agent restarted"
STOPPED = "agent stopped"


class _Stopped(Exception):
    """Raised inside a measurement when the agent shuts down."""


class JobQueue:
    """Jobs of one state folder, run one at a time by a worker thread.

    Args:
        state_dir: The agent's state folder (created).
    """

    def __init__(self, state_dir: Path) -> None:
        self.state = Path(state_dir)
        self.uploads_dir = self.state / "uploads"
        self.jobs_dir = self.state / "jobs"
        self.uploads_dir.mkdir(parents=True, exist_ok=True)
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._worker: threading.Thread | None = None
        self._env: dict[str, Any] | None = None

    # --- environment -------------------------------------------------------------------------
    def environment(self) -> dict[str, Any]:
        """This device's environment (read once, then cached)."""
        if self._env is None:
            self._env = device_environment()
        return self._env

    def device(self) -> tuple[str, str]:
        """(device id, device name) of this machine."""
        env = self.environment()
        return device_id(env), device_name(env)

    # --- uploads -----------------------------------------------------------------------------
    def upload(self, upload_id: str) -> dict[str, Any]:
        """The record of a finished upload; :class:`DataError` (KeyError-like) when unknown."""
        path = self.uploads_dir / upload_id / "upload.json"
        if not _plain_id(upload_id) or not path.is_file():
            raise DataError(f"unknown upload {upload_id!r}")
        record: dict[str, Any] = read_json(path)
        return record

    def uploads(self) -> list[dict[str, Any]]:
        """Every finished upload, oldest first."""
        found = [read_json(p) for p in self.uploads_dir.glob("*/upload.json")]
        return sorted(found, key=lambda r: (r["created"], r["id"]))

    def add_upload(
        self, source: Path, *, kind: str, name: str, max_member_bytes: int, max_total_bytes: int
    ) -> dict[str, Any]:
        """Unpack an uploaded file (see :func:`unpack_upload`) into a new upload folder.

        Returns:
            The upload record: id, name, kind, created, models (:class:`ModelFile` dicts).
        """
        upload_id = new_id("u")
        folder = self.uploads_dir / upload_id
        folder.mkdir(parents=True)
        try:
            models = unpack_upload(
                source,
                folder / "files",
                kind=kind,
                name=name,
                max_member_bytes=max_member_bytes,
                max_total_bytes=max_total_bytes,
            )
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        record = {
            "id": upload_id,
            "name": name,
            "kind": kind,
            "created": utc_now(),
            "models": [m.to_dict() for m in models],
        }
        atomic_write_json(folder / "upload.json", record)
        return record

    # --- jobs --------------------------------------------------------------------------------
    def submit(self, spec: JobSpec) -> str:
        """Validate ``spec`` against its upload, queue it, and return the job id."""
        upload = self.upload(spec.upload_id)
        items = plan(spec, upload["models"])
        job_id = new_id("j")
        folder = self.jobs_dir / job_id
        folder.mkdir(parents=True)
        atomic_write_json(folder / "job.json", asdict(spec))
        status = {
            "id": job_id,
            "upload_id": spec.upload_id,
            "state": "queued",
            "reason": None,
            "created": utc_now(),
            "started": None,
            "finished": None,
            "progress": {"done": 0, "total": len(items), "current": None},
        }
        atomic_write_json(folder / "status.json", status)
        self._queue.put(job_id)
        return job_id

    def status(self, job_id: str) -> dict[str, Any]:
        """A job's status; :class:`DataError` when unknown."""
        path = self.jobs_dir / job_id / "status.json"
        if not _plain_id(job_id) or not path.is_file():
            raise DataError(f"unknown job {job_id!r}")
        status: dict[str, Any] = read_json(path)
        return status

    def results(self, job_id: str) -> dict[str, Any] | None:
        """A finished job's results, or None while it has none."""
        self.status(job_id)
        path = self.jobs_dir / job_id / "results.json"
        if not path.is_file():
            return None
        results: dict[str, Any] = read_json(path)
        return results

    def jobs(self) -> list[dict[str, Any]]:
        """Every job's status, oldest first."""
        found = [read_json(p) for p in self.jobs_dir.glob("*/status.json")]
        return sorted(found, key=lambda s: (s["created"], s["id"]))

    # --- worker ------------------------------------------------------------------------------
    def start(self) -> None:
        """Recover from a killed agent, queue waiting jobs, and start the worker thread."""
        if self._worker is not None:
            return
        for folder in self.uploads_dir.iterdir():  # an upload cut short has no upload.json
            if folder.is_dir() and not (folder / "upload.json").is_file():
                shutil.rmtree(folder, ignore_errors=True)
        for status in self.jobs():
            folder = self.jobs_dir / status["id"]
            if status["state"] == "running":
                (folder / "results.json").unlink(missing_ok=True)
                self._finish(folder, status, "failed", RESTARTED)
                _log(folder, f"marked failed: {RESTARTED}")
            elif status["state"] == "queued":
                self._queue.put(status["id"])
            for tmp in folder.glob(".*.tmp*"):  # atomic writes cut short by the kill
                tmp.unlink(missing_ok=True)
        self._stop.clear()
        self._worker = threading.Thread(target=self._loop, name="edgedistill-jobs", daemon=True)
        self._worker.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the worker; a job in progress is interrupted and marked ``failed``."""
        if self._worker is None:
            return
        self._stop.set()
        self._queue.put(None)
        self._worker.join(timeout)
        self._worker = None

    def wait_idle(self, timeout: float = 60.0) -> bool:
        """Block until no job is queued or running (for tests and benchmarks)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(s["state"] in ("done", "failed") for s in self.jobs()):
                return True
            time.sleep(0.05)
        return False

    def _loop(self) -> None:
        while not self._stop.is_set():
            job_id = self._queue.get()
            if job_id is None or self._stop.is_set():
                break
            try:
                self._run(job_id)
            except Exception as exc:  # the worker must survive any job
                folder = self.jobs_dir / job_id
                self._finish(folder, read_json(folder / "status.json"), "failed", str(exc))

    def _finish(self, folder: Path, status: dict[str, Any], state: str, reason: str | None) -> None:
        status.update(state=state, reason=reason, finished=utc_now())
        atomic_write_json(folder / "status.json", status)

    def _run(self, job_id: str) -> None:
        folder = self.jobs_dir / job_id
        status = read_json(folder / "status.json")
        if status["state"] != "queued":
            return
        spec = JobSpec(**read_json(folder / "job.json"))
        upload = self.upload(spec.upload_id)
        items = plan(spec, upload["models"])
        status.update(state="running", started=utc_now())
        status["progress"] = {"done": 0, "total": len(items), "current": None}
        atomic_write_json(folder / "status.json", status)
        env = self.environment()
        dev_id, dev_name = self.device()
        rows: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        files = self.uploads_dir / spec.upload_id / "files"
        try:
            for done, item in enumerate(items):
                label = (
                    f"{item['model']['name']} {item['runtime']} {item['precision']} "
                    f"b{item['batch']} t{item['threads']}"
                )
                status["progress"] = {"done": done, "total": len(items), "current": label}
                atomic_write_json(folder / "status.json", status)
                try:
                    row = self._measure(item, files, spec, env, status, folder)
                except _Stopped:
                    raise
                except Exception as exc:
                    message = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
                    errors.append({"item": label, "error": message})
                    _log(folder, f"{label}: error: {message}")
                    continue
                rows.append(row)
                _log(folder, f"{label}: p50 {row['p50_ms']:.4f} ms")
        except _Stopped:
            self._finish(folder, status, "failed", STOPPED)
            return
        results = {
            "job_id": job_id,
            "upload_id": spec.upload_id,
            "device_id": dev_id,
            "device_name": dev_name,
            "environment": env,
            "measurements": rows,
            "errors": errors,
        }
        atomic_write_json(folder / "results.json", results)
        status["progress"] = {"done": len(items), "total": len(items), "current": None}
        failed = not rows
        self._finish(
            folder,
            status,
            "failed" if failed else "done",
            f"every measurement failed; first: {errors[0]['error']}" if failed else None,
        )

    def _measure(
        self,
        item: dict[str, Any],
        files: Path,
        spec: JobSpec,
        env: dict[str, Any],
        status: dict[str, Any],
        folder: Path,
    ) -> dict[str, Any]:
        from edgedistill.bench.latency import measure_latency
        from edgedistill.runtime.registry import make_runner, runtime_spec

        model = item["model"]
        batch, threads = item["batch"], item["threads"]
        x = example_input(model, batch)
        # Engine-building runtimes (TensorRT) build one engine per model and precision for
        # the job's batch sizes, cached in the job folder; the others ignore these options.
        options = {"batch_sizes": list(spec.batch_sizes), "engine_dir": str(folder / "engines")}
        runner = make_runner(
            item["runtime"],
            files / model["path"],
            model["name"],
            threads=threads,
            precision=item["precision"],
            options=options,
        )
        on_run = self._progress_callback(status, folder, spec.runs)
        started = time.perf_counter()
        try:
            runner.load()
            load_s = time.perf_counter() - started
            summary = measure_latency(runner, x, warmup=spec.warmup, runs=spec.runs, on_run=on_run)
        finally:
            runner.close()
        build = getattr(runner, "build_seconds", None)
        p50 = summary["p50"]
        return {
            "model_name": model["name"],
            "model_sha256": model["sha256"],
            "runtime": item["runtime"],
            "precision": item["precision"],
            "batch": batch,
            "threads": threads,
            "p50_ms": p50,
            "p90_ms": summary["p90"],
            "p99_ms": summary["p99"],
            "mean_ms": summary["mean"],
            "throughput_per_s": batch * 1000.0 / p50 if p50 > 0 else 0.0,
            "engine_build_s": None if build is None else float(build),
            "load_s": load_s,
            "memory_mb": peak_rss_mb(),
            "versions": relevant_versions(env, runtime_spec(item["runtime"]).modules),
            "timing": summary.get("timing", "wall"),
            "summary": summary,
            "warmup": spec.warmup,
            "recorded_at": utc_now(),
        }

    def _progress_callback(
        self, status: dict[str, Any], folder: Path, runs: int
    ) -> Callable[[], None]:
        """Called after every timed run: stops on shutdown, and every 0.5 s records how far
        the current measurement is (so a long one shows movement)."""
        count = 0
        last = time.monotonic()

        def on_run() -> None:
            nonlocal count, last
            if self._stop.is_set():
                raise _Stopped
            count += 1
            now = time.monotonic()
            if now - last > 0.5:
                last = now
                status["progress"]["runs"] = f"{count}/{runs}"
                with self._lock:
                    atomic_write_json(folder / "status.json", status)

        return on_run


def _plain_id(value: str) -> bool:
    return bool(value) and all(c.isalnum() or c in "-_" for c in value)


def _log(folder: Path, line: str) -> None:
    with open(folder / "log.txt", "a", encoding="utf-8") as fh:
        fh.write(f"{utc_now()} {line}\n")

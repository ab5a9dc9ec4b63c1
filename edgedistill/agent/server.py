"""The device agent's HTTP API (FastAPI, extra ``[agent]``).

Run it on the machine that will run the model (a Jetson, a GPU server, a phone-class board):
uploads are unpacked safely (:mod:`edgedistill.agent.unpack`), jobs wait in one queue and run
one at a time in a worker thread (:mod:`edgedistill.agent.jobs`). Every request needs
``Authorization: Bearer <token>``; tokens are compared in constant time. Uploads are raw request
bodies streamed to disk (no multipart parser), refused with 413 as soon as they pass the limit.

Endpoints (JSON): ``GET /health``, ``GET /environment``, ``POST /uploads?name=&kind=``,
``GET /uploads``, ``POST /jobs``, ``GET /jobs``, ``GET /jobs/{id}``, ``GET /jobs/{id}/results``.
"""

from __future__ import annotations

import hmac
import os
import socket
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from edgedistill.agent.client import read_token
from edgedistill.agent.errors import AgentError
from edgedistill.agent.jobs import JobQueue
from edgedistill.agent.plan import JobSpec
from edgedistill.errors import DataError, EdgeDistillError, MissingDependencyError

try:
    import uvicorn
    from fastapi import FastAPI, HTTPException, Request, Response
    from fastapi.concurrency import run_in_threadpool
    from fastapi.responses import JSONResponse
    from pydantic import BaseModel, Field
except ImportError as _exc:  # pragma: no cover - the [agent] extra is in [dev]
    raise MissingDependencyError(
        _exc.name or "fastapi", "agent", "the device agent server"
    ) from None


class JobRequest(BaseModel):
    """Body of ``POST /jobs`` (see :class:`edgedistill.agent.jobs.JobSpec`)."""

    upload_id: str
    runtimes: list[str] = Field(default_factory=lambda: ["onnxruntime"])
    precisions: list[str] = Field(default_factory=lambda: ["fp32", "int8"])
    batch_sizes: list[int] = Field(default_factory=lambda: [1])
    threads: list[int] = Field(default_factory=lambda: [1])
    warmup: int = 20
    runs: int = 200
    models: list[str] | None = None


def infer_kind(name: str) -> str:
    """Upload kind from a file name: ``onnx``, ``zip`` or ``tar`` (.tar, .tar.gz, .tgz)."""
    low = name.lower()
    if low.endswith(".onnx"):
        return "onnx"
    if low.endswith(".zip"):
        return "zip"
    if low.endswith((".tar", ".tar.gz", ".tgz")):
        return "tar"
    raise DataError(f"cannot tell the kind of upload {name!r}: pass kind=tar|zip|onnx")


def create_app(
    state_dir: Path,
    token: str,
    *,
    max_upload_mb: int = 512,
    max_extract_mb: int | None = None,
) -> FastAPI:
    """The agent's FastAPI app over the state folder ``state_dir``.

    Args:
        state_dir: Uploads and jobs live here (created); a restarted agent picks them up.
        token: The bearer token every request must carry.
        max_upload_mb: Largest request body (MiB); larger uploads get 413.
        max_extract_mb: Largest unpacked upload (MiB, per file and in total); default 4×
            ``max_upload_mb``.
    """
    if not token:
        raise AgentError("the agent needs a token")
    from edgedistill import __version__
    from edgedistill.runtime.registry import runtime_status

    state = Path(state_dir)
    jobs = JobQueue(state)
    incoming = state / "incoming"
    max_body = int(max_upload_mb * 1024 * 1024)
    max_extract = int((max_extract_mb or 4 * max_upload_mb) * 1024 * 1024)
    expected = f"Bearer {token}".encode()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        incoming.mkdir(parents=True, exist_ok=True)
        for stale in incoming.iterdir():
            stale.unlink(missing_ok=True)
        jobs.start()
        try:
            yield
        finally:
            jobs.stop()

    app = FastAPI(title="edgedistill device agent", version=__version__, lifespan=lifespan)
    app.state.jobs = jobs

    @app.middleware("http")
    async def authenticate(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        given = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(given, expected):
            return JSONResponse(
                {"detail": "missing or wrong token (Authorization: Bearer <token>)"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        return await call_next(request)

    @app.exception_handler(EdgeDistillError)
    async def user_error(request: Request, exc: EdgeDistillError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    def known(fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except DataError as exc:
            raise HTTPException(404, str(exc)) from None

    @app.get("/health")
    def health() -> dict[str, Any]:
        dev_id, dev_name = jobs.device()
        return {"ok": True, "version": __version__, "device_id": dev_id, "device_name": dev_name}

    @app.get("/environment")
    def environment() -> dict[str, Any]:
        dev_id, dev_name = jobs.device()
        return {
            "device_id": dev_id,
            "device_name": dev_name,
            "environment": jobs.environment(),
            "runtimes": runtime_status(),
        }

    @app.post("/uploads")
    async def upload(request: Request, name: str = "upload", kind: str | None = None) -> Any:
        kind = kind or infer_kind(name)
        declared = request.headers.get("content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                raise HTTPException(400, "Content-Length is not a number") from None
            if size > max_body:
                raise HTTPException(413, f"upload of {size} bytes is over {max_body} bytes")
        incoming.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=incoming, suffix=".part")
        tmp = Path(tmp_name)
        try:
            received = 0
            with os.fdopen(fd, "wb") as out:
                async for chunk in request.stream():
                    received += len(chunk)
                    if received > max_body:
                        raise HTTPException(413, f"upload over the limit of {max_body} bytes")
                    out.write(chunk)
            return await run_in_threadpool(
                jobs.add_upload,
                tmp,
                kind=kind,
                name=name,
                max_member_bytes=max_extract,
                max_total_bytes=max_extract,
            )
        finally:
            tmp.unlink(missing_ok=True)

    @app.get("/uploads")
    def uploads() -> list[dict[str, Any]]:
        return jobs.uploads()

    @app.get("/uploads/{upload_id}")
    def upload_record(upload_id: str) -> dict[str, Any]:
        record: dict[str, Any] = known(jobs.upload, upload_id)
        return record

    @app.post("/jobs")
    def submit(body: JobRequest) -> dict[str, Any]:
        known(jobs.upload, body.upload_id)
        job_id = jobs.submit(JobSpec(**body.model_dump()))
        return {"id": job_id, **jobs.status(job_id)}

    @app.get("/jobs")
    def job_list() -> list[dict[str, Any]]:
        return jobs.jobs()

    @app.get("/jobs/{job_id}")
    def job_status(job_id: str) -> dict[str, Any]:
        status: dict[str, Any] = known(jobs.status, job_id)
        return status

    @app.get("/jobs/{job_id}/results")
    def job_results(job_id: str) -> dict[str, Any]:
        status = known(jobs.status, job_id)
        results = jobs.results(job_id)
        if results is None:
            why = f": {status['reason']}" if status.get("reason") else ""
            raise HTTPException(409, f"job {job_id} is {status['state']}{why}; no results")
        return results

    return app


def _listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket (``port`` 0 picks a free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise AgentError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def _url(sock: socket.socket, host: str) -> str:
    port = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


def serve(
    state_dir: Path,
    host: str = "127.0.0.1",
    port: int = 8765,
    token_file: Path | None = None,
    *,
    max_upload_mb: int = 512,
    log_level: str = "warning",
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Run the agent in the foreground until interrupted.

    Args:
        state_dir: The state folder.
        host: Interface to bind; anything but loopback exposes the agent to the network.
        port: TCP port (0 picks a free one; ``on_ready`` gets the real URL).
        token_file: File holding the token; else ``EDGEDISTILL_AGENT_TOKEN``.
        max_upload_mb: Largest upload (MiB).
        log_level: uvicorn's log level.
        on_ready: Called with the URL once the socket listens (before requests are served).

    Raises:
        AgentError: No token, or the address cannot be bound.
    """
    token = read_token(token_file)
    app = create_app(state_dir, token, max_upload_mb=max_upload_mb)
    sock = _listen(host, port)
    if on_ready is not None:
        on_ready(_url(sock, host))
    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, lifespan="on"))
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()


def serve_in_thread(
    state_dir: Path, token: str, *, max_upload_mb: int = 512, timeout: float = 30.0
) -> tuple[str, Callable[[], None]]:
    """Start the agent on a free loopback port in a background thread (tests, benchmarks).

    Returns:
        (base URL, stop) — ``stop()`` shuts the server and its job worker down.
    """
    app = create_app(state_dir, token, max_upload_mb=max_upload_mb)
    sock = _listen("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="error", lifespan="on"))
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="edgedistill-agent", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            sock.close()
            raise AgentError("the agent did not start")
        time.sleep(0.01)

    def stop() -> None:
        server.should_exit = True
        thread.join(timeout)
        sock.close()

    return _url(sock, "127.0.0.1"), stop


__all__ = ["JobRequest", "create_app", "read_token", "serve", "serve_in_thread"]

"""The device agent end to end on loopback: auth, upload limits, unsafe archives, profiling with
onnxruntime, one job at a time, crash recovery, and one-line client errors."""

from __future__ import annotations

import http.client
import io
import json
import os
import select
import signal
import stat
import subprocess
import sys
import tarfile
import threading
import time
import urllib.parse
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from edgedistill.agent.client import (
    AgentClient,
    _tarred,
    profile_on_device,
)
from edgedistill.agent.errors import AgentError
from edgedistill.agent.plan import JobSpec, plan, relevant_versions
from edgedistill.agent.server import serve_in_thread
from edgedistill.agent.store import ResultsStore
from edgedistill.agent.unpack import _Budget, unpack_upload
from edgedistill.artifacts import sha256_file
from edgedistill.errors import DataError, UnsafeFileError
from edgedistill.pipeline.device import profile_run_on_device

TOKEN = "test-token-0123456789abcdef"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny real ONNX model (Linear 16 -> 4, dynamic batch)."""
    from edgedistill.export.onnx import export_onnx

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "linear.onnx"
    return export_onnx(torch.nn.Linear(16, 4), (16,), path)


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """An agent on a free loopback port with a 1 MiB upload limit: (url, state dir)."""
    state = tmp_path_factory.mktemp("agent") / "state"
    url, stop = serve_in_thread(state, TOKEN, max_upload_mb=1)
    yield url, state
    stop()


def raw(
    url: str,
    method: str,
    path: str,
    *,
    token: str | None = TOKEN,
    body: bytes | Iterator[bytes] | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    """One request with http.client (no client-side checks): (status, parsed JSON)."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=30)
    all_headers = dict(headers or {})
    if token is not None:
        all_headers["Authorization"] = f"Bearer {token}"
    try:
        conn.request(method, path, body=body, headers=all_headers)
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        conn.close()


def files_under(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")}


# --- auth ----------------------------------------------------------------------------------
def test_requests_without_or_with_a_wrong_token_get_401(agent: tuple[str, Path]) -> None:
    url, _ = agent
    assert raw(url, "GET", "/health", token=None)[0] == 401
    assert raw(url, "GET", "/health", token=TOKEN + "x")[0] == 401
    assert raw(url, "GET", "/jobs", token="")[0] == 401
    status, body = raw(url, "POST", "/uploads?name=a.onnx", token="nope", body=b"x" * 100)
    assert status == 401 and "token" in body["detail"]
    status, body = raw(url, "GET", "/health")
    assert status == 200 and body["ok"] is True and len(body["device_id"]) == 12
    with pytest.raises(AgentError, match=r"HTTP 401: missing or wrong token") as info:
        AgentClient(url, "wrong-token-but-long-enough").health()
    assert "\n" not in str(info.value)


# --- upload size limits --------------------------------------------------------------------
def test_oversize_uploads_get_413_and_leave_nothing(agent: tuple[str, Path]) -> None:
    url, state = agent
    before = files_under(state / "uploads")
    two_mb = b"\0" * (2 * 1024 * 1024)
    # an honest Content-Length over the limit: refused before reading
    status, body = raw(url, "POST", "/uploads?name=big.onnx", body=two_mb)
    assert status == 413, body
    # a Content-Length that claims 2 GB (only a few bytes follow)
    status, body = raw(
        url,
        "POST",
        "/uploads?name=big.onnx",
        body=b"tiny",
        headers={"Content-Length": str(2 * 1024**3)},
    )
    assert status == 413 and "2147483648" in body["detail"]

    # no Content-Length (chunked): counted while streaming
    def chunks() -> Iterator[bytes]:
        for _ in range(32):
            yield b"\0" * 65536

    status, body = raw(
        url,
        "POST",
        "/uploads?name=big.onnx",
        body=chunks(),  # http.client sends an iterator chunked, without Content-Length
    )
    assert status == 413 and "over the limit" in body["detail"]
    assert files_under(state / "uploads") == before
    assert list((state / "incoming").iterdir()) == []


# --- unsafe archives -----------------------------------------------------------------------
def _tar(member: tarfile.TarInfo, data: bytes = b"") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        good = tarfile.TarInfo("ok.txt")
        good.size = 2
        tar.addfile(good, io.BytesIO(b"ok"))
        member.size = len(data) if member.isfile() else 0
        tar.addfile(member, io.BytesIO(data) if member.isfile() else None)
    return buffer.getvalue()


def _member(name: str, kind: bytes = tarfile.REGTYPE, **fields: Any) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    for key, value in fields.items():
        setattr(info, key, value)
    return info


UNSAFE = {
    "dotdot": (_member("../x"), "'..'"),
    "nested-dotdot": (_member("app/../../x"), "'..'"),
    "absolute": (_member("/tmp/edgedistill-abs-test"), "absolute path"),
    "symlink": (_member("model.onnx", tarfile.SYMTYPE, linkname="/etc/passwd"), "is a link"),
    "hardlink": (_member("model.onnx", tarfile.LNKTYPE, linkname="ok.txt"), "is a link"),
    "device": (_member("dev", tarfile.CHRTYPE, devmajor=1, devminor=3), "not a regular file"),
    "fifo": (_member("fifo", tarfile.FIFOTYPE), "not a regular file"),
}


@pytest.mark.parametrize("case", sorted(UNSAFE))
def test_unsafe_tar_gets_400_naming_the_member(agent: tuple[str, Path], case: str) -> None:
    url, state = agent
    member, why = UNSAFE[case]
    name = member.name
    outside = state.parent
    before_outside = files_under(outside)
    status, body = raw(url, "POST", "/uploads?name=evil.tar.gz&kind=tar", body=_tar(member, b"x"))
    assert status == 400, body
    assert why in body["detail"] and repr(name) in body["detail"]
    assert "\n" not in body["detail"]
    assert not Path("/tmp/edgedistill-abs-test").exists()
    # nothing new anywhere outside the state folder, and no upload folder left behind
    after = files_under(outside)
    assert {p for p in after - before_outside if not p.startswith("state/")} == set()
    assert not any((state / "uploads").glob("*/files/ok.txt"))


def test_zip_members_and_bombs_are_refused(tmp_path: Path) -> None:
    def unpack(data: bytes, limit: int = 1 << 20) -> None:
        source = tmp_path / "upload.zip"
        source.write_bytes(data)
        dest = tmp_path / "dest"
        try:
            unpack_upload(
                source,
                dest,
                kind="zip",
                name="u.zip",
                max_member_bytes=limit,
                max_total_bytes=limit,
            )
        finally:
            assert not dest.exists()  # refused uploads leave no folder

    def make(entries: list[tuple[zipfile.ZipInfo | str, bytes]]) -> bytes:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for info, data in entries:
                archive.writestr(info, data)
        return buffer.getvalue()

    with pytest.raises(UnsafeFileError, match=r"'\.\./x'.*'\.\.'"):
        unpack(make([("../x", b"x")]))
    link = zipfile.ZipInfo("model.onnx")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    with pytest.raises(UnsafeFileError, match=r"'model\.onnx' is a link"):
        unpack(make([(link, b"/etc/passwd")]))
    # declared size over the limit (5 MiB of zeros compress to a few KiB)
    bomb = make([("zeros.bin", b"\0" * (5 << 20))])
    assert len(bomb) < 20_000
    with pytest.raises(UnsafeFileError, match=r"'zeros\.bin' is 5242880 bytes, over"):
        unpack(bomb)
    # the same bomb with its declared sizes forged down to 100 bytes: still refused
    forged = bytearray(bomb)
    size = (5 << 20).to_bytes(4, "little")
    assert forged.count(size) == 2  # local header and central directory
    forged = bytearray(bytes(forged).replace(size, (100).to_bytes(4, "little")))
    with pytest.raises(UnsafeFileError, match=r"expands past the size limit|broken zip"):
        unpack(bytes(forged))
    # the extraction itself counts bytes, whatever a header declared
    budget = _Budget("u.zip", max_member=1 << 20, max_total=1 << 20)
    budget.declared("liar.bin", 100)
    with pytest.raises(UnsafeFileError, match=r"'liar\.bin' expands past the size limit"):
        budget.copy("liar.bin", io.BytesIO(b"\0" * (3 << 20)), tmp_path / "liar.bin")
    assert (tmp_path / "liar.bin").stat().st_size <= 1 << 20
    # members adding up past the total
    with pytest.raises(UnsafeFileError, match="takes the upload over"):
        unpack(make([(f"f{i}.bin", b"\0" * 400_000) for i in range(3)]))


def test_upload_without_model_and_bad_onnx_are_400(agent: tuple[str, Path]) -> None:
    url, _ = agent
    info = tarfile.TarInfo("readme.txt")
    status, body = raw(url, "POST", "/uploads?name=b.tar&kind=tar", body=_tar(info, b"hi"))
    assert status == 400 and "no .onnx model" in body["detail"]
    status, body = raw(url, "POST", "/uploads?name=m.onnx", body=b"not a protobuf at all")
    assert status == 400 and "not a readable ONNX model" in body["detail"]


# --- profiling -----------------------------------------------------------------------------
def test_profile_bundle_matches_local_latency(
    agent: tuple[str, Path], model: Path, tmp_path: Path
) -> None:
    from edgedistill.bench.latency import measure_latency
    from edgedistill.runtime.registry import make_runner

    url, _ = agent
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "model.onnx").write_bytes(model.read_bytes())
    (bundle / "manifest.json").write_text('{"name": "linear"}')
    (bundle / "example.py").write_text("print('hi')\n")
    with _tarred(bundle) as first, _tarred(bundle) as second:  # deterministic archives
        assert sha256_file(first) == sha256_file(second)

    client = AgentClient(url, TOKEN)
    record = client.upload(bundle)
    assert [(m["name"], m["precision"], m["input_shape"]) for m in record["models"]] == [
        ("model", "fp32", [None, 16])
    ]
    assert record["models"][0]["sha256"] == sha256_file(model)
    seen: list[dict[str, Any]] = []
    job_id = client.start_job(record["id"], batch_sizes=[1, 4], warmup=20, runs=300)
    final = client.wait(job_id, seen.append, poll_s=0.05)
    assert final["state"] == "done" and final["progress"] == {
        "done": 2,
        "total": 2,
        "current": None,
    }
    assert seen and seen[-1]["state"] == "done"
    results = client.results(job_id)
    assert results["errors"] == []
    rows = client.measurements(results, run_id="bundle-test")
    assert [(m.batch, m.precision, m.runtime) for m in rows] == [
        (1, "fp32", "onnxruntime"),
        (4, "fp32", "onnxruntime"),
    ]
    b1 = rows[0]
    assert b1.model_sha256 == sha256_file(model) and b1.source == url
    assert b1.device_id == client.health()["device_id"]
    assert b1.p50_ms <= b1.p90_ms <= b1.p99_ms
    assert b1.throughput_per_s == pytest.approx(1000.0 / b1.p50_ms)
    assert rows[1].throughput_per_s == pytest.approx(4000.0 / rows[1].p50_ms)
    assert b1.versions["onnxruntime"] and b1.memory_mb is not None and b1.memory_mb > 10
    assert b1.environment["threads"] == 1

    with make_runner("onnxruntime", model, "local", threads=1) as runner:
        x = torch.randn(1, 16).numpy()
        local = measure_latency(runner, x, warmup=20, runs=300)["p50"]
    ratio = b1.p50_ms / local
    assert 0.33 <= ratio <= 3.0, (b1.p50_ms, local)


def test_job_requests_are_validated(agent: tuple[str, Path], model: Path) -> None:
    url, _ = agent
    client = AgentClient(url, TOKEN)
    upload_id = client.upload(model)["id"]
    with pytest.raises(AgentError, match=r"HTTP 400: unknown runtime 'tflite'; known: \[") as e:
        client.start_job(upload_id, runtimes=["tflite"])
    assert "onnxruntime" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(AgentError, match=r"HTTP 400: unknown precision 'fp8'.*'fp32', 'int8'"):
        client.start_job(upload_id, precisions=["fp8"])
    with pytest.raises(AgentError, match="runs torch modules"):
        client.start_job(upload_id, runtimes=["torch"])
    with pytest.raises(AgentError, match="nothing to measure"):
        client.start_job(upload_id, precisions=["int8"])  # the upload has no QDQ model
    with pytest.raises(AgentError, match=r"HTTP 404: unknown upload 'u-missing'"):
        client.start_job("u-missing")
    with pytest.raises(AgentError, match="HTTP 404: unknown job"):
        client.job("j-missing")


def test_plan_pairs_int8_with_qdq_models() -> None:
    models = [
        {"name": "m", "precision": "fp32", "input_name": "x", "input_shape": [None, 3]},
        {"name": "m-int8", "precision": "int8", "input_name": "x", "input_shape": [None, 3]},
    ]
    spec = JobSpec("u", ["onnxruntime"], ["fp32", "int8"], [1, 8], [1])
    items = [(i["model"]["name"], i["precision"], i["batch"]) for i in plan(spec, models)]
    assert items == [
        ("m", "fp32", 1),
        ("m", "fp32", 8),
        ("m-int8", "int8", 1),
        ("m-int8", "int8", 8),
    ]
    env = {
        "libraries": {"onnxruntime-gpu": "1.20", "torch": "2.4", "numpy": "2.1", "tensorrt": "10"},
        "gpu": {"driver": "540.4", "cuda_driver": "12.6", "gpus": [{"name": "Orin"}]},
        "jetson": {"l4t": {"l4t": "36.4.0", "release": "R36"}, "power_mode": "MAXN"},
    }
    assert relevant_versions(env, ("onnxruntime",)) == {
        "gpu.cuda_driver": "12.6",
        "gpu.driver": "540.4",
        "jetson.l4t": "36.4.0",
        "numpy": "2.1",
        "onnxruntime-gpu": "1.20",
    }
    symbolic = [{**models[0], "input_shape": [None, None]}]
    with pytest.raises(DataError, match="symbolic dim"):
        plan(spec, symbolic)
    with pytest.raises(DataError, match=r"batch values must be in \[1, 4096\]"):
        plan(JobSpec("u", ["onnxruntime"], batch_sizes=[0]), models)


def test_two_clients_at_once_run_one_after_the_other(
    agent: tuple[str, Path], model: Path, tmp_path: Path
) -> None:
    url, _ = agent
    store = ResultsStore(tmp_path / "results.sqlite")
    outcomes: dict[str, Any] = {}

    def submit(name: str) -> None:
        try:
            outcomes[name] = profile_on_device(
                {name: model}, url, TOKEN, store, warmup=5, runs=20_000, run_id=name
            )
        except BaseException as exc:
            outcomes[name] = exc

    threads = [threading.Thread(target=submit, args=(n,)) for n in ("first", "second")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(not isinstance(v, BaseException) for v in outcomes.values()), outcomes
    client = AgentClient(url, TOKEN)
    first, second = sorted(
        (client.job(outcomes[n].job_id) for n in ("first", "second")), key=lambda s: s["started"]
    )
    assert second["created"] < first["finished"]  # both were submitted while the first ran...
    assert first["finished"] <= second["started"]  # ...yet the second waited for it
    listed = {s["id"] for s in client.jobs()}
    assert {first["id"], second["id"]} <= listed
    for name in ("first", "second"):
        rows = store.query(run_id=name)
        assert [m.model_name for m in rows] == [name] and rows[0].source == url


def test_profile_run_on_device_appends_to_the_run_store(
    agent: tuple[str, Path], model: Path, tmp_path: Path
) -> None:
    url, _ = agent
    run = tmp_path / "my-run"
    (run / "export").mkdir(parents=True)
    (run / "export" / "student.onnx").write_bytes(model.read_bytes())
    manifest = {"outputs": {"student.onnx": "x"}, "metrics": {"models": ["student"]}}
    (run / "export" / "manifest.json").write_text(json.dumps(manifest))
    result = profile_run_on_device(run, url, TOKEN, warmup=2, runs=20)
    rows = ResultsStore(run / "results.sqlite").query()
    assert [(m.model_name, m.run_id) for m in rows] == [("student", "my-run")]
    assert result.measurements == rows
    with pytest.raises(AgentError, match="no finished export stage"):
        profile_run_on_device(tmp_path, url, TOKEN)


def test_cli_device_profile_prints_and_stores(
    agent: tuple[str, Path], model: Path, tmp_path: Path
) -> None:
    from edgedistill.cli.agent import is_loopback
    from edgedistill.cli.app import app

    url, _ = agent
    store = tmp_path / "cli.sqlite"
    args = ["device", "profile", str(model), "--device", url, "--store", str(store)]
    result = CliRunner().invoke(
        app, [*args, "--runs", "20", "--batch-sizes", "1,2"], env={"EDGEDISTILL_AGENT_TOKEN": TOKEN}
    )
    assert result.exit_code == 0, result.output
    assert "2 row(s) appended" in result.output and "linear" in result.output
    rows = ResultsStore(store).query()
    assert [(m.model_name, m.batch) for m in rows] == [("linear", 1), ("linear", 2)]
    assert all(m.run_id.startswith("j-") for m in rows)  # a single file: the job id
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.20")


# --- errors are one line -------------------------------------------------------------------
def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_client_and_cli_errors_are_one_line(tmp_path: Path) -> None:
    from edgedistill.cli.app import app

    url = f"http://127.0.0.1:{_closed_port()}"
    with pytest.raises(AgentError) as info:
        AgentClient(url, TOKEN).health()
    assert str(info.value) == (
        f"cannot reach the agent at {url}: connection refused "
        "(is `edgedistill agent serve` running there?)"
    )
    runner = CliRunner()
    env = {"EDGEDISTILL_AGENT_TOKEN": TOKEN}
    result = runner.invoke(app, ["device", "environment", "--device", url], env=env)
    assert result.exit_code == 8
    assert result.output.strip().splitlines() == [f"error: {info.value}"]
    result = runner.invoke(
        app, ["agent", "serve", "--state", str(tmp_path)], env={"EDGEDISTILL_AGENT_TOKEN": ""}
    )
    assert result.exit_code == 8 and "no agent token" in result.output
    assert len(result.output.strip().splitlines()) == 1


# --- crash recovery ------------------------------------------------------------------------
def _start_agent(state: Path, token_file: Path, log: Path) -> tuple[subprocess.Popen[str], str]:
    cmd = [sys.executable, "-m", "edgedistill", "agent", "serve", "--state", str(state)]
    cmd += ["--port", "0", "--token-file", str(token_file)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=log.open("a"), text=True, env=env, cwd=REPO
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.5)
        if ready:
            line = proc.stdout.readline()
            if line.startswith("agent listening on "):
                return proc, line.split()[3]
        if proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError(f"agent did not start: {log.read_text()[-2000:]}")


def _wait_ready(client: AgentClient) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            client.health()
            return
        except AgentError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_agent_killed_mid_job_marks_it_failed_and_keeps_state(tmp_path: Path, model: Path) -> None:
    state, token_file, log = tmp_path / "state", tmp_path / "token", tmp_path / "agent.log"
    token_file.write_text(TOKEN + "\n")
    proc, url = _start_agent(state, token_file, log)
    try:
        client = AgentClient(url, TOKEN)
        _wait_ready(client)
        upload = client.upload(model)
        long_job = client.start_job(upload["id"], warmup=0, runs=1_000_000)
        queued_job = client.start_job(upload["id"], warmup=0, runs=10)
        deadline = time.monotonic() + 30
        while client.job(long_job)["state"] != "running":
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    assert (state / "jobs" / long_job / "status.json").is_file()

    proc, url = _start_agent(state, token_file, log)
    try:
        client = AgentClient(url, TOKEN)
        _wait_ready(client)
        status = client.job(long_job)
        assert status["state"] == "failed" and status["reason"] == "agent restarted"
        assert not (state / "jobs" / long_job / "results.json").exists()
        with pytest.raises(AgentError, match=r"HTTP 409: .*failed: agent restarted; no results"):
            client.results(long_job)
        assert [u["id"] for u in client.uploads()] == [upload["id"]]  # state survived
        # the job that was waiting runs after the restart, and new jobs run too
        assert client.wait(queued_job, timeout=30)["state"] == "done"
        new_job = client.start_job(upload["id"], warmup=0, runs=10)
        assert client.wait(new_job, timeout=30)["state"] == "done"
        assert len(client.results(new_job)["measurements"]) == 1
        assert (
            "marked failed: agent restarted" in (state / "jobs" / long_job / "log.txt").read_text()
        )
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

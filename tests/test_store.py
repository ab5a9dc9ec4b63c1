"""The append-only SQLite results store and the device id."""

from __future__ import annotations

import dataclasses
import sqlite3
import threading
from pathlib import Path

import pytest

from edgedistill.agent.store import Measurement, ResultsStore, device_id, device_name
from edgedistill.errors import DataError


def row(**changes: object) -> Measurement:
    base = Measurement(
        model_sha256="a" * 64,
        model_name="student",
        device_id="dev1",
        device_name="jetson",
        runtime="onnxruntime",
        precision="fp32",
        batch=1,
        threads=2,
        p50_ms=1.25,
        p90_ms=1.5,
        p99_ms=2.0,
        mean_ms=1.3,
        throughput_per_s=800.0,
        versions={"onnxruntime": "1.31.1"},
        environment={"machine": "jetson", "cpu": "ARMv8", "libraries": {"numpy": "2.1"}},
        engine_build_s=None,
        memory_mb=512.5,
        run_id="run-a",
        source="local",
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_round_trip_keeps_every_field_and_fills_recorded_at(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path / "r.sqlite")
    given = [row(), row(runtime="tensorrt", precision="fp16", engine_build_s=12.5, memory_mb=None)]
    assert store.add(given) == 2
    got = store.query()
    assert len(got) == 2
    for before, after in zip(given, got, strict=True):
        assert after.recorded_at.endswith("+00:00") and after.recorded_at[:4].isdigit()
        assert dataclasses.replace(after, recorded_at="") == before
    assert got[1].engine_build_s == 12.5 and got[1].memory_mb is None
    assert got[0].environment["libraries"] == {"numpy": "2.1"}
    # a given recorded_at is kept, not overwritten
    store.add([row(recorded_at="2020-01-01T00:00:00+00:00")])
    assert store.query()[-1].recorded_at == "2020-01-01T00:00:00+00:00"
    # a second store object on the same file sees the same rows
    assert len(ResultsStore(tmp_path / "r.sqlite").query()) == 3


def test_query_filters(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path / "r.sqlite")
    store.add([row(), row(device_id="dev2"), row(model_sha256="b" * 64, run_id="run-b")])
    assert len(store.query(device_id="dev1")) == 2
    assert len(store.query(device_id="dev2")) == 1
    assert [m.run_id for m in store.query(model_sha256="b" * 64)] == ["run-b"]
    assert len(store.query(device_id="dev1", run_id="run-a")) == 1
    assert store.query(device_id="nope") == []
    assert store.devices() == [("dev1", "jetson"), ("dev2", "jetson")]


def test_append_only(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite"
    store = ResultsStore(path)
    store.add([row(p50_ms=1.0)])
    store.add([row(p50_ms=2.0)])  # a second run of the same thing appends
    assert [m.p50_ms for m in store.query()] == [1.0, 2.0]
    conn = sqlite3.connect(path)
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("UPDATE measurements SET p50_ms = 0")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("DELETE FROM measurements")
    conn.close()
    assert len(store.query()) == 2
    assert store.add([]) == 0


def test_add_is_one_transaction(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path / "r.sqlite")
    bad = row(p50_ms=None)  # NOT NULL column: the whole batch is refused
    with pytest.raises(DataError, match="row refused"):
        store.add([row(), row(batch=2), bad])
    assert store.query() == []


def test_latest_keeps_newest_row_per_setting_and_versions(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path / "r.sqlite")
    store.add(
        [
            row(p50_ms=3.0, recorded_at="2026-01-01T00:00:00+00:00"),
            row(p50_ms=2.0, recorded_at="2026-01-03T00:00:00+00:00"),
            row(p50_ms=9.0, recorded_at="2026-01-02T00:00:00+00:00"),  # inserted later, older
            row(p50_ms=5.0, batch=8, recorded_at="2026-01-01T00:00:00+00:00"),
            row(p50_ms=7.0, versions={"onnxruntime": "1.20"}, recorded_at="2026-01-01T00:00:00"),
            row(p50_ms=4.0, device_id="dev2", recorded_at="2026-01-01T00:00:00+00:00"),
        ]
    )
    latest = store.latest()
    assert len(latest) == 4
    by = {(m.device_id, m.batch, m.versions["onnxruntime"]): m.p50_ms for m in latest}
    assert by == {
        ("dev1", 1, "1.31.1"): 2.0,
        ("dev1", 8, "1.31.1"): 5.0,
        ("dev1", 1, "1.20"): 7.0,
        ("dev2", 1, "1.31.1"): 4.0,
    }
    assert [m.p50_ms for m in store.latest(device_id="dev2")] == [4.0]
    # same instant: the row added last wins
    store.add([row(p50_ms=1.0, recorded_at="2026-01-03T00:00:00+00:00")])
    assert {m.p50_ms for m in store.latest(device_id="dev1") if m.batch == 1} == {1.0, 7.0}


def test_concurrent_writers_from_two_threads(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite"
    shared = ResultsStore(path)
    errors: list[BaseException] = []

    def write(name: str, own_store: bool) -> None:
        try:
            store = ResultsStore(path) if own_store else shared
            for i in range(40):
                store.add([row(run_id=name, p50_ms=float(i)), row(run_id=name, batch=4)])
        except BaseException as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=write, args=("t1", True)),
        threading.Thread(target=write, args=("t2", False)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(shared.query(run_id="t1")) == 80
    assert len(shared.query(run_id="t2")) == 80
    assert len(shared) == 160


def test_not_sqlite_is_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "results.sqlite"
    path.write_text("this is a CSV, not a database\n" * 200)
    with pytest.raises(DataError) as info:
        ResultsStore(path)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message and "not a usable SQLite database" in message
    assert path.read_text().startswith("this is a CSV")  # left untouched


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite"
    ResultsStore(path)
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO schema_version VALUES (99)")
    with pytest.raises(DataError, match="schema 99"):
        ResultsStore(path)


def test_device_id_is_stable_and_hardware_keyed() -> None:
    env = {"machine": "orin", "cpu": "ARMv8 Cortex-A78AE", "libraries": {"torch": "2.4"}}
    first = device_id(env)
    assert len(first) == 12 and all(c in "0123456789abcdef" for c in first)
    assert device_id({**env, "libraries": {"torch": "2.9"}, "threads": 4}) == first
    assert device_id({**env, "machine": "nano"}) != first
    # the shape of edgedistill.bench.device_env.gpu_environment(): the GPU model counts,
    # the driver version and the clocks do not
    gpu = {"driver": "550.1", "cuda_driver": "12.4", "gpus": [{"name": "H200", "sm_clock_mhz": 1}]}
    with_gpu = device_id({**env, "gpu": gpu})
    assert with_gpu != first
    other_driver = {**gpu, "driver": "560.0", "gpus": [{"name": "H200", "sm_clock_mhz": 2}]}
    assert device_id({**env, "gpu": other_driver}) == with_gpu
    assert device_id({**env, "gpu": {**gpu, "gpus": [{"name": "A100"}]}}) != with_gpu
    two = [{"name": "H100"}, {"name": "A100"}]
    assert device_id({**env, "gpu": {"gpus": two}}) == device_id(
        {**env, "gpu": {"gpus": two[::-1]}}
    )
    # a Jetson without NVML: the board model (jetson_environment()) counts
    orin = device_id({**env, "jetson": {"model": "NVIDIA Jetson AGX Orin", "power_mode": "MAXN"}})
    nano = device_id({**env, "jetson": {"model": "NVIDIA Jetson Orin Nano", "power_mode": "MAXN"}})
    assert len({first, orin, nano}) == 3
    assert device_name({**env, "gpu": gpu}) == "orin (H200)" and device_name(env) == "orin"

"""Pareto fronts on hand-made points, the per-device join, local rows and the device plots."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from edgedistill.agent.store import Measurement, device_id
from edgedistill.report.devices import (
    device_sections,
    local_device_name,
    local_measurements,
    render_devices_html,
    render_devices_markdown,
)
from edgedistill.report.pareto import (
    device_keys,
    device_tables,
    pareto_front,
    render_device_plots,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ---- pareto_front -------------------------------------------------------------------------
def test_dominated_points_are_dropped_and_front_sorted_by_latency() -> None:
    points = [
        (5.0, 90.0),  # 0: slow, most accurate -> front
        (1.0, 70.0),  # 1: fastest -> front
        (2.0, 80.0),  # 2: front
        (3.0, 75.0),  # 3: dominated by 2 (faster and more accurate)
        (6.0, 85.0),  # 4: dominated by 0
        (2.5, 80.0),  # 5: same accuracy as 2, slower -> dominated
    ]
    assert pareto_front(points) == [1, 2, 0]


def test_ties() -> None:
    # Equal latency: only the more accurate one.
    assert pareto_front([(1.0, 70.0), (1.0, 75.0)]) == [1]
    # Equal accuracy: only the faster one.
    assert pareto_front([(2.0, 75.0), (1.0, 75.0)]) == [1]
    # Exact duplicates: neither is better, both stay, by index.
    assert pareto_front([(3.0, 60.0), (1.0, 80.0), (1.0, 80.0)]) == [1, 2]


def test_single_empty_and_missing_values() -> None:
    assert pareto_front([(4.2, 50.0)]) == [0]
    assert pareto_front([]) == []
    # Missing or non-finite values are never on the front and dominate nothing.
    points: list[tuple[Any, ...]] = [(1.0, None), (float("nan"), 99.0), (3.0, 40.0), (2.0,)]
    assert pareto_front(points) == [2]
    # Extra fields after (latency, accuracy) are carried along and ignored.
    assert pareto_front([(2.0, 80.0, "a"), (1.0, 90.0, "b")]) == [1]


def test_front_matches_brute_force_on_a_grid() -> None:
    points = [(float(1 + (i * 7) % 11), float((i * 5) % 13)) for i in range(40)]
    expected = [
        i
        for i, (li, ai) in enumerate(points)
        if not any(
            lj <= li and aj >= ai and (lj < li or aj > ai) for j, (lj, aj) in enumerate(points)
        )
    ]
    front = pareto_front(points)
    assert sorted(front) == expected
    latencies = [points[i][0] for i in front]
    assert latencies == sorted(latencies)
    accuracies = [points[i][1] for i in front]
    assert accuracies == sorted(accuracies)  # faster front points are never more accurate


# ---- device tables ------------------------------------------------------------------------
SUMMARY = [
    {"name": "student", "precision": "fp32", "accuracy": 88.0, "size_bytes": 2048},
    {"name": "student-int8", "precision": "int8", "accuracy": 86.5, "size_bytes": 1024},
    {"name": "teacher", "precision": "fp32", "accuracy": 91.0, "size_bytes": 40960},
]


def _m(model: str, runtime: str, precision: str, p50: float, **kw: Any) -> Measurement:
    fields: dict[str, Any] = {
        "model_sha256": f"sha-{model}",
        "model_name": model,
        "device_id": "dev-a",
        "device_name": "board-a",
        "runtime": runtime,
        "precision": precision,
        "batch": 1,
        "threads": 1,
        "p50_ms": p50,
        "p90_ms": p50 * 1.1,
        "p99_ms": p50 * 1.3,
        "mean_ms": p50 * 1.05,
        "throughput_per_s": 1000.0 / p50,
        "versions": {"tensorrt": "10.3"},
        "environment": {"machine": "board-a", "cpu": "ARMv8", "gpu": "Orin"},
        "source": "http://board-a:8765",
        "recorded_at": "2026-01-01T00:00:00",
    }
    fields.update(kw)
    return Measurement(**fields)


def test_device_tables_join_accuracy_newest_row_and_pareto_per_batch() -> None:
    rows = [
        _m("teacher", "tensorrt", "fp16", 4.0),
        _m("student", "tensorrt", "fp16", 1.0),
        _m("student-int8", "tensorrt", "int8", 0.8),
        _m("student", "onnxruntime", "fp32", 3.0),  # dominated by student fp16 (1.0, 88)
        # an older measurement of the same combination: replaced by the newer one above
        _m("student", "tensorrt", "fp16", 9.0, recorded_at="2025-01-01T00:00:00"),
        _m("unknown", "tensorrt", "fp16", 0.1),  # no accuracy: never on the front
        _m("student", "tensorrt", "fp16", 2.0, batch=8),  # its own batch group
        _m("teacher", "tensorrt", "fp16", 6.0, device_id="dev-b", device_name="board-b"),
    ]
    tables = device_tables(SUMMARY, rows)
    assert list(tables) == ["dev-a", "dev-b"]
    a = {(r["model"], r["runtime"], r["batch"]): r for r in tables["dev-a"]}
    assert len(tables["dev-a"]) == 6
    assert a[("student", "tensorrt", 1)]["p50_ms"] == 1.0  # newest kept
    assert a[("student", "tensorrt", 1)]["accuracy"] == 88.0
    assert a[("student", "tensorrt", 1)]["accuracy_exact"] is False  # fp16 engine of fp32
    assert a[("student", "onnxruntime", 1)]["accuracy_exact"] is True
    assert a[("student-int8", "tensorrt", 1)]["accuracy_exact"] is True
    assert a[("student", "tensorrt", 1)]["size_bytes"] == 2048
    assert a[("unknown", "tensorrt", 1)]["accuracy"] is None
    pareto = {k for k, r in a.items() if r["pareto"]}
    assert pareto == {
        ("student-int8", "tensorrt", 1),  # 0.8 ms, 86.5
        ("student", "tensorrt", 1),  # 1.0 ms, 88.0
        ("teacher", "tensorrt", 1),  # 4.0 ms, 91.0
        ("student", "tensorrt", 8),  # alone at batch 8
    }
    assert [r["batch"] for r in tables["dev-a"]] == [1, 1, 1, 1, 1, 8]
    p50s = [r["p50_ms"] for r in tables["dev-a"] if r["batch"] == 1]
    assert p50s == sorted(p50s)
    assert tables["dev-b"][0]["pareto"] is True


def test_device_sections_put_the_local_device_first() -> None:
    local = _m("student", "onnxruntime", "fp32", 0.5, device_id="here", device_name="zz-host")
    local = Measurement(**{**local.to_dict(), "source": "local"})
    sections = device_sections(SUMMARY, [_m("student", "tensorrt", "fp16", 1.0), local])
    assert [s["id"] for s in sections] == ["here", "dev-a"]
    assert sections[1]["source"] == "http://board-a:8765"
    assert sections[1]["environment"]["gpu"] == "Orin"
    assert sections[1]["plot"] == "device-dev-a.png"


def test_local_measurements_from_latency_entries() -> None:
    env = {"machine": "host", "cpu": "Xeon", "cpu_count": 2, "libraries": {"onnxruntime": "1.2"}}
    entries = [
        {"model": "student", "runtime": "onnxruntime", "precision": "fp32", "batch": 4.0,
         "p50": 2.0, "p90": 2.5, "p99": 3.0, "mean": 2.1},
        {"model": "student", "runtime": "openvino", "precision": "fp32 (f32 hint)", "batch": 1,
         "p50": 0.5, "p90": 0.6, "p99": 0.7, "mean": 0.55},
        {"model": "gone", "runtime": "onnxruntime", "precision": "fp32", "batch": 1,
         "p50": 1.0, "p90": 1.0, "p99": 1.0, "mean": 1.0},
    ]  # fmt: skip
    rows = local_measurements(
        entries, model_sha256={"student": "abc"}, environment=env, run_id="r1", threads=2
    )
    assert len(rows) == 2  # "gone" has no sha256
    first, second = rows
    assert first.batch == 4 and first.throughput_per_s == pytest.approx(2000.0)
    assert first.versions == {"onnxruntime": "1.2"}
    assert second.precision == "fp32" and second.versions == {}
    assert first.device_id == device_id(env) and first.device_name == "host (Xeon)"
    assert local_device_name(env) == "host (Xeon)"
    assert {r.run_id for r in rows} == {"r1"} and {r.source for r in rows} == {"local"}
    assert first.model_sha256 == "abc" and first.threads == 2


def test_plots_and_sections_render(tmp_path: Path) -> None:
    rows = [
        _m("teacher", "tensorrt", "fp16", 4.0),
        _m("student", "tensorrt", "fp16", 1.0),
        _m("student", "onnxruntime", "fp32", 3.0),
    ]
    sections = device_sections(SUMMARY, rows)
    names = render_device_plots(sections, tmp_path, metric_header="top-1 %", title="tiny")
    assert names == ["device-dev-a.png"]
    assert (tmp_path / names[0]).read_bytes()[:8] == PNG_MAGIC
    md = render_devices_markdown(sections, "top-1 %")
    table = [line for line in md.splitlines() if line.startswith("| ")]
    assert len(table) == 4  # header + 3 rows
    starred = [line for line in table if "★" in line]
    assert len(starred) == 2 and not any("onnxruntime" in line for line in starred)
    assert "88.00*" in md  # fp16 engine: the fp32 model's accuracy, marked
    page = render_devices_html(sections, "top-1 %")
    assert page.count('class="pareto"') == 2 and "device-dev-a.png" in page
    assert render_devices_markdown([], "x") == "" and render_devices_html([], "x") == ""
    assert math.isclose(sections[0]["rows"][0]["throughput_per_s"], 1000.0)


def test_an_agent_on_the_local_machine_is_tabled_apart() -> None:
    """The agent on loopback reports this machine's device id: its rows form their own
    device (``<id>-agent``) instead of replacing the local rows of the same model."""
    local = _m("student", "onnxruntime", "fp32", 0.5, device_id="here", source="local")
    agent = _m("student", "onnxruntime", "fp32", 0.7, device_id="here", recorded_at="2027")
    elsewhere = _m("student", "onnxruntime", "fp32", 0.9)
    assert device_keys([local, agent, elsewhere]) == ["here", "here-agent", "dev-a"]
    sections = device_sections(SUMMARY, [local, agent, elsewhere])
    by_id = {s["id"]: s for s in sections}
    assert set(by_id) == {"here", "here-agent", "dev-a"} and sections[0]["id"] == "here"
    assert by_id["here"]["rows"][0]["p50_ms"] == 0.5  # not replaced by the newer agent row
    assert by_id["here-agent"]["rows"][0]["p50_ms"] == 0.7
    assert by_id["here-agent"]["source"] == "http://board-a:8765"
    assert by_id["here-agent"]["plot"] == "device-here-agent.png"
    # Without a local row of that id, agent rows keep their device id.
    assert device_keys([agent]) == ["here"]

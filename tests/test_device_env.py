"""GPU / Jetson environment capture: NVML through a fake ``pynvml``, and the Jetson parsers on
sample outputs written from the documented formats (L4T release file, ``nvpmodel -q``,
``jetson_clocks --show``)."""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import pytest
import torch

from edgedistill.bench.device_env import (
    cuda_version_string,
    gpu_environment,
    jetson_environment,
    parse_jetson_clocks,
    parse_l4t_release,
    parse_nvpmodel,
)

L4T_R36 = (
    "# R36 (release), REVISION: 3.0, GCID: 36191598, BOARD: generic, EABI: aarch64, "
    "DATE: Mon May  6 17:34:21 UTC 2024\n"
    "# KERNEL_VARIANT: oot\n"
    "TARGET_USERSPACE_LIB_DIR=nvidia\n"
    "TARGET_USERSPACE_LIB_DIR_PATH=usr/lib/aarch64-linux-gnu/nvidia\n"
)
L4T_R35 = (
    "# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64, "
    "DATE: Tue Aug  1 19:57:35 UTC 2023\n"
)
NVPMODEL = (
    "NVPM WARN: Golden image context is already created\n"
    "NVPM WARN: Reading /etc/nvpmodel.conf\n"
    "NV Power Mode: MAXN\n"
    "0\n"
)
JETSON_CLOCKS = """SOC family:tegra234  Machine:NVIDIA Jetson AGX Orin Developer Kit
Online CPUs: 0-3
cpu0: Online=1 Governor=schedutil MinFreq=729600 MaxFreq=2201600 CurrentFreq=2201600 IdleStates: WFI=1 c7=1
cpu1: Online=1 Governor=schedutil MinFreq=729600 MaxFreq=2201600 CurrentFreq=1497600 IdleStates: WFI=1 c7=1
cpu2: Online=0 Governor=schedutil MinFreq=729600 MaxFreq=2201600 CurrentFreq=729600 IdleStates: WFI=1 c7=1
cpu3: Online=1 Governor=performance MinFreq=729600 MaxFreq=2201600 CurrentFreq=2201600 IdleStates: WFI=1 c7=1
GPU MinFreq=306000000 MaxFreq=1300500000 CurrentFreq=306000000
EMC MinFreq=204000000 MaxFreq=3199000000 CurrentFreq=3199000000 FreqOverride=0
DLA0_CORE:  Online=1 MinFreq=0 MaxFreq=1600000000 CurrentFreq=1600000000
FAN Dynamic Speed control=active hwmon4_pwm1=76
NV Power Mode: MAXN
"""


def test_parse_l4t_release_jetpack6() -> None:
    info = parse_l4t_release(L4T_R36)
    assert info == {
        "l4t": "36.3.0",
        "release": "R36",
        "revision": "3.0",
        "gcid": "36191598",
        "board": "generic",
        "eabi": "aarch64",
        "date": "Mon May 6 17:34:21 UTC 2024",
        "kernel_variant": "oot",
    }


def test_parse_l4t_release_jetpack5_and_garbage() -> None:
    info = parse_l4t_release(L4T_R35)
    assert info["l4t"] == "35.4.1" and info["board"] == "t186ref"
    assert "kernel_variant" not in info
    assert parse_l4t_release("") == {}
    assert parse_l4t_release("Ubuntu 22.04.4 LTS") == {}


def test_parse_nvpmodel() -> None:
    assert parse_nvpmodel(NVPMODEL) == {"power_mode": "MAXN", "power_mode_id": 0}
    assert parse_nvpmodel("NV Power Mode: 15W\n2\n") == {"power_mode": "15W", "power_mode_id": 2}
    assert parse_nvpmodel("NV Power Mode: MODE_30W_ALL") == {"power_mode": "MODE_30W_ALL"}
    assert parse_nvpmodel("nvpmodel: command not found") == {}


def test_parse_jetson_clocks_in_mhz() -> None:
    info = parse_jetson_clocks(JETSON_CLOCKS)
    assert info["soc"] == "tegra234"
    assert info["machine"] == "NVIDIA Jetson AGX Orin Developer Kit"
    assert info["power_mode"] == "MAXN"
    assert sorted(info["cpus"]) == ["cpu0", "cpu1", "cpu2", "cpu3"]
    assert info["cpus"]["cpu0"] == {
        "online": True,
        "governor": "schedutil",
        "min_mhz": 729.6,
        "max_mhz": 2201.6,
        "current_mhz": 2201.6,
    }
    assert info["cpus"]["cpu1"]["current_mhz"] == 1497.6
    assert info["cpus"]["cpu2"]["online"] is False
    assert info["cpus"]["cpu3"]["governor"] == "performance"
    assert info["gpu"] == {"min_mhz": 306.0, "max_mhz": 1300.5, "current_mhz": 306.0}
    assert info["emc"] == {"min_mhz": 204.0, "max_mhz": 3199.0, "current_mhz": 3199.0}
    assert info["clocks_pinned"] is False  # cpu1 and the GPU are below their maximum


def test_parse_jetson_clocks_pinned_after_jetson_clocks() -> None:
    pinned = (
        JETSON_CLOCKS.replace("CurrentFreq=1497600", "CurrentFreq=2201600")
        .replace("GPU MinFreq=306000000 MaxFreq=1300500000 CurrentFreq=306000000",
                 "GPU MinFreq=1300500000 MaxFreq=1300500000 CurrentFreq=1300500000")
    )  # fmt: skip
    assert parse_jetson_clocks(pinned)["clocks_pinned"] is True  # offline cpu2 does not count
    assert parse_jetson_clocks("") == {}


def test_jetson_environment(tmp_path: Path) -> None:
    assert jetson_environment(tmp_path / "absent") == {}  # not a Jetson: quietly nothing
    release = tmp_path / "nv_tegra_release"
    release.write_text(L4T_R36)
    outputs = {"nvpmodel": NVPMODEL, "jetson_clocks": JETSON_CLOCKS}
    calls: list[list[str]] = []

    def run(command: list[str]) -> str | None:
        calls.append(command)
        return outputs.get(command[0])

    info = jetson_environment(release, run)
    assert calls == [["nvpmodel", "-q"], ["jetson_clocks", "--show"]]
    assert info["l4t"]["l4t"] == "36.3.0"
    assert info["power_mode"] == "MAXN" and info["power_mode_id"] == 0
    assert info["clocks"]["gpu"]["max_mhz"] == 1300.5
    # without root, jetson_clocks --show fails: the clocks are simply not recorded
    info = jetson_environment(release, lambda c: NVPMODEL if c[0] == "nvpmodel" else None)
    assert "clocks" not in info and info["power_mode"] == "MAXN"


def test_cuda_version_string() -> None:
    assert cuda_version_string(12040) == "12.4"
    assert cuda_version_string(11080) == "11.8"
    assert cuda_version_string(13000) == "13.0"


class _NVMLError(Exception):
    pass


def _fake_pynvml(*, init_fails: bool = False) -> types.ModuleType:
    module = types.ModuleType("pynvml")
    shutdowns: list[int] = []

    def init() -> None:
        if init_fails:
            raise _NVMLError("Driver Not Loaded")

    def unsupported(*args: Any) -> Any:
        raise _NVMLError("Not Supported")

    module.NVMLError = _NVMLError  # type: ignore[attr-defined]
    module.NVML_CLOCK_SM, module.NVML_CLOCK_MEM = 1, 2  # type: ignore[attr-defined]
    functions: dict[str, Any] = {
        "nvmlInit": init,
        "nvmlShutdown": lambda: shutdowns.append(1),
        "nvmlSystemGetCudaDriverVersion": lambda: 12080,
        "nvmlSystemGetDriverVersion": lambda: b"570.124.06",
        "nvmlDeviceGetCount": lambda: 2,
        "nvmlDeviceGetHandleByIndex": lambda i: f"gpu{i}",
        "nvmlDeviceGetName": lambda h: "NVIDIA H200" if h == "gpu0" else "NVIDIA L4",
        "nvmlDeviceGetMemoryInfo": lambda h: types.SimpleNamespace(total=143771 << 20),
        "nvmlDeviceGetClockInfo": lambda h, kind: {1: 1980, 2: 3201}[kind],
        "nvmlDeviceGetMaxClockInfo": lambda h, kind: {1: 1980, 2: 3201}[kind],
        "nvmlDeviceGetPowerManagementLimit": lambda h: 700000 if h == "gpu0" else unsupported(),
        "nvmlDeviceGetCudaComputeCapability": lambda h: (9, 0) if h == "gpu0" else (8, 9),
    }
    for name, fn in functions.items():
        setattr(module, name, fn)
    module.shutdowns = shutdowns  # type: ignore[attr-defined]
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="compute capability then comes from torch")
def test_gpu_environment_reads_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _fake_pynvml()
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    env = gpu_environment()
    assert env["driver"] == "570.124.06" and env["cuda_driver"] == "12.8"
    first, second = env["gpus"]
    assert first == {
        "index": 0,
        "name": "NVIDIA H200",
        "memory_total_mib": 143771,
        "sm_clock_mhz": 1980,
        "sm_clock_max_mhz": 1980,
        "mem_clock_mhz": 3201,
        "mem_clock_max_mhz": 3201,
        "power_limit_w": 700.0,
        "compute_capability": "9.0",
    }
    assert second["name"] == "NVIDIA L4" and second["compute_capability"] == "8.9"
    assert second["power_limit_w"] is None  # a query the GPU does not support
    assert fake.shutdowns == [1]  # type: ignore[attr-defined]


def test_gpu_environment_is_empty_without_a_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml(init_fails=True))
    assert gpu_environment() == {}
    monkeypatch.setitem(sys.modules, "pynvml", None)  # nvidia-ml-py not installed
    assert gpu_environment() == {}

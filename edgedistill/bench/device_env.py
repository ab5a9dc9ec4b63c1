"""The GPU / Jetson side of the environment a measurement ran in.

A GPU latency depends on more than the model: the driver, the clocks the GPU ran at, its
power limit, and on a Jetson the L4T release, the power mode (``nvpmodel``) and whether
``jetson_clocks`` pinned the clocks. :func:`gpu_environment` reads NVML (``pynvml`` from
nvidia-ml-py) and returns ``{}`` quietly where there is no NVIDIA driver;
:func:`jetson_environment` reads ``/etc/nv_tegra_release``, ``nvpmodel -q`` and
``jetson_clocks --show`` where present. The parsers are pure functions of the text.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

L4T_RELEASE = Path("/etc/nv_tegra_release")
DEVICE_TREE_MODEL = Path("/proc/device-tree/model")


def cuda_version_string(version: int) -> str:
    """NVML's CUDA driver version integer (e.g. 12040) as "12.4"."""
    return f"{version // 1000}.{(version % 1000) // 10}"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def gpu_environment() -> dict[str, Any]:
    """Driver, CUDA driver version and per-GPU name, memory, clocks, power limit, capability.

    Returns:
        ``{"driver", "cuda_driver", "gpus": [{index, name, memory_total_mib, sm_clock_mhz,
        sm_clock_max_mhz, mem_clock_mhz, mem_clock_max_mhz, power_limit_w,
        compute_capability}]}``; a field NVML cannot report on this GPU is None. ``{}`` when
        nvidia-ml-py is not installed or no NVIDIA driver is loaded.
    """
    try:
        import pynvml
    except ImportError:
        return {}
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return {}
    try:

        def ask(fn: Callable[..., Any], *args: Any) -> Any:
            try:
                return fn(*args)
            except pynvml.NVMLError:
                return None

        cuda = ask(pynvml.nvmlSystemGetCudaDriverVersion)
        driver = ask(pynvml.nvmlSystemGetDriverVersion)
        gpus = []
        for index in range(ask(pynvml.nvmlDeviceGetCount) or 0):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            memory = ask(pynvml.nvmlDeviceGetMemoryInfo, handle)
            power = ask(pynvml.nvmlDeviceGetPowerManagementLimit, handle)  # milliwatts
            name = ask(pynvml.nvmlDeviceGetName, handle)
            gpus.append(
                {
                    "index": index,
                    "name": None if name is None else _text(name),
                    "memory_total_mib": None if memory is None else int(memory.total) >> 20,
                    "sm_clock_mhz": ask(
                        pynvml.nvmlDeviceGetClockInfo, handle, pynvml.NVML_CLOCK_SM
                    ),
                    "sm_clock_max_mhz": ask(
                        pynvml.nvmlDeviceGetMaxClockInfo, handle, pynvml.NVML_CLOCK_SM
                    ),
                    "mem_clock_mhz": ask(
                        pynvml.nvmlDeviceGetClockInfo, handle, pynvml.NVML_CLOCK_MEM
                    ),
                    "mem_clock_max_mhz": ask(
                        pynvml.nvmlDeviceGetMaxClockInfo, handle, pynvml.NVML_CLOCK_MEM
                    ),
                    "power_limit_w": None if power is None else round(power / 1000, 1),
                    "compute_capability": _compute_capability(
                        index, ask(pynvml.nvmlDeviceGetCudaComputeCapability, handle)
                    ),
                }
            )
        return {
            "driver": None if driver is None else _text(driver),
            "cuda_driver": None if cuda is None else cuda_version_string(int(cuda)),
            "gpus": gpus,
        }
    finally:
        with contextlib.suppress(pynvml.NVMLError):
            pynvml.nvmlShutdown()


def _compute_capability(index: int, from_nvml: Any) -> str | None:
    """ "major.minor" from torch when it sees the device, else from NVML."""
    try:
        import torch

        if torch.cuda.is_available() and index < torch.cuda.device_count():
            major, minor = torch.cuda.get_device_capability(index)
            return f"{major}.{minor}"
    except Exception:  # a torch without CUDA support, or a broken CUDA setup
        pass
    if from_nvml is None:
        return None
    major, minor = from_nvml
    return f"{major}.{minor}"


def parse_l4t_release(text: str) -> dict[str, str]:
    """Parse ``/etc/nv_tegra_release``.

    Example: ``# R36 (release), REVISION: 3.0, GCID: 36191598, BOARD: generic, EABI: aarch64,
    DATE: Mon May  6 17:34:21 UTC 2024`` -> ``{"l4t": "36.3.0", "release": "R36",
    "revision": "3.0", "gcid": "36191598", "board": "generic", "eabi": "aarch64", "date": ...}``.
    Returns ``{}`` for text that is not such a line.
    """
    match = re.search(r"#\s*R(\d+)\s*\(release\)\s*,\s*REVISION:\s*([\d.]+)(.*)", text)
    if match is None:
        return {}
    major, revision, rest = match.groups()
    info = {"l4t": f"{major}.{revision}", "release": f"R{major}", "revision": revision}
    for key, value in re.findall(r"(\w+):\s*([^,]*)", rest):  # rest: the first line only
        info[key.lower()] = " ".join(value.split())
    for key, value in re.findall(r"^#\s*(\w+):\s*(\S.*)$", text[match.end() :], re.M):
        info[key.lower()] = value.strip()  # e.g. "# KERNEL_VARIANT: oot" (JetPack 6)
    return info


def parse_nvpmodel(text: str) -> dict[str, Any]:
    """Parse ``nvpmodel -q``: ``"NV Power Mode: MAXN\\n0"`` -> ``{"power_mode": "MAXN",
    "power_mode_id": 0}`` (``NVPM WARN`` lines are ignored). ``{}`` when there is no mode."""
    info: dict[str, Any] = {}
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for i, line in enumerate(lines):
        match = re.match(r"NV Power Mode\s*:\s*(.+)", line)
        if match is None:
            continue
        info["power_mode"] = match.group(1).strip()
        if i + 1 < len(lines) and lines[i + 1].isdigit():
            info["power_mode_id"] = int(lines[i + 1])
        break
    return info


def _freqs(fields: dict[str, str], unit_per_mhz: float) -> dict[str, float]:
    out = {}
    for key, name in (
        ("MinFreq", "min_mhz"),
        ("MaxFreq", "max_mhz"),
        ("CurrentFreq", "current_mhz"),
    ):
        if key in fields and fields[key].lstrip("-").isdigit():
            out[name] = round(int(fields[key]) / unit_per_mhz, 3)
    return out


def parse_jetson_clocks(text: str) -> dict[str, Any]:
    """Parse ``jetson_clocks --show``: SoC, CPU/GPU/EMC frequencies and the power mode.

    CPU lines give kHz (``cpu0: Online=1 Governor=schedutil MinFreq=729600 MaxFreq=2201600
    CurrentFreq=2201600 ...``), GPU and EMC lines Hz (``GPU MinFreq=306000000 MaxFreq=...``);
    everything is returned in MHz. ``clocks_pinned`` says whether every online CPU, the GPU and
    the EMC run at their maximum (what ``jetson_clocks`` sets).
    """
    info: dict[str, Any] = {}
    cpus: dict[str, dict[str, Any]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        fields = dict(re.findall(r"(\w+)=(\S+)", line))
        if line.startswith("SOC family:"):
            match = re.match(r"SOC family:(\S+)\s+Machine:(.*)", line)
            if match:
                info["soc"], info["machine"] = match.group(1), match.group(2).strip()
        elif re.match(r"cpu\d+:", line):
            name = line.split(":", 1)[0]
            cpu: dict[str, Any] = {"online": fields.get("Online") == "1"}
            if "Governor" in fields:
                cpu["governor"] = fields["Governor"]
            cpu.update(_freqs(fields, 1e3))
            cpus[name] = cpu
        elif line.startswith(("GPU ", "EMC ")) and fields:
            info[line[:3].lower()] = _freqs(fields, 1e6)
        elif line.startswith("NV Power Mode"):
            info.update(parse_nvpmodel(line))
    if cpus:
        info["cpus"] = cpus
    parts = [c for c in cpus.values() if c["online"]] + [
        info[k] for k in ("gpu", "emc") if k in info
    ]
    if parts and all("current_mhz" in p and "max_mhz" in p for p in parts):
        info["clocks_pinned"] = all(p["current_mhz"] == p["max_mhz"] for p in parts)
    return info


def _run(command: list[str]) -> str | None:
    """stdout of a command that is on PATH, or None (absent, failed, or needs root)."""
    if shutil.which(command[0]) is None:
        return None
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def jetson_environment(
    release_path: Path = L4T_RELEASE,
    run: Callable[[list[str]], str | None] = _run,
) -> dict[str, Any]:
    """L4T release, board model, power mode and clocks of a Jetson; ``{}`` elsewhere.

    Args:
        release_path: The L4T release file (a parameter so tests can point elsewhere).
        run: Runs a command and returns its stdout or None (``jetson_clocks --show`` needs
            root; without it the clocks are simply not recorded).
    """
    try:
        text = Path(release_path).read_text()
    except OSError:
        return {}
    info: dict[str, Any] = {"l4t": parse_l4t_release(text)}
    with contextlib.suppress(OSError):
        info["model"] = DEVICE_TREE_MODEL.read_bytes().rstrip(b"\0").decode(errors="replace")
    nvpmodel = run(["nvpmodel", "-q"])
    if nvpmodel:
        info.update(parse_nvpmodel(nvpmodel))
    clocks = run(["jetson_clocks", "--show"])
    if clocks:
        info["clocks"] = parse_jetson_clocks(clocks)
    return info

"""torch-cuda latency of the default students (and the ImageNet teacher) on one GPU.

    python benchmarks/gpu.py [--out benchmarks/results/gpu.json] [--runs 200] [--warmup 30]
    python benchmarks/gpu.py --dry-run       # the CPU parts: models, plan, table (no GPU)

Builds the students of students/fashion_mnist.yaml (ConvNet, widths 16/32/64, 1x28x28) and
students/seglearn_watch.yaml (IMU CNN, widths 16/32/64, 6 channels x 100 samples = 2 s at
50 Hz) with random weights (latency does not depend on the weights), plus the MobileNetV2
ImageNet teacher when its weights package is installed (offline). Each model runs on
torch-cuda at FP32/FP16/BF16, eager and with CUDA graphs, at batch 1/8/64; latency is GPU time
from CUDA events around the kernel launches (p50/p90/p99, throughput = batch / p50), with the
median wall time of the same calls beside it. FP16/BF16 outputs are compared with FP32 (max
abs diff, top-1 agreement) and CUDA-graph outputs with eager ones. No training, no TensorRT,
no network; a few minutes on one H200. Writes benchmarks/results/gpu.json and prints a
Markdown table.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgedistill.bench.device_env import gpu_environment
from edgedistill.bench.latency import measure_latency
from edgedistill.errors import EdgeDistillError
from edgedistill.report.benchmarks import write_results
from edgedistill.runtime.base import Runner
from edgedistill.runtime.torch_runner import TorchRunner
from edgedistill.students import build_model

ROOT = Path(__file__).resolve().parents[1]
PRECISIONS = ("fp32", "fp16", "bf16")
BATCHES = (1, 8, 64)
CHECK_BATCH = 64  # samples for the FP16/BF16-vs-FP32 and graphs-vs-eager checks


@dataclass
class Case:
    """One model of the benchmark: its name, how to build it and its per-sample input shape."""

    name: str
    build: Callable[[], nn.Module]
    input_shape: tuple[int, ...]


def cases(*, with_teacher: bool = True) -> list[Case]:
    """The default students (random weights) and, when installed, the MobileNetV2 teacher."""
    found = [
        Case(
            "fashion-mnist student (convnet 16/32/64)",
            lambda: build_model(
                "convnet", {"in_channels": 1, "num_classes": 10, "widths": [16, 32, 64]}
            ),
            (1, 28, 28),
        ),
        Case(
            "seglearn-watch student (imu_cnn 16/32/64)",
            lambda: build_model(
                "imu_cnn", {"in_channels": 6, "num_classes": 7, "widths": [16, 32, 64]}
            ),
            (6, 100),
        ),
    ]
    if with_teacher:
        try:
            from edgedistill.teachers.image import imagenet_mobilenet_v2, imagenet_weights

            imagenet_weights("mobilenet_v2")  # raises when the weights package is absent
            found.append(
                Case("imagenet mobilenet_v2 teacher", imagenet_mobilenet_v2, (3, 224, 224))
            )
        except EdgeDistillError as exc:
            print(f"(MobileNetV2 teacher skipped: {exc})", file=sys.stderr)
    return found


def output_agreement(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    """Max abs diff, max abs diff relative to the reference scale, and top-1 agreement (%)."""
    diff = float(np.max(np.abs(reference - candidate)))
    scale = float(np.max(np.abs(reference))) or 1.0
    agree = float(np.mean(reference.argmax(axis=1) == candidate.argmax(axis=1)) * 100)
    return {"max_abs_diff": diff, "rel_max_abs_diff": diff / scale, "top1_agreement": agree}


def runner_for(model: nn.Module, name: str, precision: str, graphs: bool, dry_run: bool) -> Runner:
    """torch-cuda on a GPU; in a dry run the CPU torch runner (FP32 only) stands in."""
    if dry_run:
        return TorchRunner(model, name, threads=1)
    from edgedistill.runtime.torch_cuda_runner import TorchCudaRunner

    return TorchCudaRunner(model, name, precision=precision, cuda_graphs=graphs)


def measure(args: argparse.Namespace) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(latency rows, output checks) over every case, precision, graph mode and batch."""
    rows: list[dict[str, Any]] = []
    checks: list[dict[str, Any]] = []
    precisions = ("fp32",) if args.dry_run else PRECISIONS
    modes = (False,) if args.dry_run else (False, True)
    batches = (1,) if args.dry_run else BATCHES
    rng = np.random.default_rng(0)
    for case in cases(with_teacher=not args.no_teacher):
        torch.manual_seed(0)
        model = case.build().eval()
        x_check = rng.standard_normal((CHECK_BATCH, *case.input_shape)).astype(np.float32)
        outputs: dict[tuple[str, bool], np.ndarray] = {}
        for precision in precisions:
            for graphs in modes:
                runner = runner_for(model, case.name, precision, graphs, args.dry_run)
                with runner:
                    outputs[(precision, graphs)] = runner.infer(x_check)
                    for batch in batches:
                        stats = measure_latency(
                            runner, x_check[:batch], warmup=args.warmup, runs=args.runs
                        )
                        rows.append(
                            {
                                "model": case.name,
                                "precision": precision,
                                "cuda_graphs": graphs,
                                "batch": batch,
                                **{k: stats[k] for k in ("p50", "p90", "p99", "timing")},
                                "wall_p50": stats.get("wall_p50", stats["p50"]),
                                "throughput_per_s": batch / (stats["p50"] / 1e3),
                            }
                        )
        reference = outputs[("fp32", False)]
        for (precision, graphs), out in outputs.items():
            if (precision, graphs) == ("fp32", False):
                continue
            checks.append(
                {
                    "model": case.name,
                    "candidate": f"{precision}{' graphs' if graphs else ''}",
                    "reference": "fp32 eager",
                    **output_agreement(reference, out),
                }
            )
            if graphs:  # graphs vs eager at the same precision: the same kernels, replayed
                checks.append(
                    {
                        "model": case.name,
                        "candidate": f"{precision} graphs",
                        "reference": f"{precision} eager",
                        **output_agreement(outputs[(precision, False)], out),
                    }
                )
    return rows, checks


def markdown_table(rows: list[dict[str, Any]], checks: list[dict[str, Any]]) -> str:
    """Latency per model x precision x graphs (p50/p99 ms per batch), then the output checks."""
    batches = sorted({int(r["batch"]) for r in rows})
    head = "| model | precision | CUDA graphs | " + " | ".join(
        f"b{b} p50 / p99 ms (samples/s)" for b in batches
    )
    lines = [head + " |", "|---|---|---|" + "---|" * len(batches)]
    keys = list(dict.fromkeys((r["model"], r["precision"], r["cuda_graphs"]) for r in rows))
    by_key = {(r["model"], r["precision"], r["cuda_graphs"], int(r["batch"])): r for r in rows}
    for model, precision, graphs in keys:
        cells = []
        for b in batches:
            r = by_key.get((model, precision, graphs, b))
            cells.append(
                "–"
                if r is None
                else f"{r['p50']:.3f} / {r['p99']:.3f} ({r['throughput_per_s']:,.0f})"
            )
        lines.append(
            f"| {model} | {precision} | {'yes' if graphs else 'no'} | " + " | ".join(cells) + " |"
        )
    if checks:
        lines += [
            "",
            "| model | candidate | reference | max abs diff | rel. to max abs output | top-1 agreement |",
            "|---|---|---|---|---|---|",
        ]
        for c in checks:
            lines.append(
                f"| {c['model']} | {c['candidate']} | {c['reference']} | {c['max_abs_diff']:.2e} "
                f"| {c['rel_max_abs_diff']:.2e} | {c['top1_agreement']:.1f}% |"
            )
    timing = sorted({str(r["timing"]) for r in rows})
    lines += ["", f"Timing: {', '.join(timing)} (latency = GPU time when cuda-events)."]
    return "\n".join(lines)


def agent_loopback(runs: int, warmup: int) -> dict[str, Any] | None:
    """The first student through the device agent on loopback, against local profiling.

    Starts the agent (``serve_in_thread``, 127.0.0.1, a random token) on this machine, uploads
    the student's ONNX export, runs an ONNX Runtime job (the CUDA provider too when
    onnxruntime-gpu is installed) at batch 1 and 8, and measures the same file locally in the
    same process; the ratio agent p50 / local p50 shows what the agent's HTTP and job layers
    add (nothing, within noise, when they work). None when the ``[agent]`` extra is missing.
    """
    try:
        from edgedistill.agent.client import profile_on_device
        from edgedistill.agent.server import serve_in_thread
    except (ImportError, EdgeDistillError) as exc:
        print(f"(agent loopback skipped: {exc})", file=sys.stderr)
        return None
    import secrets
    import tempfile

    from edgedistill.export.onnx import export_onnx
    from edgedistill.runtime.registry import make_runner, unavailable_reason

    case = cases(with_teacher=False)[0]
    runtimes = [r for r in ("onnxruntime", "onnxruntime-cuda") if unavailable_reason(r) is None]
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / "student.onnx"
        export_onnx(case.build().eval(), case.input_shape, onnx_path)
        token = secrets.token_hex(16)
        url, stop = serve_in_thread(Path(tmp) / "agent", token)
        try:
            started = time.perf_counter()
            result = profile_on_device(
                {"student": onnx_path},
                url,
                token,
                None,
                runtimes=runtimes,
                precisions=("fp32",),
                batch_sizes=(1, 8),
                warmup=warmup,
                runs=runs,
            )
            seconds = time.perf_counter() - started
        finally:
            stop()
        rows = []
        x_all = np.random.default_rng(0).standard_normal((8, *case.input_shape))
        for m in result.measurements:
            x = x_all[: m.batch].astype(np.float32)
            with make_runner(m.runtime, onnx_path, "student", threads=m.threads) as runner:
                local = measure_latency(runner, x, warmup=warmup, runs=runs)
            rows.append(
                {
                    "runtime": m.runtime,
                    "batch": m.batch,
                    "agent_p50_ms": m.p50_ms,
                    "local_p50_ms": local["p50"],
                    "ratio_agent_vs_local": round(m.p50_ms / local["p50"], 3),
                }
            )
    return {"model": case.name, "job_seconds": round(seconds, 1), "rows": rows,
            "errors": result.errors}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=None, help="results JSON")
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--dry-run", action="store_true", help="CPU only: build, run, tabulate")
    parser.add_argument("--no-teacher", action="store_true", help="students only")
    args = parser.parse_args(argv)
    if args.dry_run:
        args.runs, args.warmup = min(args.runs, 3), min(args.warmup, 1)
    elif not torch.cuda.is_available():
        print(
            "benchmarks/gpu.py needs a CUDA GPU (torch.cuda.is_available() is False); "
            "use --dry-run to check the CPU parts",
            file=sys.stderr,
        )
        return 2
    started = time.perf_counter()
    rows, checks = measure(args)
    loopback = None if args.dry_run else agent_loopback(args.runs, args.warmup)
    table = markdown_table(rows, checks)
    print(table)
    if loopback is not None:
        print("\nagent on loopback (p50 ms, agent vs local):")
        for row in loopback["rows"]:
            print(
                f"  {row['runtime']} b{row['batch']}: {row['agent_p50_ms']:.4f} vs "
                f"{row['local_p50_ms']:.4f} (x{row['ratio_agent_vs_local']})"
            )
    out = args.out
    if out is None and not args.dry_run:
        out = ROOT / "benchmarks" / "results" / "gpu.json"
    if out is not None:
        write_results(
            out,
            rows,
            checks=checks,
            gpu=gpu_environment(),
            dry_run=args.dry_run,
            cudnn_allow_tf32=bool(torch.backends.cudnn.allow_tf32),
            matmul_allow_tf32=bool(torch.backends.cuda.matmul.allow_tf32),
            agent_loopback=loopback,
            seconds=round(time.perf_counter() - started, 1),
        )
        print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

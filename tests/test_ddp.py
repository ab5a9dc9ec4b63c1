"""torchrun DDP on CPU (gloo): two processes end where one process does.

Each process takes every second row of a global batch and DDP averages the gradients, so with
equal shards the weights after training match the one-process run up to float summation order.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from edgedistill.distill.ddp import DataParallelContext, TrainingForward

WORKER = Path(__file__).with_name("_ddp_worker.py")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run(command: list[str], tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    try:
        done = subprocess.run(
            command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240
        )
    except subprocess.TimeoutExpired as exc:
        tail = (exc.stderr or b"")[-3000:]
        raise AssertionError(f"timed out: {tail!r}") from None
    assert done.returncode == 0, done.stderr[-3000:]


def test_two_process_ddp_matches_one_process(tmp_path: Path) -> None:
    single, double = tmp_path / "one.safetensors", tmp_path / "two.safetensors"
    _run([sys.executable, str(WORKER), str(single)], tmp_path)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    port = ["--master_addr", "127.0.0.1", "--master_port", str(_free_port())]
    _run([*torchrun, *port, str(WORKER), str(double)], tmp_path)
    one, two = load_file(str(single)), load_file(str(double))
    assert one.keys() == two.keys()
    for name in one:
        torch.testing.assert_close(two[name], one[name], atol=1e-5, rtol=1e-4)
    # The logged epoch loss is the mean over both processes, equal to the one-process mean.
    loss_one = float(single.with_suffix(".loss").read_text())
    loss_two = float(double.with_suffix(".loss").read_text())
    assert loss_two == pytest.approx(loss_one, rel=1e-4)
    # Rank 0 wrote the checkpoint the other ranks resume from.
    assert double.with_suffix(".ckpt").is_file()


def test_single_process_context_is_a_no_op() -> None:
    ctx = DataParallelContext.current()
    assert (ctx.rank, ctx.world_size, ctx.is_main) == (0, 1, True)
    rows = torch.arange(10)
    assert torch.equal(ctx.shard(rows), rows)
    assert DataParallelContext(rank=1, world_size=2).shard(rows).tolist() == [1, 3, 5, 7, 9]
    assert ctx.mean(2.5) == 2.5
    assert ctx.main_first(lambda: 7) == 7


def test_training_forward_names_the_missing_method() -> None:
    net = TrainingForward(torch.nn.Linear(2, 2))
    assert net(torch.zeros(1, 2)).shape == (1, 2)
    with pytest.raises(ValueError, match="forward_exits"):
        net(torch.zeros(1, 2), "exits")
    with pytest.raises(ValueError, match="outputs must be one of"):
        net(torch.zeros(1, 2), "everything")


def test_edgedistill_distill_under_torchrun_shares_the_teacher_cache(
    tiny_recipe_dict: dict[str, object], tmp_path: Path
) -> None:
    import yaml

    from edgedistill.artifacts import read_json
    from edgedistill.config import load_recipe
    from edgedistill.pipeline.run import run_pipeline

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe_dict))
    out = tmp_path / "run"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    port = ["--master_addr", "127.0.0.1", "--master_port", str(_free_port())]
    cli = ["-m", "edgedistill.cli.app", "distill", str(recipe), "--out", str(out)]
    _run([*torchrun, *port, *cli], tmp_path)
    manifest = read_json(out / "distill" / "manifest.json")
    single = run_pipeline(load_recipe(recipe), tmp_path / "single", until="distill")
    # Same global batches; only the per-process batch-norm statistics differ (CPU has no
    # SyncBatchNorm), so the two-process student lands close to the one-process one.
    reference = single.manifests["distill"]["metrics"]["student_top1"]
    assert abs(manifest["metrics"]["student_top1"] - reference) <= 10
    # One teacher cache entry per split, filled by rank 0 and read by rank 1.
    assert len(list((out / "cache").glob("teacher-logits-*.npy"))) == 2
    assert not list((out / "distill").glob(".rank*"))  # rank 1's scratch copy is gone
    # A second launch finds the stage unchanged on every rank.
    _run(
        [*torchrun, "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), *cli],
        tmp_path,
    )
    assert read_json(out / "distill" / "manifest.json")["fingerprint"] == manifest["fingerprint"]

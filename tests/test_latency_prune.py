"""Latency-driven pruning: the width probe, the greedy search (with an injected, deterministic
latency model), the unreachable-target errors, the recipe fields and one real measurement."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from edgedistill.compress.latency_meter import RuntimeLatencyMeter, target_runtime
from edgedistill.compress.latency_prune import find_width_multiple, prune_to_latency
from edgedistill.config import PruneConfig, Recipe
from edgedistill.errors import RecipeError, StageError
from edgedistill.runtime import OnnxRuntimeRunner
from edgedistill.students.vision import ConvNet

SHAPE = (1, 12, 12)
FIRST, SECOND, THIRD = (f"stages.{i}.layers.0.0" for i in range(3))


class BlockLatencyMeter:
    """A fake runtime: each conv costs ``weight * ceil(channels / block) * block`` us, plus a
    fixed per-call overhead, so widths between multiples of ``block`` cost as the multiple
    above. ``verify_bias`` slows every pruned model in long (verification) batches."""

    def __init__(
        self,
        weights: Sequence[float],
        *,
        block: int = 8,
        overhead_ms: float = 0.1,
        verify_bias: float = 1.0,
        verify_rounds: int = 10,
    ) -> None:
        self.weights, self.block, self.overhead_ms = list(weights), block, overhead_ms
        self.verify_bias, self.verify_rounds = verify_bias, verify_rounds
        self.batches: list[list[str]] = []
        self.base_key: str | None = None

    def latency_ms(self, model: nn.Module) -> float:
        convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
        cost = sum(
            w * math.ceil(c.out_channels / self.block) * self.block
            for w, c in zip(self.weights, convs, strict=True)
        )
        return self.overhead_ms + cost / 1000

    def samples(
        self, candidates: Sequence[tuple[str, nn.Module]], *, rounds: int
    ) -> list[np.ndarray]:
        keys = [k for k, _ in candidates]
        self.batches.append(keys)
        self.base_key = self.base_key or keys[0]
        out = []
        for key, model in candidates:
            value = self.latency_ms(model)
            if rounds == self.verify_rounds and key != self.base_key:
                value *= self.verify_bias
            jitter = np.linspace(-0.01, 0.01, 5 * rounds) * value  # symmetric: p50 exact
            out.append(value + jitter)
        return out


def _convnet(widths: tuple[int, ...] = (16, 32, 64)) -> ConvNet:
    torch.manual_seed(0)
    return ConvNet(in_channels=1, num_classes=3, widths=widths).eval()


# ---- the width probe -----------------------------------------------------------------------


def test_width_multiple_of_a_block_runtime_is_its_block() -> None:
    widths = list(range(48, 65))
    for block in (4, 8, 16):
        latency = [0.2 + 0.01 * math.ceil(w / block) * block for w in widths]
        multiple, excess = find_width_multiple(widths, latency, tolerance_ms=0.001)
        assert multiple == block
        assert excess[block] == pytest.approx(0.0)
        if block < 16:
            assert excess[2 * block] > 0.001  # coarser multiples cost time


def test_width_multiple_of_smooth_latency_is_one_and_dips_count() -> None:
    widths = list(range(32, 49))
    linear = [0.5 + 0.01 * w for w in widths]
    assert find_width_multiple(widths, linear, tolerance_ms=0.001)[0] == 1
    # A coarser multiple is accepted while its cost stays within the tolerance: m / 2 * slope
    assert find_width_multiple(widths, linear, tolerance_ms=0.015)[0] == 2
    assert find_width_multiple(widths, linear, tolerance_ms=0.025)[0] == 4
    # Measured shape (ONNX Runtime): multiples of 8 dip below their neighbours on both sides.
    dips = [0.5 + 0.002 * w - (0.02 if w % 8 == 0 else 0.0) for w in widths]
    assert find_width_multiple(widths, dips, tolerance_ms=0.002)[0] == 8
    # ... and the measured probe of the quick benchmark (widths 48..64): 52 beats 56 and 64,
    # and every 4k + 1 is slow, so 4 is the multiple, not 8 or 16.
    measured = [0.752, 0.854, 0.820, 0.834, 0.749, 0.902, 0.857, 0.885, 0.791, 0.895, 0.930,
                0.925, 0.833, 0.945, 0.947, 0.942, 0.796]  # fmt: skip
    assert find_width_multiple(range(48, 65), measured, tolerance_ms=0.004)[0] == 4
    with pytest.raises(ValueError, match="consecutive"):
        find_width_multiple([1, 2, 4], [1.0, 2.0, 3.0], tolerance_ms=0.0)


# ---- the search ----------------------------------------------------------------------------


def test_search_prunes_the_expensive_group_first_and_meets_the_target() -> None:
    model = _convnet()
    # The first (narrowest, 16-channel) layer is made slow on purpose: it dominates latency.
    meter = BlockLatencyMeter([20.0, 1.0, 1.0])
    result = prune_to_latency(model, SHAPE, target_latency=0.6, meter=meter, max_candidates=48)
    assert result.width_multiple == 8
    assert result.moves[0]["group"] == FIRST
    assert result.widths[FIRST] == 8
    assert all(w % 8 == 0 for w in result.widths.values())
    assert result.ratio <= 0.6
    exact = meter.latency_ms(result.model) / meter.latency_ms(model)
    assert result.ratio == pytest.approx(exact, rel=1e-9)
    assert result.ratio_ci[0] <= result.ratio <= result.ratio_ci[1]
    assert result.p50_before_ci[0] <= result.p50_before_ms <= result.p50_before_ci[1]
    timed = {k for batch in meter.batches for k in batch}
    assert result.candidates_measured == len(timed) <= 48
    assert result.macs_after < result.macs_before
    assert result.model(torch.randn(2, *SHAPE)).shape == (2, 3)
    assert model.current_config()["widths"] == [16, 32, 64]  # the input is not modified
    metrics = result.metrics()
    assert metrics["width_multiple"] == 8 and metrics["width_probe"]["found_multiple"] == 8
    assert metrics["group_widths"] == result.widths


def test_latency_not_macs_decides_what_is_pruned() -> None:
    """The same model with a cheap first layer: the search leaves that layer alone."""
    meter = BlockLatencyMeter([0.1, 1.0, 20.0])
    result = prune_to_latency(_convnet(), SHAPE, target_latency=0.7, meter=meter)
    assert result.moves[0]["group"] == THIRD
    assert result.widths[FIRST] == 16


def test_a_ratio_that_fails_verification_sends_the_search_on() -> None:
    # Long verification batches see every pruned model 20% slower than the short ones did.
    meter = BlockLatencyMeter([20.0, 1.0, 1.0], verify_bias=1.2, verify_rounds=10)
    result = prune_to_latency(_convnet(), SHAPE, target_latency=0.75, meter=meter, verify_rounds=10)
    assert any("verified_ratio" in move for move in result.moves)
    assert result.ratio <= 0.75  # the verified ratio, bias included
    assert result.steps == len(result.moves) >= 2


def test_unreachable_target_names_the_best_latency() -> None:
    meter = BlockLatencyMeter([20.0, 1.0, 1.0])  # all groups at 8 channels: 0.53x
    with pytest.raises(StageError) as info:
        prune_to_latency(_convnet(), SHAPE, target_latency=0.5, meter=meter)
    message = str(info.value)
    assert "\n" not in message
    assert "0.53x" in message and "raise prune.target_latency above 0.53" in message


def test_candidate_budget_is_bounded_with_a_clear_error() -> None:
    meter = BlockLatencyMeter([1.0, 1.0, 1.0], overhead_ms=0.0)
    with pytest.raises(StageError, match="max_candidates=8"):
        prune_to_latency(
            _convnet(), SHAPE, target_latency=0.3, meter=meter, probe_span=4, max_candidates=8
        )
    assert len({k for batch in meter.batches for k in batch}) <= 8


def test_bad_arguments_are_refused() -> None:
    meter = BlockLatencyMeter([1.0, 1.0, 1.0])
    for target in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match="target_latency"):
            prune_to_latency(_convnet(), SHAPE, target_latency=target, meter=meter)
    with pytest.raises(ValueError, match="max_candidates"):
        prune_to_latency(_convnet(), SHAPE, target_latency=0.5, meter=meter, max_candidates=5)


# ---- the recipe ----------------------------------------------------------------------------

DATA = {"source": "idx", "path": "/tmp", "labels": ["a", "b"]}
NO_TEACHER = {"terms": [{"name": "ce", "weight": 1.0}]}


def _recipe_error(prune: dict[str, Any], **sections: Any) -> str:
    with pytest.raises(RecipeError) as info:
        Recipe.from_dict({"data": DATA, "distill": NO_TEACHER, "prune": prune, **sections})
    message = str(info.value)
    assert "\n" not in message
    return message


def test_recipe_takes_exactly_one_target() -> None:
    assert "not both" in _recipe_error({"target_latency": 0.6, "target_macs_ratio": 0.5})
    for bad in (0, 1, 1.5, -0.2):
        assert "prune.target_latency" in _recipe_error({"target_latency": bad})
    assert "max_candidates needs target_latency" in _recipe_error({"max_candidates": 40})
    message = _recipe_error({"target_latency": 0.6}, profile={"runtimes": ["torch"]})
    assert "ONNX runtime in profile.runtimes" in message
    raw = {"data": DATA, "distill": NO_TEACHER, "prune": {"target_latency": 0.6}}
    cfg = Recipe.from_dict(raw).prune
    assert cfg.target_latency == 0.6 and cfg.target_macs_ratio is None
    assert target_runtime(("torch", "openvino", "onnxruntime")) == "openvino"


def test_macs_recipes_dump_exactly_as_before() -> None:
    """The prune stage fingerprints this dump: a MACs recipe must not see the new fields."""
    before = {
        "enabled": True,
        "target_macs_ratio": 0.7,
        "round_to": 8,
        "importance": "l2",
        "finetune_epochs": 4,
        "finetune_lr": 0.02,
    }
    assert PruneConfig().model_dump(mode="json") == before
    assert list(PruneConfig().model_dump(mode="json")) == list(before)
    given = PruneConfig(target_macs_ratio=0.5, round_to=16).model_dump(mode="json")
    assert given == {**before, "target_macs_ratio": 0.5, "round_to": 16}
    latency = PruneConfig(target_latency=0.6).model_dump(mode="json")
    assert "target_macs_ratio" not in latency
    assert latency["target_latency"] == 0.6 and latency["max_candidates"] == 64


# ---- one real measurement ------------------------------------------------------------------


def test_real_meter_times_interleaved_and_exports_faithfully(tmp_path: Path) -> None:
    model = _convnet((8, 16))
    narrow = _convnet((8, 8))
    with RuntimeLatencyMeter(
        "onnxruntime", SHAPE, threads=1, runs_per_round=3, warmup=1, workdir=tmp_path
    ) as meter:
        samples = meter.samples([("a", model), ("b", narrow)], rounds=2)
        assert [len(s) for s in samples] == [6, 6]
        assert all((s > 0).all() for s in samples)
        meter.samples([("a", model), ("b", narrow)], rounds=1)
        assert meter.exports == 2  # one export per architecture key
        x = np.random.default_rng(0).standard_normal((4, *SHAPE)).astype(np.float32)
        with OnnxRuntimeRunner(tmp_path / "candidate-0.onnx", "a") as runner:
            onnx_out = runner.infer(x)
        np.testing.assert_allclose(onnx_out, model(torch.from_numpy(x)).detach(), atol=1e-4)
        # A tiny model is all per-call overhead: no width makes it 20x faster.
        with pytest.raises(StageError, match=r"no candidate reaches target_latency 0\.05"):
            prune_to_latency(
                model, SHAPE, target_latency=0.05, meter=meter, probe_span=4, max_candidates=12
            )


# ---- the prune stage -----------------------------------------------------------------------


def test_prune_stage_records_the_latency_search(
    tmp_path: Path, tiny_recipe_dict: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    import io

    from rich.console import Console

    import edgedistill.pipeline.stages.compress as compress_stage
    from edgedistill.pipeline.run import run_pipeline

    made: list[dict[str, Any]] = []

    class Meter(BlockLatencyMeter):
        def __init__(self, runtime: str, shape: tuple[int, ...], **options: Any) -> None:
            super().__init__([20.0, 1.0])
            made.append({"runtime": runtime, "shape": shape, **options})

        def __enter__(self) -> Meter:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

    monkeypatch.setattr(compress_stage, "RuntimeLatencyMeter", Meter)
    raw = {**tiny_recipe_dict, "prune": {"target_latency": 0.8, "finetune_epochs": 1}}
    console = Console(file=io.StringIO(), force_terminal=False)
    ctx = run_pipeline(Recipe.from_dict(raw), tmp_path / "run", until="prune", console=console)
    assert made[0]["runtime"] == "onnxruntime" and made[0]["threads"] == 1
    metrics = ctx.manifests["prune"]["metrics"]
    latency = metrics["latency"]
    assert latency["runtime"] == "onnxruntime" and latency["batch"] == 1
    assert latency["target_latency"] == 0.8 and latency["latency_ratio"] <= 0.8
    assert latency["width_multiple"] == 8 and latency["candidates_measured"] > 0
    assert set(latency["group_widths"]) == {FIRST, SECOND}
    assert metrics["widths"] == [latency["group_widths"][FIRST], latency["group_widths"][SECOND]]
    assert len(latency["p50_after_ci_ms"]) == 2 and latency["seconds"] >= 0
    assert "pruned_top1" in metrics and metrics["macs_ratio"] < 1

"""Latency-driven channel pruning: widths chosen by time measured on the target runtime.

Pruning to a MACs target often yields models that are no faster: a runtime runs channels in
blocks (ONNX Runtime's NCHWc convolutions use 8- or 16-channel blocks on AVX2 / AVX-512), so
removing 3 of 64 channels may save nothing, and per-call overhead hides compute. Here every
decision is measured, in the spirit of NetAdapt (Yang et al., "NetAdapt: Platform-Aware
Neural Network Adaptation for Mobile Applications", ECCV 2018), with whole candidate models
exported to ONNX and timed on the target runtime (cheap for small students):

1. **Width probe.** The group whose channels cost most MACs is timed at every width
   ``c - probe_span .. c``. The largest power of two ``m`` such that rounding a width up to
   a multiple of ``m`` costs no measurable time is the multiple the runtime likes
   (:func:`find_width_multiple`); every width the search proposes is one.
2. **Feasibility.** The smallest candidate (every group at ``m`` channels) is timed against
   the unpruned model; if even it misses the target, :class:`StageError` names its latency.
3. **Greedy search.** Each iteration proposes, per group, the current model with that group
   narrowed by one step (about ``step_fraction`` of its width, a multiple of ``m``; the
   channels with the lowest filter-group magnitude go, Li et al., ICLR 2017). The candidates,
   the current and the unpruned model are timed interleaved (call by call, the leader
   rotating), so a load change hits them all. Of the candidates whose p50 ratio to the
   unpruned model meets the target, the one that changes the outputs least wins; otherwise
   the one with the least distortion increase per millisecond saved becomes current.
4. **Verification.** The winner and the unpruned model are timed interleaved again, longer;
   the p50 ratio gets a percentile-bootstrap interval (:mod:`edgedistill.bench.stats`). A
   ratio above the target sends the search on from the winner.

At most ``max_candidates`` distinct models are timed; timing goes through a
:class:`LatencyMeter`, so the search is testable with a deterministic fake.
"""

from __future__ import annotations

import copy
import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from edgedistill.bench.stats import bootstrap_ratio_ci
from edgedistill.compress.prune import _classifier, _group_roots, _prune_group
from edgedistill.errors import StageError
from edgedistill.metrics import count_macs, count_params

#: Mean slowdown of rounding widths up to a multiple that the width probe accepts, as a
#: fraction of the widest model's p50.
PROBE_TOLERANCE = 0.005


class LatencyMeter(Protocol):
    """Times models on one runtime (the real one: :class:`~edgedistill.compress.
    latency_meter.RuntimeLatencyMeter`)."""

    def samples(
        self, candidates: Sequence[tuple[str, nn.Module]], *, rounds: int
    ) -> list[np.ndarray]:
        """Per-call latencies (ms) of each ``(key, model)``, timed interleaved; a key names
        one architecture, so a meter may cache its export."""
        ...


@dataclass(frozen=True)
class WidthProbe:
    """The width probe of one group: p50 latency of the model at consecutive widths."""

    group: str
    widths: tuple[int, ...]
    p50_ms: tuple[float, ...]
    multiple: int
    excess_ms: dict[int, float]  # m -> mean slowdown of rounding a width up to a multiple
    tolerance_ms: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "widths": list(self.widths),
            "p50_ms": [round(v, 5) for v in self.p50_ms],
            "found_multiple": self.multiple,
            "excess_ms": {str(k): round(v, 5) for k, v in self.excess_ms.items()},
            "tolerance_ms": round(self.tolerance_ms, 5),
        }


@dataclass(frozen=True)
class LatencyPruneResult:
    """The pruned model, its measured latency against the unpruned one, and the search."""

    model: nn.Module
    target_latency: float
    widths: dict[str, int]  # group root layer -> output channels kept
    width_multiple: int
    probe: WidthProbe
    p50_before_ms: float
    p50_after_ms: float
    p50_before_ci: tuple[float, float]
    p50_after_ci: tuple[float, float]
    ratio: float  # p50(after) / p50(before), measured interleaved
    ratio_ci: tuple[float, float]
    candidates_measured: int
    steps: int
    seconds: float
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    moves: list[dict[str, Any]] = field(default_factory=list)

    @property
    def macs_ratio(self) -> float:
        return self.macs_after / self.macs_before

    def metrics(self) -> dict[str, Any]:
        """The JSON-ready record of the prune stage's ``latency`` metrics."""
        return {
            "target_latency": self.target_latency,
            "p50_before_ms": round(self.p50_before_ms, 5),
            "p50_before_ci_ms": [round(v, 5) for v in self.p50_before_ci],
            "p50_after_ms": round(self.p50_after_ms, 5),
            "p50_after_ci_ms": [round(v, 5) for v in self.p50_after_ci],
            "latency_ratio": round(self.ratio, 4),
            "latency_ratio_ci": [round(v, 4) for v in self.ratio_ci],
            "group_widths": dict(self.widths),
            "width_multiple": self.width_multiple,
            "width_probe": self.probe.to_dict(),
            "candidates_measured": self.candidates_measured,
            "moves": self.moves,
            "seconds": round(self.seconds, 1),
        }


def find_width_multiple(
    widths: Sequence[int], p50_ms: Sequence[float], *, tolerance_ms: float
) -> tuple[int, dict[int, float]]:
    """The channel multiple a runtime likes, from p50 latencies at consecutive widths.

    A runtime that computes channels in blocks of ``M`` (or picks a faster kernel for
    multiples of ``M``) runs a width rounded *up* to a multiple of ``M`` no slower than the
    width itself, so a search restricted to multiples of ``M`` loses nothing. Powers of two
    are tried in turn: ``m`` is accepted when the widths ``m`` drops from the accepted
    ``m / 2`` (multiples of ``m / 2`` but not of ``m``) are, on average, at most
    ``tolerance_ms`` faster than the fastest multiple of ``m`` at or above them (their
    *excess*); the first ``m`` that fails ends the search. Latency that grows smoothly with
    width (slope ``s`` per channel) gives the ``m`` where ``m / 2 * s`` reaches the
    tolerance. Measured on ONNX Runtime (AVX-512, 2 threads), the first convolution of a
    [64, 128, 256] ConvNet ran at 4k + 1 channels up to 15% slower than at 4k + 4, and 52
    channels faster than 56 or 64: ``m = 4``.

    Args:
        widths: Consecutive channel counts, e.g. 48..64 (any order).
        p50_ms: The model's p50 latency at each width.
        tolerance_ms: Mean excess accepted (>= 0), e.g. 0.5% of the widest model's p50.

    Returns:
        (multiple, {m: mean excess in ms} for every ``m`` > 1 tried).
    """
    pairs = sorted(zip(widths, p50_ms, strict=True))
    ws = [w for w, _ in pairs]
    ls = [float(v) for _, v in pairs]
    if len(ws) < 3 or any(b - a != 1 for a, b in itertools.pairwise(ws)):
        raise ValueError(f"need at least 3 consecutive widths, got {ws}")
    if tolerance_ms < 0:
        raise ValueError(f"tolerance_ms must be >= 0, got {tolerance_ms}")
    excess: dict[int, float] = {}
    multiple, m = 1, 2
    while sum(1 for w in ws if w % m == 0) >= 2:
        gaps = []
        for i, w in enumerate(ws):
            if w % (m // 2) or not w % m:
                continue
            above = [ls[j] for j in range(i, len(ws)) if ws[j] % m == 0]
            if above:
                gaps.append(max(0.0, min(above) - ls[i]))
        excess[m] = sum(gaps) / len(gaps) if gaps else 0.0
        if excess[m] > tolerance_ms:
            break
        multiple, m = m, 2 * m
    return multiple, excess


def _next_width(channels: int, multiple: int, step_fraction: float) -> int | None:
    """The width one move narrows a group to (a multiple of ``multiple``), or None."""
    if channels % multiple:
        aligned = channels // multiple * multiple
        return aligned if aligned >= multiple else None
    step = max(multiple, int(channels * step_fraction) // multiple * multiple)
    narrower = channels - step
    return narrower if narrower >= multiple else None


def _key(widths: dict[str, int]) -> str:
    return ",".join(f"{name}={w}" for name, w in sorted(widths.items()))


def _median_ci(samples: np.ndarray, seed: int, n_boot: int = 2000) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the median of ``samples`` (ms)."""
    values = np.asarray(samples, dtype=np.float64)
    rng = np.random.default_rng(seed)
    medians = np.median(values[rng.integers(0, len(values), (n_boot, len(values)))], axis=1)
    low, high = np.percentile(medians, [2.5, 97.5])
    return float(low), float(high)


@dataclass
class _Node:
    model: nn.Module
    widths: dict[str, int]
    distortion: float


class _Search:
    """The state of one latency-driven search: models, measurements and the budget."""

    def __init__(
        self,
        base: nn.Module,
        example: torch.Tensor,
        meter: LatencyMeter,
        *,
        ignored: Callable[[nn.Module], list[nn.Module]],
        p_norm: int,
        distortion: Callable[[nn.Module], float] | None,
        max_candidates: int,
        rounds: int,
        on_measure: Callable[[int, str], None] | None,
    ) -> None:
        self.example, self.meter, self.ignored, self.p_norm = example, meter, ignored, p_norm
        self.distortion, self.max_candidates, self.rounds = distortion, max_candidates, rounds
        self.on_measure = on_measure
        self.base = _Node(base, _group_roots(base, example, ignored(base)), 0.0)
        self.measured: set[str] = set()
        self.best_ratio = float("inf")

    def narrow(self, node: _Node, name: str, width: int) -> _Node:
        """A copy of ``node`` with group ``name`` narrowed to ``width`` channels."""
        trial = copy.deepcopy(node.model)
        lost = _prune_group(trial, self.example, name, node.widths[name] - width, self.p_norm)
        widths = _group_roots(trial, self.example, self.ignored(trial))  # read back
        score = self.distortion(trial) if self.distortion is not None else node.distortion + lost
        return _Node(trial, widths, score)

    def time(self, nodes: Sequence[_Node], *, rounds: int | None = None) -> list[np.ndarray]:
        """Per-call samples of ``[unpruned, *nodes]``, interleaved; counts new candidates."""
        batch = [self.base, *[n for n in nodes if _key(n.widths) != _key(self.base.widths)]]
        keys = [_key(n.widths) for n in batch]
        new = [k for k in dict.fromkeys(keys) if k not in self.measured]
        if len(self.measured) + len(new) > self.max_candidates:
            raise StageError(
                f"prune: target_latency not reached within prune.max_candidates="
                f"{self.max_candidates} timed candidates (best {self.best_ratio:.2f}x of the "
                "unpruned p50); raise prune.max_candidates or prune.target_latency"
            )
        self.measured.update(new)
        samples = self.meter.samples(
            [(k, n.model) for k, n in zip(keys, batch, strict=True)],
            rounds=rounds or self.rounds,
        )
        if self.on_measure is not None and new:
            self.on_measure(len(new), f"{len(self.measured)} candidates timed")
        by_key = dict(zip(keys, samples, strict=True))
        return [by_key[k] for k in [keys[0], *[_key(n.widths) for n in nodes]]]


def prune_to_latency(
    model: nn.Module,
    input_shape: tuple[int, ...],
    *,
    target_latency: float,
    meter: LatencyMeter,
    distortion: Callable[[nn.Module], float] | None = None,
    importance: str = "l2",
    ignored_layers: list[nn.Module] | None = None,
    probe_span: int = 16,
    probe_tolerance: float = PROBE_TOLERANCE,
    step_fraction: float = 0.125,
    max_candidates: int = 64,
    search_rounds: int = 3,
    verify_rounds: int = 10,
    input_dtype: torch.dtype = torch.float32,
    on_measure: Callable[[int, str], None] | None = None,
    seed: int = 0,
) -> LatencyPruneResult:
    """Prune output channels until the measured p50 latency is ``target_latency`` of the
    unpruned model's (see the module docstring for the method).

    Args:
        model: Trained model; not modified (a pruned deep copy is returned).
        input_shape: One sample's shape, e.g. (1, 28, 28); models are timed at batch 1.
        target_latency: Required p50(pruned) / p50(unpruned), in (0, 1).
        meter: Times candidate models on the target runtime.
        distortion: Data-driven score of a candidate (lower is better), e.g.
            :func:`~edgedistill.compress.calibration.output_distortion`; without it, the
            summed fraction of filter-group magnitude removed.
        importance: "l2" or "l1" magnitude of each channel's coupled filter group.
        ignored_layers: Layers whose outputs are kept (the classifier always is).
        probe_span: Widths below the probed group's width that are timed (>= 2).
        probe_tolerance: Mean slowdown of rounding a width up to a multiple that still counts
            as free, as a fraction of the unpruned p50 (:func:`find_width_multiple`).
        step_fraction: Share of a group's width one move removes (rounded to the multiple).
        max_candidates: Most distinct models timed, the probe included.
        search_rounds: Interleaved rounds per search batch.
        verify_rounds: Interleaved rounds of the final unpruned-vs-pruned check.
        input_dtype: dtype of the example input (torch.int64 for token-id models).
        on_measure: Called ``(new candidates, description)`` after each timed batch.
        seed: Seeds the bootstrap intervals.

    Raises:
        ValueError: a target outside (0, 1) or another bad argument.
        StageError: no candidate reaches the target (the smallest one is too slow, or the
            ``max_candidates`` budget ran out); the message names the best ratio reached.
    """
    if not 0 < target_latency < 1:
        raise ValueError(f"target_latency must be in (0, 1), got {target_latency}")
    if importance not in ("l1", "l2"):
        raise ValueError(f"importance must be 'l1' or 'l2', got {importance!r}")
    if probe_span < 2 or not 0 < step_fraction < 1:
        raise ValueError("probe_span must be >= 2 and step_fraction in (0, 1)")
    if max_candidates < probe_span + 3:
        raise ValueError(f"max_candidates must be >= probe_span + 3 = {probe_span + 3}")
    started = time.perf_counter()
    example = torch.ones(1, *input_shape, dtype=input_dtype)
    base = copy.deepcopy(model).eval()
    keep = {n for n, m in model.named_modules() if any(m is k for k in ignored_layers or [])}

    def ignored(m: nn.Module) -> list[nn.Module]:
        return [_classifier(m)] + [mod for n, mod in m.named_modules() if n in keep]

    search = _Search(
        base,
        example,
        meter,
        ignored=ignored,
        p_norm=2 if importance == "l2" else 1,
        distortion=distortion,
        max_candidates=max_candidates,
        rounds=search_rounds,
        on_measure=on_measure,
    )
    if not search.base.widths:
        raise StageError("prune: the model has no prunable channel group besides its classifier")
    probe = _probe(search, input_shape, probe_span, probe_tolerance)
    multiple = probe.multiple
    _check_feasible(search, multiple, target_latency)

    node, moves = search.base, []
    while True:
        proposals = [
            search.narrow(node, name, width)
            for name, channels in node.widths.items()
            if (width := _next_width(channels, multiple, step_fraction)) is not None
        ]
        if not proposals:
            raise StageError(
                f"prune: no candidate reaches target_latency {target_latency} (best "
                f"{search.best_ratio:.2f}x of the unpruned p50); raise prune.target_latency "
                f"to at least {search.best_ratio:.2f} or use prune.target_macs_ratio"
            )
        samples = search.time([node, *proposals])
        p50 = [float(np.median(s)) for s in samples]
        ratios = [v / p50[0] for v in p50[2:]]
        search.best_ratio = min(search.best_ratio, *ratios)
        chosen, finishing = _choose(node, proposals, p50, target_latency)
        changed = next(n for n in chosen.widths if chosen.widths[n] != node.widths[n])
        moves.append(
            {
                "group": changed,
                "width": chosen.widths[changed],
                "ratio": round(ratios[proposals.index(chosen)], 4),
                "distortion": round(chosen.distortion, 6),
            }
        )
        node = chosen
        if finishing:
            before, after = search.time([node], rounds=verify_rounds)
            ratio, low, high = bootstrap_ratio_ci(before, after, seed=seed)
            if ratio <= target_latency:
                break
            moves[-1]["verified_ratio"] = round(ratio, 4)  # noise: search on from here
    return LatencyPruneResult(
        model=node.model,
        target_latency=target_latency,
        widths=dict(node.widths),
        width_multiple=multiple,
        probe=probe,
        p50_before_ms=float(np.median(before)),
        p50_after_ms=float(np.median(after)),
        p50_before_ci=_median_ci(before, seed),
        p50_after_ci=_median_ci(after, seed),
        ratio=ratio,
        ratio_ci=(low, high),
        candidates_measured=len(search.measured),
        steps=len(moves),
        seconds=time.perf_counter() - started,
        macs_before=count_macs(base, input_shape, input_dtype),
        macs_after=count_macs(node.model, input_shape, input_dtype),
        params_before=count_params(base),
        params_after=count_params(node.model),
        moves=moves,
    )


def _choose(
    node: _Node, proposals: list[_Node], p50: list[float], target: float
) -> tuple[_Node, bool]:
    """The next model, and whether it meets ``target`` (p50: unpruned, node, proposals).

    Of the proposals that meet the target, the one that changes the outputs least; otherwise
    the one with the least distortion increase per ms saved, where a proposal that saved
    nothing measurable (under 0.5% of the unpruned p50) moves only when none saved time.
    """
    ratios = [v / p50[0] for v in p50[2:]]
    finishing = [p for p, r in zip(proposals, ratios, strict=True) if r <= target]
    if finishing:
        return min(finishing, key=lambda p: p.distortion), True
    floor = 0.005 * p50[0]

    def cost(i: int) -> tuple[bool, float]:
        saved = p50[1] - p50[2 + i]
        gain = proposals[i].distortion - node.distortion
        return saved <= floor, gain / max(saved, floor)

    return proposals[min(range(len(proposals)), key=cost)], False


def _probe(
    search: _Search, input_shape: tuple[int, ...], span: int, probe_tolerance: float
) -> WidthProbe:
    """Time the group that costs most MACs per channel at widths ``c - span .. c``."""
    base = search.base
    dtype = search.example.dtype
    macs = count_macs(base.model, input_shape, dtype)
    candidates = [n for n, c in base.widths.items() if c > 2]
    if not candidates:
        raise StageError("prune: every prunable group has 2 channels or fewer")

    def saved_per_channel(name: str) -> int:
        trial = copy.deepcopy(base.model)
        _prune_group(trial, search.example, name, 1, search.p_norm)
        return macs - count_macs(trial, input_shape, dtype)

    group = max(candidates, key=saved_per_channel)
    channels = base.widths[group]
    span = min(span, channels - 1)
    nodes = [search.narrow(base, group, w) for w in range(channels - span, channels)]
    samples = search.time(nodes)
    p50 = [float(np.median(s)) for s in samples]
    widths = (*range(channels - span, channels), channels)
    latencies = (*p50[1:], p50[0])
    tolerance = probe_tolerance * latencies[-1]
    multiple, excess = find_width_multiple(widths, latencies, tolerance_ms=tolerance)
    return WidthProbe(group, tuple(widths), tuple(latencies), multiple, excess, tolerance)


def _check_feasible(search: _Search, multiple: int, target: float) -> None:
    """Time the smallest candidate; raise when even it misses ``target``."""
    smallest = search.base
    for name, channels in search.base.widths.items():
        floor = min(multiple, channels)
        if channels > floor:
            smallest = search.narrow(smallest, name, floor)
    base_samples, small_samples = search.time([smallest])
    ratio = float(np.median(small_samples) / np.median(base_samples))
    search.best_ratio = min(search.best_ratio, ratio)
    if ratio > target:
        raise StageError(
            f"prune: no candidate reaches target_latency {target}: even every group at "
            f"{multiple} channels runs at {ratio:.2f}x of the unpruned p50 (per-call overhead "
            f"dominates); raise prune.target_latency above {ratio:.2f} or use "
            "prune.target_macs_ratio"
        )

"""Structured channel pruning with torch-pruning's dependency graph.

Channels are removed physically (a convolution loses filters, the layers that consume it
lose inputs, coupled layers such as residual sums are pruned together), so the pruned model
is smaller on disk and needs fewer MACs. Remaining channel counts are multiples of
``round_to`` (8 suits SIMD and tensor-core kernels).

How much to take from each layer is chosen greedily: each step removes ``round_to``
channels — the ones with the lowest L1/L2 filter-group magnitude (Li et al., "Pruning
Filters for Efficient ConvNets", ICLR 2017) — from the coupled group where that costs the
least importance per MAC saved, until the MACs fall to the target. A uniform ratio with
rounding to 8 overshoots badly on narrow students (16 channels at any ratio > 0 become 8);
the greedy walk stops at the least aggressive model that meets the target.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from edgedistill.errors import StageError
from edgedistill.metrics import count_macs, count_params

PRUNABLE = (nn.Conv1d, nn.Conv2d, nn.Linear)


@dataclass(frozen=True)
class PruneResult:
    """The pruned model and what pruning did to it."""

    model: nn.Module
    steps: int
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int

    @property
    def macs_ratio(self) -> float:
        return self.macs_after / self.macs_before


def _group_roots(
    model: nn.Module, example: torch.Tensor, ignored: list[nn.Module]
) -> dict[str, int]:
    """Name -> current channel count of each prunable group's root layer."""
    import torch_pruning as tp

    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    names = {id(m): n for n, m in model.named_modules()}
    roots: dict[str, int] = {}
    for group in graph.get_all_groups(ignored_layers=ignored, root_module_types=list(PRUNABLE)):
        module = group[0].dep.target.module
        channels = (
            module.out_channels
            if isinstance(module, nn.Conv1d | nn.Conv2d)
            else module.out_features
        )
        roots[names[id(module)]] = int(channels)
    return roots


def _prune_group(model: nn.Module, example: torch.Tensor, root_name: str, n: int, p: int) -> float:
    """Remove the ``n`` least important channels of ``root_name``'s group, in place.

    Returns the fraction of the group's total importance that was removed.
    """
    import torch_pruning as tp

    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    module = dict(model.named_modules())[root_name]
    handler = (
        tp.prune_conv_out_channels
        if isinstance(module, nn.Conv1d | nn.Conv2d)
        else tp.prune_linear_out_channels
    )
    channels = (
        module.out_channels if isinstance(module, nn.Conv1d | nn.Conv2d) else module.out_features
    )
    group = graph.get_pruning_group(module, handler, idxs=list(range(channels)))
    importance = tp.importance.GroupMagnitudeImportance(p=p)(group)
    order = torch.argsort(importance)[:n]
    graph.get_pruning_group(module, handler, idxs=order.tolist()).prune()
    return float(importance[order].sum() / importance.sum().clamp_min(1e-12))


def prune_channels(
    model: nn.Module,
    input_shape: tuple[int, ...],
    *,
    target_macs_ratio: float,
    round_to: int = 8,
    importance: str = "l2",
    ignored_layers: list[nn.Module] | None = None,
) -> PruneResult:
    """Prune output channels until MACs fall to ``target_macs_ratio`` of the original.

    Args:
        model: Trained model; not modified (a pruned deep copy is returned).
        input_shape: One sample's shape, e.g. (1, 28, 28).
        target_macs_ratio: Required MACs(after) / MACs(before), in (0, 1).
        round_to: Channels are removed ``round_to`` at a time; layers whose width is not a
            multiple of it are first rounded down to one.
        importance: "l2" or "l1" magnitude of each channel's coupled filter group.
        ignored_layers: Layers whose outputs are kept (the classifier always is).

    Raises:
        ValueError: for a target outside (0, 1) or an unknown importance.
        StageError: if removing every removable channel group still misses the target.
    """
    if not 0 < target_macs_ratio < 1:
        raise ValueError(f"target_macs_ratio must be in (0, 1), got {target_macs_ratio}")
    if importance not in ("l1", "l2"):
        raise ValueError(f"importance must be 'l1' or 'l2', got {importance!r}")
    if round_to < 1:
        raise ValueError(f"round_to must be >= 1, got {round_to}")
    p_norm = 2 if importance == "l2" else 1
    example = torch.zeros(1, *input_shape)
    macs_before, params_before = count_macs(model, input_shape), count_params(model)
    current = copy.deepcopy(model).eval()
    keep_names = {n for n, m in model.named_modules() if any(m is k for k in ignored_layers or [])}

    def ignored(m: nn.Module) -> list[nn.Module]:
        return [_classifier(m)] + [mod for n, mod in m.named_modules() if n in keep_names]

    # First bring every prunable width down to a multiple of round_to.
    for name, channels in _group_roots(current, example, ignored(current)).items():
        if channels % round_to and channels > round_to:
            _prune_group(current, example, name, channels % round_to, p_norm)
    macs, steps = count_macs(current, input_shape), 0
    while macs > target_macs_ratio * macs_before:
        best: tuple[float, nn.Module, int] | None = None
        finishing: tuple[float, nn.Module, int] | None = None  # steps that reach the target
        for name, channels in _group_roots(current, example, ignored(current)).items():
            if channels - round_to < round_to:
                continue
            trial = copy.deepcopy(current)
            lost = _prune_group(trial, example, name, round_to, p_norm)
            trial_macs = count_macs(trial, input_shape)
            saved = macs - trial_macs
            if saved <= 0:
                continue
            cost = lost / saved
            if best is None or cost < best[0]:
                best = (cost, trial, trial_macs)
            if trial_macs <= target_macs_ratio * macs_before and (
                finishing is None or lost < finishing[0]
            ):
                finishing = (lost, trial, trial_macs)
        if finishing is not None:
            # The last step: of the removals that reach the target, the one losing least.
            best = finishing
        if best is None:
            raise StageError(
                f"pruning cannot reach {target_macs_ratio:.2f}x MACs with round_to={round_to} "
                f"(stopped at {macs / macs_before:.2f}x); lower round_to or raise "
                "prune.target_macs_ratio"
            )
        _, current, macs = best
        steps += 1
    return PruneResult(current, steps, macs_before, macs, params_before, count_params(current))


def _classifier(model: nn.Module) -> nn.Module:
    head = getattr(model, "classifier", None)
    if isinstance(head, nn.Module):
        return head
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise StageError("cannot find the classifier to protect from pruning")
    return linears[-1]

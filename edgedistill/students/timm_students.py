"""Small timm vision models (MobileNetV3, EfficientNet-Lite, ResNet10t, ...) as edge students.

:class:`TimmStudent` wraps any model of the installed ``timm`` (Wightman, "PyTorch Image
Models", https://github.com/huggingface/pytorch-image-models) built by name with
``pretrained=False`` and gives it the student contract of :mod:`edgedistill.students.base`.
Initial weights come only from a local file (safetensors, or a weights-only pickled state
dict); nothing is ever downloaded.

Structured pruning (:func:`edgedistill.compress.prune.prune_channels`) changes channel counts
that timm's constructors cannot express, so :meth:`TimmStudent.current_config` records every
resized layer under ``channels`` and the factory resizes a fresh model to match: a pruned
student still round-trips through (config JSON, safetensors).

timm is optional (the ``vision`` extra); it is imported only when a model is built.
"""

from __future__ import annotations

import copy
import difflib
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from edgedistill.data.packaged import import_optional
from edgedistill.errors import RecipeError, StageError
from edgedistill.students.base import STUDENTS

_CONV = (nn.Conv1d, nn.Conv2d)
# Suggested when a name matches nothing: small models that export, prune and run on edge CPUs.
EDGE_MODELS = ("mobilenetv3_small_050", "lcnet_050", "resnet10t", "efficientnet_lite0")
_NORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)


def import_timm() -> ModuleType:
    """Import timm, or raise :class:`MissingDependencyError` naming how to install it."""
    return import_optional(
        "timm", package="timm", extra="vision", purpose="timm students", hint="pip install timm"
    )


def _layer_widths(model: nn.Module) -> dict[str, list[int]]:
    """Channel counts of every resizable layer: conv [in, out, groups], linear [in, out],
    norm [channels]."""
    widths: dict[str, list[int]] = {}
    for name, module in model.named_modules():
        if isinstance(module, _CONV):
            widths[name] = [module.in_channels, module.out_channels, module.groups]
        elif isinstance(module, nn.Linear):
            widths[name] = [module.in_features, module.out_features]
        elif isinstance(module, nn.GroupNorm):
            widths[name] = [module.num_channels]
        elif isinstance(module, nn.LayerNorm):
            widths[name] = [int(module.normalized_shape[0])]
        elif isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):
            widths[name] = [module.num_features]
    return widths


def _resize_(module: nn.Module, width: list[int]) -> None:
    """Give one layer new channel counts in place (fresh initialisation, same class)."""

    def fresh(shape: tuple[int, ...], like: torch.Tensor | None) -> nn.Parameter | None:
        return None if like is None else nn.Parameter(torch.empty(shape, dtype=like.dtype))

    if isinstance(module, _CONV):
        cin, cout, groups = width
        module.in_channels, module.out_channels, module.groups = cin, cout, groups
        module.weight = fresh((cout, cin // groups, *module.kernel_size), module.weight)  # type: ignore[assignment]
        module.bias = fresh((cout,), module.bias)
    elif isinstance(module, nn.Linear):
        module.in_features, module.out_features = width
        module.weight = fresh((width[1], width[0]), module.weight)  # type: ignore[assignment]
        module.bias = fresh((width[1],), module.bias)  # type: ignore[assignment]
    else:
        (channels,) = width
        if isinstance(module, nn.GroupNorm):
            module.num_channels = channels
        elif isinstance(module, nn.LayerNorm):
            module.normalized_shape = (channels,)
        else:
            module.num_features = channels  # type: ignore[assignment]
            for buffer in ("running_mean", "running_var"):
                if getattr(module, buffer, None) is not None:
                    setattr(module, buffer, torch.empty(channels))
        module.weight = fresh((channels,), module.weight)  # type: ignore[arg-type,assignment]
        module.bias = fresh((channels,), module.bias)  # type: ignore[arg-type,assignment]
    module.reset_parameters()  # type: ignore[operator]


def _tensor_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


class TimmStudent(nn.Module):
    """A timm model with the student contract.

    Args:
        name: A timm model name (``timm.list_models()``), e.g. "mobilenetv3_small_050".
        num_classes: Number of logits K (>= 1).
        in_chans: Input channels C.
        weights: Optional local weights to start from: ``.safetensors`` or a weights-only
            pickled state dict, of the timm model or of a :class:`TimmStudent` ("model."
            keys). A classifier of another size is skipped (``num_classes`` differs) and a
            3-channel stem is adapted to ``in_chans`` (timm's ``adapt_input_conv``). The path
            stays in :meth:`current_config`, so rebuilding reads the file again.
        model_args: Extra ``timm.create_model`` arguments (e.g. ``{"drop_rate": 0.2}``).
        channels: Resized layers of a pruned model, as written by :meth:`current_config`.

    Shapes:
        forward: [B, C, H, W] -> logits [B, K]; forward_features: -> pooled [B, D].

    Raises:
        MissingDependencyError: timm is not installed.
        RecipeError: unknown model name, bad arguments, or weights that do not fit.
        UnsafeFileError: a pickled weights file that is not weights-only.
    """

    def __init__(
        self,
        name: str,
        num_classes: int = 10,
        in_chans: int = 3,
        weights: str | Path | None = None,
        model_args: dict[str, Any] | None = None,
        channels: dict[str, list[int]] | None = None,
    ) -> None:
        super().__init__()
        timm = import_timm()
        if not timm.is_model(name):
            close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.5)
            hint = (
                f"did you mean: {', '.join(close)}" if close else f"e.g. {', '.join(EDGE_MODELS)}"
            )
            raise RecipeError(f"unknown timm model '{name}'; {hint}")
        if num_classes < 1 or in_chans < 1:
            raise RecipeError(f"timm student '{name}': num_classes and in_chans must be >= 1")
        args = dict(model_args or {})
        try:
            model: nn.Module = timm.create_model(
                name, pretrained=False, num_classes=num_classes, in_chans=in_chans, **args
            )
        except (TypeError, ValueError, RuntimeError, AssertionError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise RecipeError(f"timm student '{name}': {first}") from None
        self.model = model
        self.config: dict[str, Any] = {
            "name": name,
            "num_classes": num_classes,
            "in_chans": in_chans,
            "weights": None if weights is None else str(weights),
            "model_args": args,
        }
        if weights is not None:
            self._load_initial(Path(weights), in_chans)
        self._base_widths = _layer_widths(model)
        self._base_shapes = _tensor_shapes(model)
        modules = dict(model.named_modules())
        for layer, width in (channels or {}).items():
            if layer not in self._base_widths or len(width) != len(self._base_widths[layer]):
                raise RecipeError(f"timm student '{name}': cannot resize layer '{layer}'")
            _resize_(modules[layer], [int(w) for w in width])

    def _load_initial(self, path: Path, in_chans: int) -> None:
        """Load local initial weights (see the class docstring)."""
        from edgedistill.artifacts import load_state_dict_file

        state = load_state_dict_file(path)
        if state and all(k.startswith("model.") for k in state):
            state = {k[len("model.") :]: v for k, v in state.items()}
        own = self.model.state_dict()
        cfg = getattr(self.model, "pretrained_cfg", {}) or {}
        first_convs = cfg.get("first_conv") or ()
        for conv in [first_convs] if isinstance(first_convs, str) else first_convs:
            key = f"{conv}.weight"
            if key in state and key in own and state[key].shape[1] != in_chans:
                from timm.models import adapt_input_conv

                base = int(state[key].shape[1])
                state[key] = adapt_input_conv(in_chans, state[key], base_chans=base)
        head = self._classifier_name()
        for key in (f"{head}.weight", f"{head}.bias"):
            if key in state and key in own and state[key].shape != own[key].shape:
                state[key] = own[key]  # another task's head: keep the fresh one
        try:
            self.model.load_state_dict(state)
        except RuntimeError as exc:
            lines = str(exc).splitlines()
            first = lines[1] if len(lines) > 1 else lines[0]
            name = self.config["name"]
            raise RecipeError(f"weights {path} do not fit '{name}': {first.strip()}") from None

    @property
    def classifier(self) -> nn.Module:
        """The final linear layer (kept whole by pruning)."""
        head: nn.Module = self.model.get_classifier()  # type: ignore[operator]
        return head

    def _classifier_name(self) -> str:
        head = self.classifier
        return next(n for n, m in self.model.named_modules() if m is head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images [B, C, H, W] -> logits [B, K]."""
        out: torch.Tensor = self.model(x)
        return out

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images [B, C, H, W] -> pooled pre-logit features [B, D] (after any head conv)."""
        feats = self.model.forward_features(x)  # type: ignore[operator]
        out: torch.Tensor = self.model.forward_head(feats, pre_logits=True)  # type: ignore[operator]
        return out

    def forward_intermediates(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits [B, K] and the feature maps of timm's ``feature_info`` stages.

        Uses timm's ``forward_intermediates`` (all stages, e.g. five maps [B, C_i, H/2^i,
        W/2^i] for a MobileNetV3) where the model has it, else forward hooks on the
        ``feature_info`` modules.
        """
        if hasattr(self.model, "forward_intermediates"):
            final, feats = self.model.forward_intermediates(x)  # type: ignore[operator]
            logits: torch.Tensor = self.model.forward_head(final)  # type: ignore[operator]
            return logits, list(feats)
        info = getattr(self.model, "feature_info", None) or []
        names = [str(item["module"]) for item in info]
        modules = dict(self.model.named_modules())
        if not names or any(n not in modules for n in names):
            raise StageError(f"{self.config['name']}: timm gives no feature stages to report")
        taps: dict[str, torch.Tensor] = {}
        handles = [
            modules[n].register_forward_hook(lambda _m, _a, out, n=n: taps.__setitem__(n, out))
            for n in names
        ]
        try:
            logits = self.model(x)
        finally:
            for handle in handles:
                handle.remove()
        return logits, [taps[n] for n in names]

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier with a fresh one of ``num_classes`` outputs."""
        if num_classes < 1:
            raise RecipeError(f"num_classes must be >= 1, got {num_classes}")
        old, head = self.classifier, self._classifier_name()
        base_in = self._base_widths.get(head, [0])[0]
        self.model.reset_classifier(num_classes)  # type: ignore[operator]
        new = self.classifier
        if isinstance(old, nn.Linear) and isinstance(new, nn.Linear):
            if new.in_features != old.in_features:  # pruned: timm's num_features is stale
                _resize_(new, [old.in_features, num_classes])
            # what a fresh model with this num_classes has (the pruned input stays recorded)
            self._base_widths[head] = [base_in, num_classes]
            self._base_shapes[f"{head}.weight"] = (num_classes, base_in)
            if new.bias is not None:
                self._base_shapes[f"{head}.bias"] = (num_classes,)
        else:
            self._base_widths.update(_layer_widths(self.model))
            self._base_shapes.update(_tensor_shapes(self.model))
        self.config["num_classes"] = num_classes

    def current_config(self) -> dict[str, Any]:
        """Constructor arguments that rebuild this model, channel counts read from the live
        layers (``channels`` lists the layers pruning resized).

        Raises:
            StageError: a tensor outside conv / linear / norm layers changed shape.
        """
        live = _layer_widths(self.model)
        changed = {k: v for k, v in live.items() if self._base_widths.get(k) != v}
        covered = tuple(f"{k}." for k in changed)
        for key, shape in _tensor_shapes(self.model).items():
            if self._base_shapes.get(key) != shape and not key.startswith(covered):
                raise StageError(f"{self.config['name']}: cannot describe resized tensor '{key}'")
        return {**copy.deepcopy(self.config), "channels": changed}

    def to_deploy(self) -> nn.Module:
        """An inference copy in eval mode, re-parameterised with timm's
        ``reparameterize_model`` (fuses branches of MobileOne, RepGhost, FastViT, ...)."""
        deploy = copy.deepcopy(self).eval()
        try:
            from timm.models import reparameterize_model
        except ImportError:
            return deploy
        deploy.model = reparameterize_model(deploy.model, inplace=True)
        return deploy.eval()


@STUDENTS.register("timm_student")
def timm_student(**kwargs: Any) -> TimmStudent:
    """Registry factory for :class:`TimmStudent`."""
    return TimmStudent(**kwargs)

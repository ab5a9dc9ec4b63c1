"""Multi-exit students for layered self-distillation (BYOT, ICCV 2019; LSSKD / HSAKD, IJCAI 2021).

:class:`MultiExitStudent` wraps any :class:`~edgedistill.students.base.PooledClassifier` (the
``convnet`` vision family, ``imu_cnn``, ``imu_tcn``, ...) and attaches an :class:`ExitHead` after
every stage but the last. With ``num_transforms`` M > 1 the exits predict joint labels over K·M
classes (class × input transformation, see :mod:`edgedistill.distill.layered`). Two layouts:

* ``joint_main=True`` (the ``layered`` term's joint variant): the backbone's own classifier is a
  joint head too; class scores are its identity-transform slice, columns y·M.
* ``joint_main=False`` with ``last_stage_exit=True`` (LSSKD / HSAKD, the ``lsskd`` term): only
  the auxiliary heads are joint, one after every stage including the last; the backbone keeps
  its plain K-class classifier, which is what is deployed.

Train with :func:`~edgedistill.distill.layered.layered_sd_loss` or
:func:`~edgedistill.distill.lsskd.lsskd_loss` on :meth:`forward_exits` (and
:meth:`forward_exit_features` for hints); deploy with :meth:`MultiExitStudent.to_deploy`.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from edgedistill.artifacts import atomic_save
from edgedistill.distill.layered import class_logits
from edgedistill.errors import RecipeError
from edgedistill.export.onnx import export_onnx
from edgedistill.students.base import PooledClassifier, Student, build_model, fold_batch_norm_


def exit_output_names(n: int) -> list[str]:
    """ONNX output names of an n-exit model, shallow -> deep: ``exit0`` ... ``exit{n-1}``."""
    if n < 1:
        raise ValueError(f"need at least one exit, got {n}")
    return [f"exit{i}" for i in range(n)]


def _stage_output(stage: nn.Module) -> tuple[int, int]:
    """(channels, spatial rank) of a stage's output, read from its last convolution."""
    convs = [m for m in stage.modules() if isinstance(m, nn.Conv1d | nn.Conv2d)]
    if not convs:
        raise RecipeError(f"cannot attach an exit head to {type(stage).__name__}: no convolution")
    return int(convs[-1].out_channels), 1 if isinstance(convs[-1], nn.Conv1d) else 2


def _class_rows(linear: nn.Linear, num_transforms: int) -> nn.Linear:
    """A copy of ``linear`` keeping only its identity-transform outputs (rows y·M)."""
    weight = linear.weight.detach()[::num_transforms].clone()
    out = nn.Linear(weight.shape[1], weight.shape[0], bias=linear.bias is not None)
    out = out.to(weight)
    with torch.no_grad():
        out.weight.copy_(weight)
        if linear.bias is not None:
            out.bias.copy_(linear.bias.detach()[::num_transforms])
    return out


class ExitHead(nn.Module):
    """Auxiliary exit: 1×1 conv + BN + ReLU -> global average pool -> linear.

    Shapes:
        [B, cin, H, W] (``rank`` 2) or [B, cin, T] (``rank`` 1) -> logits [B, out_features];
        :meth:`features` gives the pooled [B, width] before the linear layer.
    """

    def __init__(self, cin: int, width: int, out_features: int, rank: int) -> None:
        super().__init__()
        two_d = rank == 2
        self.conv = (nn.Conv2d if two_d else nn.Conv1d)(cin, width, 1, bias=False)
        self.bn: nn.Module = nn.BatchNorm2d(width) if two_d else nn.BatchNorm1d(width)
        self.act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1) if two_d else nn.AdaptiveAvgPool1d(1)
        self.fc = nn.Linear(width, out_features)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.act(self.bn(self.conv(x)))), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def _exit_heads(heads: nn.ModuleList) -> list[ExitHead]:
    return [cast(ExitHead, head) for head in heads]


class MultiExitStudent(nn.Module):
    """A pooled-classifier backbone with an auxiliary exit after each stage but the last.

    Args:
        backbone: The wrapped student; modified in place (its classifier becomes the joint
            head with K·M outputs when M > 1; its ``config`` keeps ``num_classes`` = K).
        num_transforms: M transformations of the joint labels; 1 = plain BYOT exits over K.
        head_width: Channels of every exit head's 1×1 conv; default the stage's own width.
        joint_main: With M > 1, whether the backbone's classifier predicts the K·M joint labels
            too (True, the ``layered`` joint variant) or keeps its K classes (False, LSSKD).
        last_stage_exit: Also attach a (training-only) auxiliary head after the last stage, as
            HSAKD does; it is never deployed (the backbone's classifier is the deepest exit).

    Shapes:
        forward: input -> [B, K], the backbone classifier's class scores.
        forward_exits: input -> one tensor per auxiliary head [B, K·M], shallow -> deep, then
            the backbone classifier's [B, K·M] (joint_main) or [B, K].
        forward_exit_features: input -> one [B, D] per exit (D = deepest pooled width).
    """

    def __init__(
        self,
        backbone: nn.Module,
        *,
        num_transforms: int = 1,
        head_width: int | None = None,
        joint_main: bool = True,
        last_stage_exit: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(backbone, PooledClassifier):
            raise RecipeError(
                f"a multi-exit student needs a pooled classifier, got {type(backbone).__name__}"
            )
        if num_transforms < 1 or (head_width is not None and head_width < 1):
            raise RecipeError(
                f"num_transforms and head_width must be >= 1, got {num_transforms}, {head_width}"
            )
        stages = backbone.stage_modules()
        if len(stages) < 2:
            raise RecipeError(f"a multi-exit student needs >= 2 stages, got {len(stages)}")
        self.backbone = backbone
        self.num_classes = int(backbone.classifier.out_features)
        self.num_transforms = num_transforms
        self.head_width = head_width
        self.joint_main = joint_main
        self.last_stage_exit = last_stage_exit
        dim, out = int(backbone.classifier.in_features), self.num_classes * num_transforms
        if self.main_transforms > 1:
            backbone.classifier = nn.Linear(dim, out)
        heads, projections = [], []
        for stage in stages if last_stage_exit else stages[:-1]:
            cin, rank = _stage_output(stage)
            width = head_width or cin
            heads.append(ExitHead(cin, width, out, rank))
            # training only: maps a shallow exit's pooled feature onto the deepest for hints
            projections.append(nn.Identity() if width == dim else nn.Linear(width, dim, bias=False))
        self.heads = nn.ModuleList(heads)
        self.projections = nn.ModuleList(projections)

    @classmethod
    def from_config(cls, arch: str, config: dict[str, Any]) -> MultiExitStudent:
        """Rebuild from a registered ``arch`` and a :meth:`current_config` dictionary."""
        config = dict(config)
        num_transforms = int(config.pop("num_transforms", 1))
        head_width = config.pop("head_width", None)
        joint_main = bool(config.pop("joint_main", True))
        last_stage_exit = bool(config.pop("last_stage_exit", False))
        return cls(
            build_model(arch, config), num_transforms=num_transforms, head_width=head_width,
            joint_main=joint_main, last_stage_exit=last_stage_exit,
        )  # fmt: skip

    @property
    def main_transforms(self) -> int:
        """M of the backbone classifier's outputs: num_transforms if joint_main, else 1."""
        return self.num_transforms if self.joint_main else 1

    @property
    def num_exits(self) -> int:
        return len(self.heads) + 1

    @property
    def deploy_heads(self) -> int:
        """How many auxiliary heads can be deployed as early exits (not the last-stage one)."""
        return len(self.heads) - int(self.last_stage_exit)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return class_logits(self.backbone(x), self.main_transforms)

    def forward_exits_and_features(
        self, x: torch.Tensor
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """One pass: joint logits [B, K·M] and hint features [B, D] per exit, shallow -> deep."""
        net = self.backbone
        x, _ = net.enter(x)
        stages = net.stage_modules()
        logits, feats = [], []
        heads = _exit_heads(self.heads)
        for i, stage in enumerate(stages):
            x = stage(x)
            if i < len(heads):
                pooled = heads[i].features(x)
                logits.append(heads[i].fc(pooled))
                feats.append(self.projections[i](pooled))
        pooled = torch.flatten(net.pool(x), 1)
        logits.append(net.classifier(net.dropout(pooled)))
        feats.append(pooled)
        return logits, feats

    def forward_exits(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Logits of every exit, shallow -> deep (shapes in the class docstring)."""
        return self.forward_exits_and_features(x)[0]

    def forward_exit_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Pooled features of every exit projected to [B, D]; the last is the deepest's own."""
        return self.forward_exits_and_features(x)[1]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_features(x)

    def forward_intermediates(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Class logits [B, K] and the backbone's reported feature maps."""
        logits, feats = self.backbone.forward_intermediates(x)
        return class_logits(logits, self.main_transforms), feats

    def reset_classifier(self, num_classes: int) -> None:
        """Fresh main classifier and exit linears for ``num_classes`` classes."""
        out = num_classes * self.num_transforms
        self.backbone.reset_classifier(num_classes)
        self.backbone.classifier = nn.Linear(
            self.backbone.classifier.in_features, num_classes * self.main_transforms
        )
        for head in _exit_heads(self.heads):
            head.fc = nn.Linear(head.fc.in_features, out)
        self.num_classes = num_classes

    def current_config(self) -> dict[str, Any]:
        """The backbone's rebuild arguments plus this wrapper's own (``num_transforms`` ...)."""
        config = dict(cast(Student, self.backbone).current_config())
        config.update(num_classes=self.num_classes, num_transforms=self.num_transforms)
        return {
            **config,
            "head_width": self.head_width,
            "joint_main": self.joint_main,
            "last_stage_exit": self.last_stage_exit,
        }

    def plain_student(self) -> nn.Module:
        """The backbone alone, classifier cut to its K identity rows, batch norm not folded.

        It has the backbone family's own architecture and config, so the rest of the chain
        (save, prune, export) treats it like any student trained without exits.
        """
        plain = copy.deepcopy(self.backbone)
        plain.classifier = _class_rows(plain.classifier, self.main_transforms)
        return cast(nn.Module, plain)

    def to_deploy(self, keep_exits: bool = False) -> nn.Module:
        """An eval-mode inference copy with K-class outputs (identity rows of the joint heads).

        Args:
            keep_exits: False: the backbone's own ``to_deploy`` (batch norm folded) with its
                classifier cut to K outputs, a plain model of the backbone's family, no exit
                heads or projections. True: a :class:`MultiExitDeploy` returning one [B, K]
                tensor per exit from the shared trunk (exit heads folded too).
        """
        deploy = getattr(self.backbone, "to_deploy", None)
        trunk = deploy() if callable(deploy) else copy.deepcopy(self.backbone).eval()
        trunk.classifier = _class_rows(trunk.classifier, self.main_transforms)
        if not keep_exits:
            return cast(nn.Module, trunk)
        heads = copy.deepcopy(self.heads[: self.deploy_heads]).eval()
        for head in _exit_heads(heads):
            fold_batch_norm_(head)
            head.fc = _class_rows(head.fc, self.num_transforms)
        return MultiExitDeploy(trunk, heads).eval()


class MultiExitDeploy(nn.Module):
    """Inference graph of every exit over one shared trunk: input -> N tensors [B, K]."""

    def __init__(self, trunk: PooledClassifier, heads: nn.ModuleList) -> None:
        super().__init__()
        self.trunk = trunk
        self.heads = heads

    @property
    def output_names(self) -> list[str]:
        return exit_output_names(len(self.heads) + 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x, _ = self.trunk.enter(x)
        stages = self.trunk.stage_modules()
        outs = []
        for stage, head in zip(stages[:-1], self.heads, strict=True):
            x = stage(x)
            outs.append(head(x))
        pooled = torch.flatten(self.trunk.pool(stages[-1](x)), 1)
        outs.append(self.trunk.classifier(self.trunk.dropout(pooled)))
        return tuple(outs)


def name_exit_outputs(path: Path) -> Path:
    """Rename an ONNX file's graph outputs to :func:`exit_output_names`, in place (atomic).

    Each output gets an Identity node, so names used inside the graph stay valid.
    """
    import onnx

    model = onnx.load(str(path))
    names = exit_output_names(len(model.graph.output))
    for output, name in zip(model.graph.output, names, strict=True):
        model.graph.node.append(onnx.helper.make_node("Identity", [output.name], [name]))
        output.name = name
    onnx.checker.check_model(model)
    atomic_save(Path(path), lambda tmp: onnx.save(model, str(tmp)))
    return Path(path)


def export_multi_exit_onnx(
    model: nn.Module, input_shape: tuple[int, ...], path: Path, **kwargs: Any
) -> Path:
    """:func:`~edgedistill.export.onnx.export_onnx`, then outputs named ``exit0``, ``exit1``, ..."""
    export_onnx(model, input_shape, path, **kwargs)
    return name_exit_outputs(path)

"""Label-free DINO pre-training of a student: self-distillation from its own EMA teacher.

Caron et al., "Emerging Properties in Self-Supervised Vision Transformers", ICCV 2021
(arXiv:2104.14294). The student is a backbone (``model.forward_features``) + DINO head
(:class:`DinoNet`); the teacher is a copy updated only by an EMA of the student (momentum on a
cosine schedule from ``ema_momentum`` to 1). Each sample gives two augmented views; with targets
q = softmax((t − c)/τ_t) (centred, sharpened, warm-up of τ_t) the loss is symmetric:
L = ½[H(q(v1), p_s(v2)) + H(q(v2), p_s(v1))]. Optimiser: AdamW as in the paper, no weight
decay on biases and norms, cosine learning-rate decay per step; the teacher runs in train mode
(batch statistics) and copies the student's BatchNorm buffers. Every epoch ends with an atomic,
bit-exactly resumable checkpoint (as :func:`edgedistill.distill.trainer.train_student`).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edgedistill.artifacts import atomic_save, resume_checkpoint, warn_stderr
from edgedistill.distill.dino import dino_loss, dino_teacher_targets, ema_update, update_center
from edgedistill.distill.trainer import ProgressFn, save_checkpoint

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def random_rotations(n: int, generator: torch.Generator) -> torch.Tensor:
    """[n, 3, 3] uniformly random proper rotations (det +1), from random unit quaternions."""
    w, x, y, z = F.normalize(torch.randn(n, 4, generator=generator), dim=1).unbind(1)
    rows = [
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ]
    return torch.stack([torch.stack(r, dim=1) for r in rows], dim=1)


def augment_imu(
    x: torch.Tensor,
    generator: torch.Generator,
    *,
    scale: tuple[float, float] = (0.8, 1.2),
    jitter: float = 0.05,
    max_shift: float = 0.1,
    rotate: bool = True,
) -> torch.Tensor:
    """One random view of unit-normalised IMU windows, [B, C, T] -> [B, C, T].

    Per sample: a rotation R of every consecutive channel triple (the same R for accelerometer
    and gyroscope, so they stay aligned; needs C % 3 == 0), a scaling factor s ~ U(scale), a
    circular time shift of up to ``max_shift``·T steps either way, then Gaussian jitter of std
    ``jitter``. All draws come from ``generator`` (the same number whatever the options), so a
    seeded generator gives the same views. Without jitter, each triple's norm at step τ is s
    times the input's at step τ − shift.
    """
    if x.dim() != 3:
        raise ValueError(f"augment_imu needs windows [B, C, T], got {tuple(x.shape)}")
    b, c, t = x.shape
    if rotate and c % 3:
        raise ValueError(f"rotation needs a multiple of 3 channels, got {c}")
    if not 0 < scale[0] <= scale[1] or jitter < 0 or not 0 <= max_shift < 1:
        raise ValueError(f"bad augment_imu options: {scale=}, {jitter=}, {max_shift=}")
    factor = (scale[0] + (scale[1] - scale[0]) * torch.rand(b, generator=generator)).to(x)
    rot = random_rotations(b, generator).to(x)
    limit = int(t * max_shift)
    shift = torch.randint(-limit, limit + 1, (b,), generator=generator).to(x.device)
    noise = torch.randn(b, c, t, generator=generator).to(x)
    if rotate:
        x = torch.einsum("bij,bgjt->bgit", rot, x.reshape(b, c // 3, 3, t)).reshape(b, c, t)
    out = x * factor[:, None, None]
    index = (torch.arange(t, device=x.device)[None] - shift[:, None]) % t  # [B, T]
    out = out.gather(2, index[:, None, :].expand(b, c, t))
    return out + jitter * noise


def augment_image(
    x: torch.Tensor,
    generator: torch.Generator,
    *,
    scale: tuple[float, float] = (0.6, 1.0),
    flip: float = 0.5,
    brightness: float = 0.2,
    contrast: float = 0.2,
) -> torch.Tensor:
    """One random view of normalised images, [B, C, H, W] -> [B, C, H, W].

    Per sample: a random resized crop covering a fraction ~U(scale) of the area (aspect ratio
    log-uniform in [3/4, 4/3]) resized back to H×W with bilinear ``F.interpolate``, a horizontal
    flip with probability ``flip``, then contrast c ~ U(1 ± contrast) about the image mean and
    brightness offset ~U(± brightness). Deterministic for a given ``generator`` state.
    """
    if x.dim() != 4:
        raise ValueError(f"augment_image needs images [B, C, H, W], got {tuple(x.shape)}")
    if not 0 < scale[0] <= scale[1] <= 1 or not 0 <= flip <= 1 or min(brightness, contrast) < 0:
        raise ValueError(
            f"bad augment_image options: {scale=}, {flip=}, {brightness=}, {contrast=}"
        )
    b, _, h, w = x.shape
    u = torch.rand(7, b, generator=generator)  # area, ratio, top, left, flip, gain, offset
    area = (scale[0] + (scale[1] - scale[0]) * u[0]) * h * w
    ratio = torch.exp(math.log(3 / 4) + math.log(16 / 9) * u[1])
    heights = torch.sqrt(area / ratio).round().clamp(1, h).long()
    widths = torch.sqrt(area * ratio).round().clamp(1, w).long()
    tops, lefts = (u[2] * (h - heights + 1)).long(), (u[3] * (w - widths + 1)).long()
    flips = u[4] < flip
    gain = (1 + contrast * (2 * u[5] - 1)).to(x)[:, None, None, None]
    offset = (brightness * (2 * u[6] - 1)).to(x)[:, None, None, None]
    views = []
    for i in range(b):
        top, left, ch, cw = (int(v[i]) for v in (tops, lefts, heights, widths))
        crop = x[i : i + 1, :, top : top + ch, left : left + cw]
        crop = F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False)
        views.append(crop.flip(3) if bool(flips[i]) else crop)
    out = torch.cat(views)
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    return (out - mean) * gain + mean + offset


@dataclass(frozen=True)
class DinoSettings:
    """Hyper-parameters of :func:`pretrain_dino`; the temperatures and momenta are the paper's.

    Optimiser: AdamW (the paper's) with peak rate ``lr`` decayed per step along a cosine to 0;
    the paper's 0.0005·batch/256 is far too slow for short runs of tiny students. τ_t rises
    linearly from ``teacher_temp_warmup`` to ``teacher_temp`` over the first ``warmup_epochs``
    epochs (paper: 0.04 → 0.07 over 30). ``hidden``, ``bottleneck``, ``out_dim``: the head's
    sizes (:class:`DinoNet`). ``grad_clip`` bounds the global gradient norm (official code: 3).
    On tiny IMU data a constant τ_t = 0.04 with τ_s = 0.2 learned markedly better features than
    τ_s = 0.1 (see tests/test_dino_pretrain.py).
    """

    epochs: int
    batch_size: int = 64
    lr: float = 0.01
    weight_decay: float = 0.04
    out_dim: int = 256
    hidden: int = 256
    bottleneck: int = 64
    student_temp: float = 0.1
    teacher_temp: float = 0.07
    teacher_temp_warmup: float = 0.04
    warmup_epochs: int = 0
    center_momentum: float = 0.9
    ema_momentum: float = 0.996
    grad_clip: float | None = 3.0
    seed: int = 0

    def __post_init__(self) -> None:
        rules = [
            ("epochs >= 1", self.epochs >= 1),
            ("batch_size >= 2", self.batch_size >= 2),
            ("lr > 0, weight_decay >= 0", self.lr > 0 and self.weight_decay >= 0),
            ("head sizes >= 1", min(self.out_dim, self.hidden, self.bottleneck) >= 1),
            ("temperatures > 0", min(self.student_temp, self.teacher_temp) > 0),
            ("teacher_temp_warmup > 0", self.teacher_temp_warmup > 0),
            ("0 <= warmup_epochs <= epochs", 0 <= self.warmup_epochs <= self.epochs),
            ("center_momentum in [0, 1)", 0 <= self.center_momentum < 1),
            ("ema_momentum in [0, 1]", 0 <= self.ema_momentum <= 1),
            ("grad_clip None or > 0", self.grad_clip is None or self.grad_clip > 0),
        ]
        failed = [rule for rule, ok in rules if not ok]
        if failed:
            raise ValueError(f"bad DINO settings: need {'; '.join(failed)}")

    def teacher_temp_at(self, epoch: int) -> float:
        """τ_t of 0-based ``epoch``: linear warm-up (the paper's linspace), then constant."""
        if epoch >= self.warmup_epochs:
            return self.teacher_temp
        frac = epoch / (self.warmup_epochs - 1) if self.warmup_epochs > 1 else 0.0
        return self.teacher_temp_warmup + frac * (self.teacher_temp - self.teacher_temp_warmup)

    def ema_momentum_at(self, step: int, total: int) -> float:
        """Teacher momentum 1 − (1 − λ₀)·(cos(π·step/total) + 1)/2: λ₀ at step 0, → 1."""
        return 1 - (1 - self.ema_momentum) * (math.cos(math.pi * step / total) + 1) / 2

    def lr_at(self, step: int, total: int) -> float:
        """Cosine learning-rate decay lr·(cos(π·step/total) + 1)/2."""
        return self.lr * (math.cos(math.pi * step / total) + 1) / 2


class DinoNet(nn.Module):
    """Backbone + DINO head: [B, ...] -> ``forward_features`` [B, D] -> logits [B, out_dim].

    Head: Linear-BN-GELU, Linear-BN-GELU, Linear to the bottleneck, L2 normalisation, then a
    weight-normalised linear layer with its norm fixed to 1, so the logits are cosines in
    [−1, 1] (the official ``norm_last_layer``). The head's BN (the official ``use_bn_in_head``)
    keeps the outputs of a small random backbone apart; without it tiny runs collapsed to uniform.
    """

    def __init__(self, backbone: nn.Module, in_dim: int, settings: DinoSettings) -> None:
        super().__init__()
        hidden, bottleneck = settings.hidden, settings.bottleneck
        self.backbone = backbone
        self.mlp = nn.Sequential(
            *(nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.GELU()),
            *(nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.GELU()),
            nn.Linear(hidden, bottleneck),
        )
        self.last = nn.Parameter(torch.randn(settings.out_dim, bottleneck) / bottleneck**0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.backbone.forward_features(x)  # type: ignore[operator]
        z = F.normalize(self.mlp(features.reshape(features.shape[0], -1)), dim=-1)
        return z @ F.normalize(self.last, dim=-1).T


def _dino_step(
    student: DinoNet,
    teacher: DinoNet,
    center: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    views: tuple[torch.Tensor, torch.Tensor],
    settings: DinoSettings,
    teacher_temp: float,
    ema_momentum: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss on two views [B, ...] (one forward per net), optimiser step, teacher EMA.

    Returns the centre [K] updated with this batch and the step's statistics.
    """
    both = torch.cat(views)
    teacher.train()
    student.train()
    with torch.no_grad():
        t_out = teacher(both)
    t1, t2 = t_out.chunk(2)
    s1, s2 = student(both).chunk(2)
    temps = {"student_temp": settings.student_temp, "teacher_temp": teacher_temp}
    loss = 0.5 * (dino_loss(s2, t1, center, **temps) + dino_loss(s1, t2, center, **temps))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()  # type: ignore[no-untyped-call]
    if settings.grad_clip is not None:
        nn.utils.clip_grad_norm_(student.parameters(), settings.grad_clip)
    optimizer.step()
    ema_update(teacher, student, momentum=ema_momentum)
    q = dino_teacher_targets(t_out, center, teacher_temp=teacher_temp)
    mean_q = q.mean(dim=0)
    stats = {
        "loss": loss.item(),
        "teacher_entropy": torch.special.entr(q).sum(dim=1).mean().item(),
        "teacher_kl_uniform": math.log(q.shape[1]) - torch.special.entr(mean_q).sum().item(),
        "teacher_std": t_out.std(dim=0).mean().item(),
    }
    return update_center(center, t_out, momentum=settings.center_momentum), stats


@dataclass
class DinoResult:
    """Per-epoch history, the epoch a run resumed from (0 if fresh) and this call's seconds."""

    history: list[dict[str, float]] = field(default_factory=list)
    resumed_from_epoch: int = 0
    seconds: float = 0.0


def pretrain_dino(
    model: nn.Module,
    x_train: torch.Tensor,
    settings: DinoSettings,
    *,
    augment: Augment,
    checkpoint_path: Path | None = None,
    progress: ProgressFn | None = None,
    stop_after_epoch: int | None = None,
) -> DinoResult:
    """DINO-pre-train ``model``'s backbone in place, without labels (left in eval mode).

    Args:
        model: A student with ``forward_features(x) -> [B, D]``; its classifier is untouched.
        x_train: [N, ...] unlabelled, normalised inputs (N >= ``settings.batch_size``; the
            last incomplete batch of each epoch is dropped, as in the official code).
        settings: See :class:`DinoSettings`.
        augment: ``augment(x, generator)`` -> one random view, same shape (e.g.
            :func:`augment_imu`, :func:`augment_image`).
        checkpoint_path: Written atomically after every epoch (student and head, teacher,
            centre, optimiser, data-order and augmentation generators, global torch RNG,
            history); resumed from when its settings and data shape match, else overwritten.
        progress: Called as ``progress(step, total_steps, description)`` after each batch.
        stop_after_epoch: Return after this epoch (tests use it to simulate a crash).

    Returns:
        :class:`DinoResult`; each history row has ``epoch``, ``teacher_temp``, ``lr`` and
        ``ema_momentum`` (at the epoch's start) and batch means of ``loss``,
        ``teacher_entropy`` (entropy of the centred, sharpened teacher distributions),
        ``teacher_kl_uniform`` (KL(mean teacher distribution ‖ uniform): log K when every
        sample lands on one dimension) and ``teacher_std`` (std of the raw teacher outputs
        across the batch, mean over dimensions: ~0 when the outputs collapse).
    """
    forward_features = getattr(model, "forward_features", None)
    if not callable(forward_features) or not isinstance(x_train, torch.Tensor):
        raise ValueError("pretrain_dino needs a model with forward_features and a tensor x_train")
    n = len(x_train)
    if x_train.dim() < 2 or n < settings.batch_size:
        raise ValueError(f"need x_train [N, ...] with N >= batch_size, got {tuple(x_train.shape)}")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    with torch.no_grad():
        dim = forward_features(x_train[:2].to(device)).reshape(2, -1).shape[1]
    model.train(was_training)
    torch.manual_seed(settings.seed)
    student = DinoNet(model, dim, settings).to(device)
    teacher = copy.deepcopy(student).requires_grad_(False)
    center = torch.zeros(settings.out_dim, device=device)
    params = [p for p in student.parameters() if p.requires_grad]
    groups: list[dict[str, Any]] = [
        {"params": [p for p in params if p.dim() > 1]},
        {"params": [p for p in params if p.dim() <= 1], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=settings.lr, weight_decay=settings.weight_decay)
    order_gen = torch.Generator().manual_seed(settings.seed)
    augment_gen = torch.Generator().manual_seed(settings.seed + 1)
    stateful: dict[str, Any] = {"student": student, "teacher": teacher, "optimizer": optimizer}
    generators = {"order_generator": order_gen, "augment_generator": augment_gen}
    key = {"settings": asdict(settings), "data_shape": list(x_train.shape)}
    result, start_epoch, state = DinoResult(), 0, None
    if checkpoint_path is not None:  # an unreadable one is set aside with a warning
        state = resume_checkpoint(checkpoint_path, warn_stderr)
    if state is not None and all(state.get(k) == v for k, v in key.items()):
        for name, obj in stateful.items():
            obj.load_state_dict(state[name])
        for name, gen in generators.items():
            gen.set_state(state[name])
        torch.set_rng_state(state["torch_rng"])
        center = state["center"].to(device)
        start_epoch = result.resumed_from_epoch = int(state["epoch"])
        result.history = list(state["history"])
    steps = n // settings.batch_size
    total = settings.epochs * steps
    started = time.perf_counter()
    for epoch in range(start_epoch, settings.epochs):
        temp = settings.teacher_temp_at(epoch)
        row: dict[str, float] = {
            "epoch": epoch + 1,
            "teacher_temp": temp,
            "lr": settings.lr_at(epoch * steps, total),
            "ema_momentum": settings.ema_momentum_at(epoch * steps, total),
        }
        sums: dict[str, float] = {}
        order = torch.randperm(n, generator=order_gen)
        for step in range(steps):
            batch = x_train[order[step * settings.batch_size : (step + 1) * settings.batch_size]]
            batch = batch.to(device)
            views = (augment(batch, augment_gen), augment(batch, augment_gen))
            if any(v.shape != batch.shape for v in views):
                raise ValueError(f"augment changed the batch shape {tuple(batch.shape)}")
            k = epoch * steps + step
            for group in optimizer.param_groups:
                group["lr"] = settings.lr_at(k, total)
            momentum = settings.ema_momentum_at(k, total)
            center, stats = _dino_step(
                student, teacher, center, optimizer, views, settings, temp, momentum
            )
            sums = {name: sums.get(name, 0.0) + value / steps for name, value in stats.items()}
            if progress is not None:
                progress(k + 1, total, f"dino epoch {epoch + 1} loss {stats['loss']:.3f}")
        row.update(sums)
        result.history.append(row)
        if checkpoint_path is not None:
            state = {
                **key,
                **{name: obj.state_dict() for name, obj in stateful.items()},
                **{name: gen.get_state() for name, gen in generators.items()},
                "torch_rng": torch.get_rng_state(),
                "center": center,
                "epoch": epoch + 1,
                "history": result.history,
            }
            atomic_save(checkpoint_path, lambda tmp, s=state: save_checkpoint(s, tmp))  # type: ignore[misc]
        if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch:
            break
    model.eval()
    result.seconds = time.perf_counter() - started
    return result

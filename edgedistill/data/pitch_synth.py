"""Synthetic pitch frames with a known f0: the data of the ``synthetic-pitch`` source.

Every sample is one CREPE frame (Kim, Salamon, Li and Bello, "CREPE: A Convolutional
Representation for Pitch Estimation", ICASSP 2018, arXiv:1802.06182): 1024 samples of 16 kHz
audio, cut with :func:`~edgedistill.teachers.audio.frame_audio` from a 2048-sample clip so that
the frame is centred on the instant whose fundamental frequency is known exactly. The f0 is
drawn log-uniformly from ``[f_min, f_max]`` (default 50-1500 Hz, inside CREPE's 31.7-2005 Hz
bin range) and every clip gets a random gain (its peak between 0.01 and 0.9). Five kinds, in
turn, so each is a fifth of a split:

* ``pure``: a sine.
* ``harmonic``: harmonics 1..H below 7.6 kHz with a random timbre: amplitudes
  ``k ** -alpha * u_k`` (``alpha`` in [0.5, 2], ``u_k`` in [0.2, 1]; every third tone has weak
  even harmonics, like a clarinet), random phases. The fundamental is always present, so the
  f0 is unambiguous.
* ``chord``: a harmonic root plus one or two harmonic notes a minor third, major third,
  fourth or fifth above it, each 12-20 dB quieter. The labelled f0 is the root's: the loudest
  and lowest note, the predominant pitch. Octaves are never added (they would make the octave
  of the label ambiguous), and the other notes stay well below the root because a root and
  its fifth are, together, periodic an octave below the root: with the notes only 8-16 dB
  quieter CREPE full missed 6% of 300 chords, mostly an octave low (1.3% at 12-20 dB).
* ``vibrato``: a harmonic tone whose f0 follows ``f0 * 2 ** (d / 1200 * (sin(2 pi r t + p) -
  sin p))`` (rate r 4-7 Hz, depth d 20-100 cents); the label is the instantaneous f0 at the
  frame centre (t = 0), which the formula makes exactly ``f0``.
* ``noisy``: a harmonic tone plus white noise at an SNR drawn from [0, 20] dB (over the frame).

The training and test splits come from different random streams of the same seed
(``default_rng([seed, 0])`` and ``default_rng([seed, 1])``): with a continuous f0, random
phases, timbres and noise, no test clip occurs in training.

Labels are CREPE's 360 pitch bins (:mod:`edgedistill.tasks.pitch`): the label of a frame is
the bin nearest its f0, and the class names are the bin centres ("440.5Hz").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edgedistill.errors import DataError
from edgedistill.tasks.pitch import bin_hz, hz_to_bin
from edgedistill.teachers.audio import PITCH_BINS, SAMPLE_RATE, WINDOW, frame_audio

KINDS = ("pure", "harmonic", "chord", "vibrato", "noisy")
"""The kinds of synthetic frame, generated in turn (sample i is ``KINDS[i % len(KINDS)]``)."""

CLIP = 2 * WINDOW  # samples per synthesised clip; the frame is centred on sample WINDOW
MAX_HARMONIC_HZ = 7600.0  # harmonics stay below this (Nyquist is 8 kHz: no aliasing)
MAX_HARMONICS = 30
CHORD_INTERVALS = (3, 4, 5, 7)  # semitones above the root: minor/major third, fourth, fifth
CHORD_DB = (12.0, 20.0)  # how much quieter each added note is than the root
SNR_DB = (0.0, 20.0)
PEAK = (0.01, 0.9)


@dataclass(frozen=True)
class PitchFrames:
    """Frames with their true f0.

    Attributes:
        frames: float32 [N, 1024] at 16 kHz, in [-1, 1].
        f0_hz: float64 [N] true fundamental frequency at each frame's centre.
        kinds: int64 [N] index into :data:`KINDS`.
    """

    frames: np.ndarray
    f0_hz: np.ndarray
    kinds: np.ndarray

    @property
    def labels(self) -> np.ndarray:
        """int64 [N] nearest CREPE bin of each f0 (:func:`hz_to_bin`)."""
        return hz_to_bin(self.f0_hz)


# ---- synthesis -------------------------------------------------------------------------------


def _times() -> np.ndarray:
    """[CLIP] seconds relative to the labelled instant (sample WINDOW of the clip)."""
    return (np.arange(CLIP) - WINDOW) / SAMPLE_RATE


def _timbre(rng: np.random.Generator, f0: float) -> np.ndarray:
    """Random harmonic amplitudes [H] (the fundamental first) for a tone at ``f0``."""
    count = int(min(MAX_HARMONICS, max(1, MAX_HARMONIC_HZ // f0)))
    k = np.arange(1, count + 1)
    amplitudes = k ** -rng.uniform(0.5, 2.0) * rng.uniform(0.2, 1.0, count)
    if rng.random() < 1 / 3:  # clarinet-like: weak even harmonics
        amplitudes[1::2] *= 0.1
    amplitudes[0] = max(amplitudes[0], 0.5)
    return amplitudes


def _tone(rng: np.random.Generator, phase: np.ndarray, amplitudes: np.ndarray) -> np.ndarray:
    """Sum of harmonics ``a_k sin(k * phase + p_k)`` with random phases p_k; [CLIP]."""
    k = np.arange(1, len(amplitudes) + 1)[:, None]
    offsets = rng.uniform(0.0, 2 * np.pi, (len(amplitudes), 1))
    return np.asarray((amplitudes[:, None] * np.sin(k * phase[None] + offsets)).sum(0))


def _harmonic(rng: np.random.Generator, f0: float) -> np.ndarray:
    return _tone(rng, 2 * np.pi * f0 * _times(), _timbre(rng, f0))


def _synthesize(rng: np.random.Generator, kind: str, f0: float) -> np.ndarray:
    """One clip [CLIP] of ``kind`` whose f0 at t = 0 is ``f0``."""
    t = _times()
    if kind == "pure":
        clip = np.sin(2 * np.pi * f0 * t + rng.uniform(0.0, 2 * np.pi))
    elif kind == "harmonic":
        clip = _harmonic(rng, f0)
    elif kind == "chord":
        clip = _harmonic(rng, f0)
        count = int(rng.integers(1, 3))
        for interval in rng.choice(CHORD_INTERVALS, size=count, replace=False):
            gain = 10 ** (-rng.uniform(*CHORD_DB) / 20)
            clip = clip + gain * _harmonic(rng, f0 * 2 ** (int(interval) / 12))
    elif kind == "vibrato":
        rate, depth = rng.uniform(4.0, 7.0), rng.uniform(20.0, 100.0)
        start = rng.uniform(0.0, 2 * np.pi)
        f = f0 * 2 ** (depth / 1200 * (np.sin(2 * np.pi * rate * t + start) - np.sin(start)))
        phase = 2 * np.pi * np.cumsum(f) / SAMPLE_RATE
        clip = _tone(rng, phase - phase[WINDOW], _timbre(rng, f0))
    elif kind == "noisy":
        clip = _harmonic(rng, f0)
        frame = clip[WINDOW // 2 : WINDOW // 2 + WINDOW]
        snr = rng.uniform(*SNR_DB)
        clip = clip + rng.normal(0.0, np.sqrt(np.mean(frame**2) / 10 ** (snr / 10)), CLIP)
    else:
        raise DataError(f"unknown kind of pitch frame {kind!r}; known: {', '.join(KINDS)}")
    peak = np.exp(rng.uniform(np.log(PEAK[0]), np.log(PEAK[1])))
    return np.asarray(clip * (peak / max(np.abs(clip).max(), 1e-12)))


def synthesize_frames(
    n: int,
    seed: int,
    split: str,
    *,
    f_min: float = 50.0,
    f_max: float = 1500.0,
    kinds: Sequence[str] = KINDS,
) -> PitchFrames:
    """``n`` deterministic frames of the ``split`` ("train" or "test") stream of ``seed``.

    Args:
        n: Number of frames (>= 1).
        seed: Base seed; the same (seed, split) gives the same bytes.
        split: "train" or "test": independent random streams.
        f_min, f_max: The f0 range in Hz (log-uniform), within CREPE's bins.
        kinds: Which of :data:`KINDS` to make, in turn.

    Returns:
        :class:`PitchFrames` with frames [n, 1024] (each centred on its labelled instant).
    """
    if split not in ("train", "test"):
        raise DataError(f"split must be 'train' or 'test', got {split!r}")
    if n < 1:
        raise DataError(f"need at least 1 frame, got {n}")
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise DataError(f"kinds {list(kinds)}: choose from {', '.join(KINDS)}")
    low, high = bin_hz([0, PITCH_BINS - 1])
    if not low <= f_min < f_max <= high:
        raise DataError(f"need {low:.1f} <= f_min < f_max <= {high:.1f} Hz, got {f_min}, {f_max}")
    rng = np.random.default_rng([seed, 0 if split == "train" else 1])
    f0 = np.exp(rng.uniform(np.log(f_min), np.log(f_max), n))
    kind_ids = np.array([KINDS.index(kinds[i % len(kinds)]) for i in range(n)], dtype=np.int64)
    clips = np.stack(
        [_synthesize(rng, KINDS[k], float(f)) for k, f in zip(kind_ids, f0, strict=True)]
    )
    # frame_audio centres frame i on sample i * hop: frame 1 of hop WINDOW is the labelled one.
    frames = frame_audio(clips.astype(np.float32), hop_length=WINDOW)[:, 1].numpy()
    return PitchFrames(np.ascontiguousarray(frames, dtype=np.float32), f0, kind_ids)

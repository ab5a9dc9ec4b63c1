"""Pitch estimation as classification over CREPE's 360 pitch bins, and its metrics.

CREPE (Kim, Salamon, Li and Bello, ICASSP 2018, arXiv:1802.06182) divides 31.7-2005.5 Hz
into 360 bins 20 cents apart; a model scores each bin and the pitch is decoded from the scores
around the best bin. A pitch task keeps the chain's classification contract (logits [N, 360],
labels = nearest bin, class names = bin centres) and is scored with :func:`pitch_rpa`: the
raw pitch accuracy of the decoded pitch against the *true* frequency of each held-out sample.

Decoding (:func:`decode_logits`) is CREPE's local weighted average of the bin cents over the
argmax bin +- 4, weighted with **softmax** probabilities, not CREPE's per-bin sigmoids. Softmax
is invariant to a constant added to every logit, so it is defined for any model's scores:
students trained with the chain's softmax terms (``ce``, ``kd``) have logits whose offset means
nothing, and a sigmoid of them would saturate and decode to the bare argmax bin. On the CREPE
teachers it costs nothing: over 500 synthetic test frames, CREPE full decodes to 98.2% raw
pitch accuracy either way (mean error 29.6 cents with sigmoids, 29.8 with softmax), CREPE tiny
to 96.8% either way. torchcrepe's own default (Viterbi) decoder works on the softmax too.

Every function here is numpy-only; the bundle's ``example.py`` carries the same decoding.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edgedistill.errors import DataError
from edgedistill.teachers.audio import CENTS_OFFSET, CENTS_PER_BIN, PITCH_BINS

RPA_CENTS = 50.0
"""Raw pitch accuracy counts a frame within this many cents of the truth (MIREX convention)."""
DECODE_WINDOW = 4
"""Half-width in bins of the weighted average around the argmax (CREPE's)."""


def bin_cents(bins: np.ndarray | Sequence[float]) -> np.ndarray:
    """CREPE bin index (fractional allowed) -> cents above 10 Hz (float64)."""
    return CENTS_PER_BIN * np.asarray(bins, dtype=np.float64) + CENTS_OFFSET


def cents_to_hz(cents: np.ndarray) -> np.ndarray:
    """Cents above 10 Hz -> Hz: ``10 * 2 ** (cents / 1200)``."""
    return np.asarray(10.0 * 2.0 ** (np.asarray(cents, dtype=np.float64) / 1200.0))


def bin_hz(bins: np.ndarray | Sequence[float]) -> np.ndarray:
    """CREPE bin index (fractional allowed) -> its centre frequency in Hz (float64)."""
    return cents_to_hz(bin_cents(bins))


def hz_to_bin(hz: np.ndarray | Sequence[float]) -> np.ndarray:
    """Hz -> the nearest CREPE bin index (int64, same shape).

    Raises:
        DataError: for a frequency that is not finite and > 0, or outside the bin range
            (about 31.5-2011 Hz: half a bin beyond either end centre is allowed).
    """
    f = np.asarray(hz, dtype=np.float64)
    if not (np.isfinite(f).all() and (f > 0).all()):
        raise DataError("frequencies must be finite and > 0 Hz")
    bins = np.rint((1200.0 * np.log2(f / 10.0) - CENTS_OFFSET) / CENTS_PER_BIN).astype(np.int64)
    if bins.size and (bins.min() < 0 or bins.max() >= PITCH_BINS):
        low, high = bin_hz([-0.5, PITCH_BINS - 0.5])
        raise DataError(f"frequencies must lie in {low:.1f}-{high:.1f} Hz (CREPE's bins)")
    return bins


def bin_names() -> tuple[str, ...]:
    """The 360 class names: each bin's centre frequency with one decimal, e.g. "440.5Hz"
    (unique: neighbouring centres are at least 0.37 Hz apart)."""
    return tuple(f"{hz:.1f}Hz" for hz in bin_hz(np.arange(PITCH_BINS)))


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of [N, K] scores (float64)."""
    z = np.asarray(logits, dtype=np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return np.asarray(e / e.sum(axis=1, keepdims=True))


def decode_logits(logits: np.ndarray, window: int = DECODE_WINDOW) -> tuple[np.ndarray, np.ndarray]:
    """Pitch and confidence of [N, 360] bin scores: CREPE's local weighted average on softmax.

    The cents of the bins ``argmax - window`` ... ``argmax + window`` (clipped to the range)
    are averaged with their softmax probabilities as weights, then converted to Hz.

    Args:
        logits: [N, 360] scores of any model (only differences between bins matter).
        window: Half-width of the averaging window in bins.

    Returns:
        (pitch [N] in Hz, confidence [N]: the softmax probability inside the window, in
        [0, 1]: how much of the model's belief supports the reported pitch).
    """
    z = np.asarray(logits)
    if z.ndim != 2 or z.shape[1] != PITCH_BINS:
        raise DataError(f"pitch logits must be [N, {PITCH_BINS}], got {list(z.shape)}")
    p = softmax(z)
    peak = p.argmax(axis=1)
    index = peak[:, None] + np.arange(-window, window + 1)[None]
    valid = (index >= 0) & (index < PITCH_BINS)
    weights = np.take_along_axis(p, index.clip(0, PITCH_BINS - 1), axis=1) * valid
    mass = weights.sum(axis=1)
    cents = (weights * bin_cents(index)).sum(axis=1) / np.maximum(mass, 1e-300)
    return cents_to_hz(cents), mass


def cents_between(pred_hz: np.ndarray, true_hz: np.ndarray) -> np.ndarray:
    """|1200 log2(pred / true)|: absolute pitch error in cents, elementwise [N].

    Raises:
        DataError: for different lengths or a frequency that is not finite and > 0.
    """
    pred, true = np.asarray(pred_hz, dtype=np.float64), np.asarray(true_hz, dtype=np.float64)
    if pred.shape != true.shape or pred.ndim != 1 or not len(pred):
        raise DataError(f"need two equal, non-empty [N] arrays, got {pred.shape}, {true.shape}")
    if not (np.isfinite(pred).all() and np.isfinite(true).all()):
        raise DataError("frequencies must be finite")
    if (pred <= 0).any() or (true <= 0).any():
        raise DataError("frequencies must be > 0 Hz")
    return np.asarray(np.abs(1200.0 * np.log2(pred / true)))


def raw_pitch_accuracy(pred_hz: np.ndarray, true_hz: np.ndarray, cents: float = RPA_CENTS) -> float:
    """Raw pitch accuracy in %: share of frames whose pitch is within ``cents`` of the truth.

    Args:
        pred_hz, true_hz: [N] estimated and true frequencies in Hz (every frame voiced).
        cents: Tolerance (50 cents = a quarter tone, the MIREX convention).
    """
    return float((cents_between(pred_hz, true_hz) <= cents).mean() * 100.0)


def cents_error(pred_hz: np.ndarray, true_hz: np.ndarray) -> float:
    """Mean absolute pitch error in cents over [N] frames (octave errors count 1200)."""
    return float(cents_between(pred_hz, true_hz).mean())


def true_frequencies(labels: np.ndarray, values: np.ndarray | None) -> np.ndarray:
    """The truth a pitch metric scores against: ``values`` (exact f0 in Hz) when known, else
    the centre frequency of each label's bin."""
    if values is not None:
        return np.asarray(values, dtype=np.float64)
    return bin_hz(np.asarray(labels))


def pitch_rpa(logits: np.ndarray, labels: np.ndarray, values: np.ndarray | None = None) -> float:
    """The ``pitch_rpa`` task metric: :func:`raw_pitch_accuracy` (50 cents) of the decoded
    [N, 360] ``logits`` against ``values`` (true f0 in Hz), or the labels' bin centres."""
    pred, _ = decode_logits(logits)
    return raw_pitch_accuracy(pred, true_frequencies(labels, values))


def decoding_contract() -> dict[str, object]:
    """How an app turns the [N, 360] logits into Hz, as written into a bundle's manifest."""
    return {
        "bins": PITCH_BINS,
        "cents_per_bin": CENTS_PER_BIN,
        "cents_offset": CENTS_OFFSET,
        "decode_window": DECODE_WINDOW,
        "rule": "p = softmax(logits); k = argmax(p); cents = sum_j p[j] * (cents_offset + "
        "cents_per_bin * j) / sum_j p[j] over j = k - decode_window .. k + decode_window "
        "inside 0..bins-1; hz = 10 * 2 ** (cents / 1200); confidence = sum_j p[j]",
    }

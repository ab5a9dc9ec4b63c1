"""Voiced speech frames from espeak-ng, labelled by nobody: extra training data for pitch.

The synthetic tones of :mod:`edgedistill.data.pitch_synth` have an exact f0 but nothing of
speech's formants, breathiness and fast pitch glides. This module speaks fixed sentences with
espeak-ng (Debian ``espeak-ng``, formant synthesis, deterministic for one version), resamples
them to 16 kHz, cuts CREPE frames every 40 ms, and keeps the frames where the CREPE full
teacher is confident (peak sigmoid activation >= ``min_confidence``): voiced speech whose
pitch the teacher knows. Their true f0 is unknown (espeak does not report it), so they enter
the *training* split as unlabelled samples; the teacher's soft labels teach them.

Which frames are kept is a function of (count, seed, confidence threshold, espeak-ng version,
teacher weights); the result is cached as ``.npy`` next to the run's other caches.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tempfile
import wave
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from edgedistill.artifacts import atomic_write_bytes, sha256_json
from edgedistill.errors import DataError, EdgeDistillError, MissingDependencyError
from edgedistill.teachers.audio import SAMPLE_RATE, frame_audio

SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "How much wood would a woodchuck chuck if a woodchuck could chuck wood?",
    "We were away a year ago, when the rain came early.",
    "Why are you all alone in the middle of the morning?",
    "My mother and my brother, they are nowhere near the river.",
    "Eleven owls were loud in the evening, over the meadow.",
    "Really? I knew you would remember my name.",
    "Only the lonely know the way I feel tonight.",
    "Anna, a woman in yellow, will arrive on Monday.",
    "Row, row, row your boat, gently down the stream.",
)
VOICES = ("en-us", "en-us+f3", "en-us+m3", "en-us+f5", "en-us+klatt", "en-gb-x-rp+f2", "en-029")
HOP = 640  # 40 ms at 16 kHz between candidate frames (more utterances per frame drawn)
OVERSAMPLE = 1.5  # confident frames found per frame drawn
MIN_LEVEL_DB = -35.0  # candidate frames are at most this far below the utterance's loudest
GENERATOR_VERSION = 2
_INSTALL = "apt-get install espeak-ng"

Scorer = Callable[[np.ndarray], np.ndarray]
"""frames [N, 1024] float32 -> peak teacher confidence [N] in [0, 1]."""


class MissingEspeakError(MissingDependencyError):
    """espeak-ng is not installed."""

    def __init__(self) -> None:
        EdgeDistillError.__init__(
            self, f"speech frames for pitch need the espeak-ng program: {_INSTALL}"
        )
        self.package, self.extra = "espeak-ng", ""


def espeak_version() -> str:
    """espeak-ng's ``--version`` line (part of every cache key)."""
    if shutil.which("espeak-ng") is None:
        raise MissingEspeakError()
    done = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True, check=False)
    return done.stdout.strip().split("  Data at")[0]


def speak(text: str, voice: str, pitch: int, wpm: int) -> np.ndarray:
    """espeak-ng speaking ``text``: mono float32 [T] in [-1, 1] at 16 kHz.

    Args:
        text: What to say. voice: An espeak-ng voice (``-v``). pitch: 0..99 (``-p``).
        wpm: Words per minute (``-s``).
    """
    from scipy.signal import resample_poly

    if shutil.which("espeak-ng") is None:
        raise MissingEspeakError()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "speech.wav"
        args = ["espeak-ng", "-v", voice, "-p", str(pitch), "-s", str(wpm), "-w", str(path), text]
        done = subprocess.run(args, capture_output=True, text=True, check=False)
        if done.returncode != 0 or not path.is_file():
            raise DataError(f"{' '.join(args)} failed: {done.stderr.strip()[:200]}")
        with wave.open(str(path), "rb") as wav:
            rate, width = wav.getframerate(), wav.getsampwidth()
            data = wav.readframes(wav.getnframes())
    if width != 2:
        raise DataError(f"espeak-ng wrote {8 * width}-bit audio; expected 16-bit PCM")
    samples = np.frombuffer(data, dtype="<i2").astype(np.float64) / 32768.0
    g = np.gcd(rate, SAMPLE_RATE)
    return np.asarray(resample_poly(samples, SAMPLE_RATE // g, rate // g), dtype=np.float32)


def candidate_frames(audio: np.ndarray) -> np.ndarray:
    """Frames [N, 1024] every 40 ms whose RMS is within 35 dB of the loudest frame's."""
    frames = frame_audio(audio, hop_length=HOP).numpy()
    rms = np.sqrt((frames.astype(np.float64) ** 2).mean(axis=1))
    keep = rms >= rms.max() * 10 ** (MIN_LEVEL_DB / 20) if len(rms) else rms > 0
    return frames[keep]


def _utterances(
    seed: int, sentences: Sequence[str], voices: Sequence[str]
) -> list[tuple[str, str, int, int]]:
    """Every (sentence, voice, pitch, wpm), in a seeded order, with a seeded pitch and speed."""
    rng = np.random.default_rng([seed, 2])
    plan = [(s, v) for v in voices for s in sentences]
    order = rng.permutation(len(plan))
    return [
        (*plan[i], int(rng.integers(15, 85)), int(rng.integers(130, 190))) for i in order.tolist()
    ]


def speech_frames(
    count: int,
    seed: int,
    confidence: Scorer,
    *,
    min_confidence: float = 0.85,
    teacher_key: str = "",
    cache_dir: Path | None = None,
    sentences: Sequence[str] = SENTENCES,
    voices: Sequence[str] = VOICES,
) -> np.ndarray:
    """``count`` voiced espeak-ng frames the teacher is confident about: float32 [count, 1024].

    Utterances are spoken in a seeded order until 1.5 times ``count`` confident frames are
    found (or every utterance is used); ``count`` of them are then drawn with the same seed.
    The teacher scores every candidate frame, so the oversampling is what it costs.

    Args:
        count: Frames wanted (0 gives an empty [0, 1024] array without running espeak-ng).
        seed: Seeds the utterance order, pitches, speeds and the final draw.
        confidence: The teacher's peak activation of each frame (CREPE full's sigmoid).
        min_confidence: Frames below it are dropped (unvoiced, noisy or uncertain).
        teacher_key: Identifies the teacher (its weights sha256) in the cache key.
        cache_dir: Where to keep the result (``pitch-speech-<key>.npy``); None: no cache.
        sentences, voices: What is said, by which espeak-ng voices (e.g. held-out ones for an
            evaluation set).

    Raises:
        MissingEspeakError: espeak-ng is not installed.
        DataError: fewer than ``count`` confident frames exist in all the utterances.
    """
    if count <= 0:
        return np.zeros((0, 1024), dtype=np.float32)
    key = sha256_json(
        {
            "count": count,
            "seed": seed,
            "min_confidence": min_confidence,
            "espeak": espeak_version(),
            "teacher": teacher_key,
            "sentences": list(sentences),
            "voices": list(voices),
            "version": GENERATOR_VERSION,
        }
    )[:16]
    cached = None if cache_dir is None else Path(cache_dir) / f"pitch-speech-{key}.npy"
    if cached is not None and cached.is_file():
        return np.load(cached, allow_pickle=False)
    found: list[np.ndarray] = []
    total = 0
    for text, voice, pitch, wpm in _utterances(seed, sentences, voices):
        frames = candidate_frames(speak(text, voice, pitch, wpm))
        kept = frames[np.asarray(confidence(frames)) >= min_confidence]
        found.append(kept)
        total += len(kept)
        if total >= OVERSAMPLE * count:
            break
    pool = np.concatenate(found) if found else np.zeros((0, 1024), dtype=np.float32)
    if len(pool) < count:
        raise DataError(
            f"speech_frames: only {len(pool)} espeak-ng frames reach confidence "
            f"{min_confidence}; ask for fewer or lower the threshold"
        )
    pick = np.sort(np.random.default_rng([seed, 3]).choice(len(pool), count, replace=False))
    frames = np.ascontiguousarray(pool[pick], dtype=np.float32)
    if cached is not None:
        buffer = io.BytesIO()
        np.save(buffer, frames, allow_pickle=False)
        cached.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(cached, buffer.getvalue())
    return frames

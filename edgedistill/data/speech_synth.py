"""A deterministic, offline keyword-spotting set synthesised with espeak-ng and flite. SYNTHETIC.

Speech Commands (Warden 2018, "Speech Commands: A Dataset for Limited-Vocabulary Speech
Recognition", arXiv:1804.03209) does not install offline, so this module speaks its words with
the text-to-speech programs Debian ships, as Lin et al. 2020 ("Training Keyword Spotters with
Limited and Synthesized Speech Data", arXiv:2002.01322) do with larger synthesisers. A
"speaker" is one voice spec: ``espeak:<language>[+<variant>]`` (``espeak-ng --voices=en``,
``espeak-ng --voices=variant``) or ``flite:<voice>`` (``flite -lv``). Speakers are split into
train and test disjointly; each says every keyword ``renditions`` times plus some other words
(class ``_unknown_``), and ``_silence_`` clips hold background noise only, as in Speech
Commands.

Per clip, a random speed and pitch go to the synthesiser; its output is resampled to
``sample_rate_hz`` (``scipy.signal.resample_poly``), trimmed of leading and trailing silence,
normalised to a 0.9 peak, scaled by a random gain, placed at a random offset in a
``clip_s`` clip and mixed with white, pink or brown noise at a random SNR (measured against
the speech segment), then written as 16-bit mono PCM WAV. Every draw comes from an RNG seeded
by (seed, speaker, class, word, index), so the files do not depend on the order (or the
threads) they are made in; espeak-ng 1.51 and flite 2.2 give byte-identical output for the
same arguments, so a call gives byte-identical WAV files on one machine and tool version.
The programs are driven by :mod:`edgedistill.data.speech_tts`.

Layout (the ``audio_folder`` source reads it)::

    out/train/<class>/<speaker>_<word>_<i>.wav     out/test/<class>/...
    out/speakers.json                              written last: settings, split, tool versions
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import wave
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from edgedistill.artifacts import sha256_json
from edgedistill.data.speech_tts import (
    SPEAKER_SPEC,
    Speaker,
    check_speakers,
    split_speakers,
    synthesize,
    tool_versions,
)
from edgedistill.errors import DataError

GENERATOR_VERSION = 1
KEYWORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
UNKNOWN_WORDS = (
    "bed", "bird", "cat", "dog", "happy", "house", "marvin", "sheila", "tree", "wow",
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
)  # fmt: skip
UNKNOWN, SILENCE = "_unknown_", "_silence_"
DEFAULT_SPEAKERS = (
    *(f"espeak:en-us{v}" for v in ("", "+f3", "+m3", "+klatt", "+f5", "+croak", "+f2")),
    "espeak:en-us-nyc+m7", "espeak:en-us-nyc+f1",
    *(f"espeak:en{v}" for v in ("", "+f4", "+m5", "+klatt3", "+m1")),  # en: gmw/en
    "espeak:en-gb-x-rp", "espeak:en-gb-x-rp+f2", "espeak:en-gb-scotland",
    "espeak:en-gb-scotland+m2", "espeak:en-gb-x-gbclan+f3", "espeak:en-gb-x-gbcwmd+m4",
    "espeak:en-029", "espeak:en-029+f4",
    "flite:kal16", "flite:awb", "flite:rms", "flite:slt",
)  # fmt: skip
NOISE_COLOURS = ("white", "pink", "brown")
_WORD = re.compile(r"[a-z][a-z']{0,31}")
_RANGES = {  # setting: (lowest low, highest high)
    "snr_db": (-20.0, 100.0),
    "gain_db": (-60.0, 0.0),
    "silence_dbfs": (-96.0, -6.0),
    "speed_wpm": (80.0, 450.0),
    "pitch_factor": (0.5, 2.0),
}


Range = tuple[float, float]


class SynthSettings(BaseModel):
    """Everything that decides the synthesised files (all of it goes into :meth:`key`).

    A bad value raises pydantic's ``ValidationError`` naming the field (a recipe's ``data``
    section turns it into a one-line ``RecipeError``).

    Attributes:
        keywords: The keyword classes, in label order (lowercase words).
        unknown_words: Other words, spoken into class ``_unknown_`` (none: no such class).
        speakers: Voice specs, ``espeak:<language>[+<variant>]`` or ``flite:<voice>``.
        test_speaker_fraction: Share of the speakers held out for test (per engine).
        renditions: Clips per (speaker, keyword).
        unknown_per_speaker: ``_unknown_`` clips per speaker (None: ``renditions``).
        silence_per_speaker: ``_silence_`` clips per speaker (None: ``renditions``; 0: none).
        snr_db: (low, high) speech-to-noise ratio in dB.
        gain_db: (low, high) gain applied to speech normalised to a 0.9 peak.
        silence_dbfs: (low, high) RMS level (dB full scale) of ``_silence_`` clips.
        speed_wpm: (low, high) speaking rate (espeak ``-s``; flite stretch = 175 / wpm).
        pitch_factor: (low, high) pitch relative to the voice's own (espeak ``-p`` about
            ``50 + 100 * log2(factor)``; flite ``int_f0_target_mean``).
        sample_rate_hz: Rate of the written clips.
        clip_s: Clip length in seconds (a whole number of samples).
        seed: Root seed of every draw.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    keywords: tuple[str, ...] = Field(default=KEYWORDS, min_length=1)
    unknown_words: tuple[str, ...] = UNKNOWN_WORDS
    speakers: tuple[str, ...] = Field(default=DEFAULT_SPEAKERS, min_length=2)
    test_speaker_fraction: float = Field(default=0.25, gt=0, lt=1)
    renditions: int = Field(default=8, ge=1, le=10_000)
    unknown_per_speaker: int | None = Field(default=None, ge=0, le=10_000)
    silence_per_speaker: int | None = Field(default=None, ge=0, le=10_000)
    snr_db: Range = (5.0, 30.0)
    gain_db: Range = (-12.0, 0.0)
    silence_dbfs: Range = (-60.0, -30.0)
    speed_wpm: Range = (130.0, 210.0)
    pitch_factor: Range = (0.8, 1.25)
    sample_rate_hz: int = Field(default=16000, ge=8000, le=48000)
    clip_s: float = Field(default=1.0, ge=0.5, le=10)
    seed: int = 0

    @field_validator("keywords", "unknown_words")
    @classmethod
    def _words(cls, words: tuple[str, ...]) -> tuple[str, ...]:
        bad = [w for w in words if not _WORD.fullmatch(w)]
        if bad:
            raise ValueError(f"{bad} are not lowercase words (letters and ', at most 32)")
        if len(set(words)) != len(words):
            raise ValueError("names a word twice")
        return words

    @field_validator("speakers")
    @classmethod
    def _speakers(cls, specs: tuple[str, ...]) -> tuple[str, ...]:
        bad = [s for s in specs if not SPEAKER_SPEC.fullmatch(s)]
        if bad:
            raise ValueError(f"{bad}: use 'espeak:<language>[+<variant>]' or 'flite:<voice>'")
        if len({Speaker.parse(s).name for s in specs}) != len(specs):
            raise ValueError("names a speaker twice")
        return specs

    @field_validator(*_RANGES)
    @classmethod
    def _range(cls, pair: Range, info: ValidationInfo) -> Range:
        least, most = _RANGES[str(info.field_name)]
        if pair[0] > pair[1]:
            raise ValueError(f"low {pair[0]:g} is above high {pair[1]:g}")
        if not least <= pair[0] <= pair[1] <= most:
            raise ValueError(f"need {least:g} <= low <= high <= {most:g}")
        return pair

    @model_validator(mode="after")
    def _together(self) -> SynthSettings:
        both = [w for w in self.unknown_words if w in self.keywords]
        if both:
            raise ValueError(f"unknown_words {both} are keywords too; a word is one or the other")
        length = self.clip_s * self.sample_rate_hz
        if abs(length - round(length)) > 1e-6:
            raise ValueError(f"clip_s {self.clip_s} is not a whole number of samples")
        if len(self.classes) < 2:
            raise ValueError("keywords: 1 keyword without _unknown_ or _silence_ is 1 class")
        return self

    @property
    def unknown_count(self) -> int:
        n = self.renditions if self.unknown_per_speaker is None else self.unknown_per_speaker
        return n if self.unknown_words else 0

    @property
    def silence_count(self) -> int:
        return self.renditions if self.silence_per_speaker is None else self.silence_per_speaker

    @property
    def classes(self) -> tuple[str, ...]:
        """Label order: the keywords, then ``_unknown_`` and ``_silence_`` when they have clips."""
        extra = (UNKNOWN,) * bool(self.unknown_count) + (SILENCE,) * bool(self.silence_count)
        return self.keywords + extra

    @property
    def total_clips(self) -> int:
        per_speaker = len(self.keywords) * self.renditions + self.unknown_count + self.silence_count
        return len(self.speakers) * per_speaker

    def key(self) -> str:
        """A short hash of the generator version and every setting."""
        return sha256_json({"generator": GENERATOR_VERSION, "settings": self.as_dict()})[:20]

    def as_dict(self) -> dict[str, Any]:
        """The settings alone (a subclass's own fields left out), JSON-ready."""
        return {name: getattr(self, name) for name in SynthSettings.model_fields}


@dataclass(frozen=True)
class SynthesizedSet:
    """A complete set on disk. ``speakers`` are all speaker names; a speaker's index there is
    its group id; ``created`` is False when the folder was already complete."""

    root: Path
    classes: tuple[str, ...]
    speakers: tuple[str, ...]
    test_speakers: tuple[str, ...]
    created: bool


@dataclass(frozen=True)
class _Clip:
    split: str
    label: str
    speaker: Speaker
    word: str
    index: int

    def path(self, root: Path) -> Path:
        return root / self.split / self.label / f"{self.speaker.name}_{self.word}_{self.index}.wav"


def _rng(settings: SynthSettings, *parts: object) -> np.random.Generator:
    digest = sha256_json([settings.seed, *parts])
    return np.random.default_rng([int(digest[i : i + 8], 16) for i in range(0, 32, 8)])


def _clips(settings: SynthSettings, test: tuple[str, ...]) -> list[_Clip]:
    clips = []
    words = settings.unknown_words
    for spec in settings.speakers:
        speaker, split = Speaker.parse(spec), "test" if spec in test else "train"
        for word in settings.keywords:
            clips += [_Clip(split, word, speaker, word, i) for i in range(settings.renditions)]
        offset = int(_rng(settings, spec, UNKNOWN).integers(len(words))) if words else 0
        for i in range(settings.unknown_count):
            clips.append(_Clip(split, UNKNOWN, speaker, words[(offset + i) % len(words)], i))
        clips += [
            _Clip(split, SILENCE, speaker, "silence", i) for i in range(settings.silence_count)
        ]
    return clips


def trim_silence(samples: np.ndarray, rate: int, floor_db: float = -40.0) -> np.ndarray:
    """``samples`` without the leading and trailing 10-ms frames quieter than ``floor_db``
    below the loudest frame (one quiet frame is kept at each end)."""
    hop = max(rate // 100, 1)
    n = len(samples) // hop
    if n == 0:
        return samples[:0]
    frames = samples[: n * hop].astype(np.float64).reshape(n, hop)
    rms = np.sqrt((frames**2).mean(axis=1))
    loud = np.flatnonzero(rms > max(rms.max() * 10 ** (floor_db / 20), 1e-4))
    if len(loud) == 0:
        return samples[:0]
    return samples[max(loud[0] - 1, 0) * hop : min(loud[-1] + 2, n) * hop]


def coloured_noise(n: int, colour: str, rng: np.random.Generator) -> np.ndarray:
    """Unit-RMS white, pink (1/f power) or brown (1/f^2 power) noise of ``n`` samples; the
    coloured ones without a DC offset."""
    noise = rng.standard_normal(n)
    if colour != "white" and n > 1:
        spectrum = np.fft.rfft(noise)
        freq = np.fft.rfftfreq(n)
        spectrum[1:] *= freq[1:] ** (-0.5 if colour == "pink" else -1.0)
        spectrum[0] = 0.0
        noise = np.fft.irfft(spectrum, n)
    return noise / max(float(np.sqrt((noise**2).mean())), 1e-12)


def write_wav16(path: Path, samples: np.ndarray, rate: int) -> None:
    """Write samples in [-1, 1] as 16-bit mono PCM (clipped, rounded)."""
    ints = np.clip(np.round(np.asarray(samples, dtype=np.float64) * 32768), -32768, 32767)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(ints.astype("<i2").tobytes())


def _make_clip(clip: _Clip, settings: SynthSettings, root: Path, tmp: Path) -> None:
    from edgedistill.tasks.sources.audio_folder import read_wav, resample

    rng = _rng(settings, clip.speaker.spec, clip.label, clip.word, clip.index)
    rate, length = settings.sample_rate_hz, round(settings.clip_s * settings.sample_rate_hz)
    colour = NOISE_COLOURS[int(rng.integers(len(NOISE_COLOURS)))]
    if clip.label == SILENCE:
        level = 10 ** (rng.uniform(*settings.silence_dbfs) / 20)
        write_wav16(clip.path(root), level * coloured_noise(length, colour, rng), rate)
        return
    wpm, factor = rng.uniform(*settings.speed_wpm), rng.uniform(*settings.pitch_factor)
    name = f"{clip.split}-{clip.label}-{clip.speaker.name}-{clip.word}-{clip.index}.wav"
    wav = synthesize(clip.speaker, clip.word, tmp / name, wpm, factor)
    samples, source_rate = read_wav(wav)
    wav.unlink()
    speech = trim_silence(resample(samples, source_rate, rate).astype(np.float64), rate)
    if len(speech) == 0:
        raise DataError(f"{clip.speaker.spec} said nothing audible for {clip.word!r}")
    if len(speech) > length:  # a very slow rendition: keep the middle, fade its ends
        start = (len(speech) - length) // 2
        speech = speech[start : start + length] * np.minimum(
            1.0, np.minimum(np.arange(length), np.arange(length)[::-1]) / (0.01 * rate)
        )
    speech *= 0.9 / np.abs(speech).max() * 10 ** (rng.uniform(*settings.gain_db) / 20)
    noise_rms = np.sqrt((speech**2).mean()) / 10 ** (rng.uniform(*settings.snr_db) / 20)
    offset = int(rng.integers(length - len(speech) + 1))
    mix = noise_rms * coloured_noise(length, colour, rng)
    mix[offset : offset + len(speech)] += speech
    write_wav16(clip.path(root), np.clip(mix, -1.0, 1.0), rate)


def _manifest(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def existing_set(settings: SynthSettings, out: Path) -> SynthesizedSet | None:
    """The set in ``out`` when it is complete and was made with ``settings``, else None."""
    manifest = _manifest(Path(out) / "speakers.json")
    if manifest is None or manifest.get("key") != settings.key():
        return None
    speakers = manifest["speakers"]
    return SynthesizedSet(
        root=Path(out),
        classes=tuple(manifest["classes"]),
        speakers=tuple(s["name"] for s in speakers),
        test_speakers=tuple(s["name"] for s in speakers if s["split"] == "test"),
        created=False,
    )


def synthesize_keyword_set(
    settings: SynthSettings,
    out: Path,
    *,
    workers: int = 3,
    on_item: Callable[[int], None] | None = None,
) -> SynthesizedSet:
    """Write the set for ``settings`` to ``out`` unless ``out`` already holds it.

    The files are made in a temporary sibling folder with ``speakers.json`` written last, then
    the folder is renamed to ``out``; so ``out`` exists only when complete, and a call on a
    complete folder with the same settings only reads ``speakers.json``.

    Args:
        settings: What to synthesise.
        out: The folder (created; its parent must be writable).
        workers: Threads running synthesiser calls; the files do not depend on it.
        on_item: Called with 1 after each clip (progress bars).

    Raises:
        MissingProgramError: when espeak-ng or flite is needed but not installed.
        DataError: when ``out`` holds something else, a voice is not installed, or a
            synthesiser call fails.
    """
    out = Path(out)
    done = existing_set(settings, out)
    if done is not None:
        return done
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{out}: holds something else than this set; delete it or pick another")
    if workers < 1:
        raise DataError(f"workers must be >= 1, got {workers}")
    speakers = [Speaker.parse(s) for s in settings.speakers]
    versions = tool_versions({s.engine for s in speakers})
    test = split_speakers(settings.speakers, settings.test_speaker_fraction, settings.seed)
    clips = _clips(settings, test)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        for folder in {c.path(staging).parent for c in clips}:
            folder.mkdir(parents=True, exist_ok=True)
        scratch = staging / ".synth"  # the synthesisers' raw output, removed below
        scratch.mkdir()
        words = " ".join(settings.keywords + settings.unknown_words)
        check_speakers(settings.speakers, words, scratch, workers)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            jobs = [pool.submit(_make_clip, c, settings, staging, scratch) for c in clips]
            try:
                for job in as_completed(jobs):
                    job.result()  # re-raise a failed clip's error here
                    if on_item is not None:
                        on_item(1)
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
        shutil.rmtree(scratch)
        counts = Counter((c.split, c.label) for c in clips)
        manifest = {
            "generator": "edgedistill.data.speech_synth",
            "version": GENERATOR_VERSION,
            "key": settings.key(),
            "classes": list(settings.classes),
            "speakers": [
                {"name": s.name, "spec": s.spec, "split": "test" if s.spec in test else "train"}
                for s in speakers
            ],
            "counts": {
                split: {k: counts[split, k] for k in settings.classes}
                for split in ("train", "test")
            },
            "tools": versions,
            "settings": settings.as_dict(),
        }
        (staging / "speakers.json").write_text(json.dumps(manifest, indent=1) + "\n")
        try:
            if out.is_dir():
                out.rmdir()  # an empty folder: replace it
            os.rename(staging, out)
        except OSError:  # another process finished first: use its set when it is this one
            done = existing_set(settings, out)
            if done is None:
                raise DataError(f"{out}: could not move the new set into place") from None
            return done
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    made = existing_set(settings, out)
    assert made is not None  # its speakers.json was just written
    return replace(made, created=True)

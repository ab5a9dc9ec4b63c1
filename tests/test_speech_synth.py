"""The synthesised keyword set (espeak-ng + flite) and the ``speech-keywords`` source."""

from __future__ import annotations

import json
import shutil
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.signal  # noqa: F401  (imported once here: ~2 s on a slow machine, not a test's cost)

from edgedistill.data import speech_synth, speech_tts
from edgedistill.data.speech_synth import (
    DEFAULT_SPEAKERS,
    SILENCE,
    UNKNOWN,
    SynthSettings,
    existing_set,
    split_speakers,
    synthesize_keyword_set,
)
from edgedistill.data.speech_tts import MissingProgramError
from edgedistill.errors import DataError, MissingDependencyError, RecipeError
from edgedistill.tasks.sources import build_task, parse_data_section
from edgedistill.tasks.sources.speech_keywords import SpeechKeywordsConfig

needs_tts = pytest.mark.skipif(
    shutil.which("espeak-ng") is None or shutil.which("flite") is None,
    reason="needs apt-get install espeak-ng flite",
)

TINY: dict[str, Any] = {
    "keywords": ("yes", "no"),
    "unknown_words": ("bed", "cat"),
    "speakers": ("espeak:en-us", "espeak:en+f3", "flite:slt"),
    "renditions": 1,
    "unknown_per_speaker": 1,
    "silence_per_speaker": 1,
}
CLASSES = ("yes", "no", UNKNOWN, SILENCE)


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _read(path: Path) -> tuple[np.ndarray, tuple[int, int, int]]:
    with wave.open(str(path), "rb") as wav:
        params = (wav.getnchannels(), wav.getsampwidth(), wav.getframerate())
        data = wav.readframes(wav.getnframes())
    return np.frombuffer(data, dtype="<i2").astype(np.float64) / 32768, params


def _dbfs(x: np.ndarray) -> float:
    return float(20 * np.log10(np.sqrt(np.mean(x**2))))


@needs_tts
def test_same_settings_give_byte_identical_files_whatever_the_threads(tmp_path: Path) -> None:
    settings = SynthSettings(**TINY)
    ticks: list[int] = []
    made = synthesize_keyword_set(settings, tmp_path / "a", workers=1, on_item=ticks.append)
    synthesize_keyword_set(settings, tmp_path / "b", workers=3)
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert made.created and made.classes == CLASSES
    assert sum(ticks) == settings.total_clips == 12 == sum(k.endswith(".wav") for k in a)
    assert a == b
    other = synthesize_keyword_set(SynthSettings(**TINY, seed=1), tmp_path / "c")
    assert _files(other.root) != a


@needs_tts
def test_speakers_are_disjoint_and_every_class_has_clips(tmp_path: Path) -> None:
    made = synthesize_keyword_set(SynthSettings(**TINY), tmp_path / "set")
    manifest = json.loads((made.root / "speakers.json").read_text())
    assert set(manifest["tools"]) == {"espeak-ng", "flite"}
    assert manifest["settings"]["keywords"] == ["yes", "no"]
    speakers_of = {}
    for split in ("train", "test"):
        assert sorted(p.name for p in (made.root / split).iterdir()) == sorted(CLASSES)
        for label in CLASSES:
            files = sorted((made.root / split / label).glob("*.wav"))
            assert files, f"{split}/{label} is empty"
            assert manifest["counts"][split][label] == len(files)
        speakers_of[split] = {p.name.split("_")[0] for p in (made.root / split).rglob("*.wav")}
    assert speakers_of["train"].isdisjoint(speakers_of["test"])
    assert speakers_of["test"] == set(made.test_speakers) and len(made.test_speakers) == 1
    assert speakers_of["train"] | speakers_of["test"] == set(made.speakers)


@needs_tts
def test_clips_are_one_second_16k_mono_pcm16_at_the_expected_levels(tmp_path: Path) -> None:
    settings = SynthSettings(**{**TINY, "renditions": 2, "silence_per_speaker": 3})
    made = synthesize_keyword_set(settings, tmp_path / "set")
    for path in sorted(made.root.rglob("*.wav")):
        x, params = _read(path)
        assert params == (1, 2, 16000) and len(x) == 16000, path
        label = path.parent.name
        if label == SILENCE:  # noise only, at the drawn level (16-bit rounding aside)
            assert -60.5 <= _dbfs(x) <= -29.5, path
            continue
        # speech normalised to a 0.9 peak, then -12..0 dB gain; noise 5..30 dB below it
        assert 0.2 <= np.abs(x).max() <= 1.0, path
        assert -42 <= _dbfs(x) <= -3, path
        frames = np.sqrt(np.mean(x[: 16000 // 160 * 160].reshape(-1, 160) ** 2, axis=1))
        assert frames.max() / frames.min() > 3, f"{path}: no speech over the noise floor"


@needs_tts
def test_complete_folder_is_reused_and_a_crash_leaves_no_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = SynthSettings(**TINY)
    out = tmp_path / "set"
    synthesize_keyword_set(settings, out)
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    again = synthesize_keyword_set(settings, out)
    assert not again.created and {p: p.stat().st_mtime_ns for p in out.rglob("*")} == stamps
    assert existing_set(settings, out) == again
    assert existing_set(SynthSettings(**TINY, seed=5), out) is None
    with pytest.raises(DataError, match="holds something else"):
        synthesize_keyword_set(SynthSettings(**TINY, seed=5), out)

    real = speech_synth.synthesize
    calls: list[int] = []

    def crash_on_the_fifth(*args: Any) -> Path:
        calls.append(1)
        if len(calls) == 5:
            raise DataError("synthesiser crashed")
        return real(*args)

    monkeypatch.setattr(speech_synth, "synthesize", crash_on_the_fifth)
    with pytest.raises(DataError, match="crashed"):
        synthesize_keyword_set(settings, tmp_path / "crashed", workers=1)
    assert list(tmp_path.iterdir()) == [out]  # no folder, no staging left behind


def test_missing_program_is_a_one_line_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(speech_tts.shutil, "which", lambda name: None)
    with pytest.raises(MissingDependencyError) as info:
        synthesize_keyword_set(SynthSettings(**TINY), tmp_path / "set")
    assert isinstance(info.value, MissingProgramError) and info.value.exit_code == 4
    message = str(info.value)
    assert "\n" not in message and "espeak-ng" in message
    assert "apt-get install espeak-ng flite" in message
    assert not (tmp_path / "set").exists()


@needs_tts
def test_unknown_voice_and_an_ignored_variant_are_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="espeak-ng has no voice 'en-xx'"):
        synthesize_keyword_set(
            SynthSettings(**{**TINY, "speakers": ("espeak:en-xx", "flite:slt")}), tmp_path / "a"
        )
    with pytest.raises(DataError, match="flite has no voice 'nosuch'"):
        synthesize_keyword_set(
            SynthSettings(**{**TINY, "speakers": ("espeak:en", "flite:nosuch")}), tmp_path / "b"
        )
    # espeak-ng 1.51 ignores a variant after "en-gb": the two would be one voice in both splits
    same = {**TINY, "speakers": ("espeak:en-gb", "espeak:en-gb+f4", "flite:slt")}
    with pytest.raises(DataError, match="sounds exactly like"):
        synthesize_keyword_set(SynthSettings(**same), tmp_path / "c")
    assert sorted(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"unknown_words": ["up", "bed"], "keywords": ["up", "down"]}, "unknown_words"),
        ({"keywords": []}, "data.keywords"),
        ({"keywords": ["Yes"]}, "data.keywords"),
        ({"snr_db": [30, 5]}, "data.snr_db"),
        ({"gain_db": [-6, 3]}, "data.gain_db"),
        ({"speakers": ["espeak:en-us"]}, "data.speakers"),
        ({"speakers": ["en-us", "flite:slt"]}, "data.speakers"),
        ({"speakers": ["flite:slt", "flite:slt"]}, "data.speakers"),
        ({"renditions": 0}, "data.renditions"),
        ({"test_speaker_fraction": 1.0}, "data.test_speaker_fraction"),
        ({"clip_s": 0.99999}, "clip_s"),
    ],
)
def test_bad_settings_are_one_line_errors_naming_the_field(
    change: dict[str, Any], field: str
) -> None:
    raw = {"source": "speech-keywords", **TINY, **change}
    with pytest.raises(RecipeError) as info:
        parse_data_section(raw, base_dir=None, source="recipe.yaml")
    assert field in str(info.value) and "\n" not in str(info.value)


def test_default_speakers_split_per_engine_and_seeded() -> None:
    test = split_speakers(DEFAULT_SPEAKERS, 0.25, seed=0)
    assert len(DEFAULT_SPEAKERS) == 26 and len(test) == 6
    assert sum(s.startswith("flite:") for s in test) == 1
    assert test == split_speakers(DEFAULT_SPEAKERS, 0.25, seed=0)
    assert test != split_speakers(DEFAULT_SPEAKERS, 0.25, seed=1)
    assert len(split_speakers(("espeak:en", "flite:slt"), 0.9, seed=0)) == 1  # never all


@needs_tts
def test_source_builds_a_speaker_grouped_task(tmp_path: Path) -> None:
    raw = {"source": "speech-keywords", **TINY, "renditions": 2, "workers": 2}
    cfg = parse_data_section(raw, base_dir=tmp_path, source="recipe.yaml")
    assert isinstance(cfg, SpeechKeywordsConfig)
    task = build_task(cfg, cache_dir=tmp_path / "cache", seed=3)
    assert task.labels == CLASSES and task.name == "speech-keywords"
    assert task.input.modality == "audio" and task.input.shape == (16000,)
    # 2 train speakers x (2 + 2 renditions of the keywords, 1 unknown, 1 silence); 1 test speaker
    assert task.x_train.shape == (12, 16000) and task.x_test.shape == (6, 16000)
    assert np.bincount(task.y_train).tolist() == [4, 4, 2, 2]
    assert np.bincount(task.y_test).tolist() == [2, 2, 1, 1]
    assert task.groups_train is not None and task.groups_test is not None
    assert set(task.groups_train.tolist()).isdisjoint(task.groups_test.tolist())
    assert len(set(task.groups_train.tolist())) == 2 and len(set(task.groups_test.tolist())) == 1
    folders = list((tmp_path / "cache").iterdir())
    assert [f.name for f in folders] == [f"speech-keywords-{cfg.key()}"]
    again = build_task(cfg, cache_dir=tmp_path / "cache", seed=3)
    assert again.fingerprint == task.fingerprint
    mine = parse_data_section({**raw, "folder": "kws"}, base_dir=tmp_path, source="recipe.yaml")
    assert build_task(mine, cache_dir=tmp_path / "cache", seed=3).fingerprint == task.fingerprint
    assert (tmp_path / "kws" / "speakers.json").is_file()  # relative to the recipe's folder

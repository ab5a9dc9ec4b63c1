"""``speech-keywords``: a Speech-Commands-style keyword set synthesised offline. SYNTHETIC.

The clips are spoken by espeak-ng and flite voices (:mod:`edgedistill.data.speech_synth`),
written once to a folder in the ``audio_folder`` layout and read back by that source. Train
and test speakers are disjoint, and each clip's group is its speaker, so the split is
speaker-disjoint like Speech Commands' (Warden 2018, arXiv:1804.03209). Class order: the
keywords as given, then ``_unknown_`` and ``_silence_``.

The set depends only on this section (its own ``seed``, default 0, not the recipe's), so every
run of a recipe trains on the same clips; it is cached in
``<cache>/speech-keywords-<hash of the settings>`` unless ``folder`` names another place.
Needs ``apt-get install espeak-ng flite`` (only the engines the speakers use).

Example recipe section::

    data:
      source: speech-keywords
      renditions: 8                 # clips per (speaker, keyword)
      keywords: [yes, no, up, down, left, right, on, off, stop, go]
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
from pydantic import Field, ValidationInfo, field_validator

from edgedistill.data.speech_synth import SynthSettings, existing_set, synthesize_keyword_set
from edgedistill.errors import DataError
from edgedistill.schema import resolve_path
from edgedistill.tasks.sources._common import class_files
from edgedistill.tasks.sources.audio_folder import AudioFolderConfig, load_audio_folder
from edgedistill.tasks.sources.base import SourceConfig, SourceContext, register_source
from edgedistill.tasks.task import Task


class SpeechKeywordsConfig(SourceConfig, SynthSettings):
    """The ``data`` section: every :class:`SynthSettings` field, plus where the set goes.

    Attributes:
        folder: Where the synthesised set is written (default: a folder in the cache named
            by a hash of the settings). It is created only when complete.
        workers: Synthesiser threads; the files do not depend on it.
    """

    source: str = "speech-keywords"
    folder: Path | None = Field(default=None, description="where the synthesised WAVs go")
    workers: int = Field(default=3, ge=1, le=16)

    @field_validator("folder")
    @classmethod
    def _folder(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return None if value is None else resolve_path(value, info)  # relative to the recipe


def speech_keywords_folder(cfg: SpeechKeywordsConfig, cache_dir: Path) -> Path:
    """The folder the set of ``cfg`` is written to."""
    return cfg.folder or Path(cache_dir) / f"speech-keywords-{cfg.key()}"


def _speaker_groups(
    root: Path, classes: tuple[str, ...], speakers: tuple[str, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """[N] / [M] speaker indices of the training and test clips, in ``audio_folder``'s order."""
    _, train, test = class_files(root, (".wav",), classes, "WAV files")
    index = {name: i for i, name in enumerate(speakers)}

    def groups(files: list[tuple[Path, int]]) -> np.ndarray:
        try:
            return np.array([index[path.name.split("_", 1)[0]] for path, _ in files], np.int64)
        except KeyError as exc:
            raise DataError(f"{root}: a clip of unknown speaker {exc}; delete the folder") from None

    return groups(train), groups(test or [])


@register_source("speech-keywords", SpeechKeywordsConfig)
def load_speech_keywords(cfg: SpeechKeywordsConfig, context: SourceContext) -> Task:
    """Synthesise the set unless its folder is complete, then read it as an audio folder."""
    from rich.console import Console

    from edgedistill.progress import progress_bar

    folder = speech_keywords_folder(cfg, context.cache_dir)
    made = existing_set(cfg, folder)
    if made is None:
        console = Console(stderr=True)
        with progress_bar(console, "speech-keywords", cfg.total_clips) as advance:
            made = synthesize_keyword_set(cfg, folder, workers=cfg.workers, on_item=advance)
        console.print(f"speech-keywords: synthesised {cfg.total_clips} clips into {folder}")
    audio = AudioFolderConfig(
        name=cfg.name or "speech-keywords",
        path=folder,
        sample_rate_hz=cfg.sample_rate_hz,
        clip_s=cfg.clip_s,
        labels=made.classes,
    )
    task = load_audio_folder(audio, context)
    groups_train, groups_test = _speaker_groups(folder, made.classes, made.speakers)
    return replace(
        task,
        groups_train=groups_train,
        groups_test=groups_test,
        source=f"espeak-ng/flite synthesis, generator settings {cfg.key()} ({folder})",
    )

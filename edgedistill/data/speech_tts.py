"""The text-to-speech programs behind :mod:`edgedistill.data.speech_synth`: espeak-ng and flite.

A speaker is a voice spec, ``espeak:<language>[+<variant>]`` (``espeak-ng --voices=en`` lists
the languages, ``espeak-ng --voices=variant`` the variants) or ``flite:<voice>`` (``flite -lv``:
kal, kal16, awb, rms, slt). Neither program complains about a voice it does not know (it falls
back to its default), so voices are checked against those lists first, and espeak-ng 1.51
ignores a variant after some language names (``en-gb+f4`` sounds exactly like ``en-gb``; use
``en+f4``), so :func:`check_speakers` also refuses two speakers that sound the same. Both
programs give byte-identical WAV files for the same arguments (checked for espeak-ng 1.51 and
flite 2.2, including the klatt, croak and whisper variants).
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgedistill.errors import DataError, EdgeDistillError, MissingDependencyError

PROGRAMS = {"espeak": "espeak-ng", "flite": "flite"}
FLITE_F0_HZ = {"kal": 100.0, "kal16": 100.0, "awb": 120.0, "rms": 100.0, "slt": 170.0}
SPEAKER_SPEC = re.compile(r"(espeak|flite):[A-Za-z0-9][A-Za-z0-9+_-]{0,63}")
_INSTALL = "apt-get install espeak-ng flite"


class MissingProgramError(MissingDependencyError):
    """A synthesiser program (espeak-ng or flite) is not on the PATH."""

    def __init__(self, program: str) -> None:
        EdgeDistillError.__init__(
            self, f"synthesising the speech-keywords set needs '{program}': {_INSTALL}"
        )
        self.package, self.extra = program, ""


@dataclass(frozen=True)
class Speaker:
    """One synthetic speaker: an engine ("espeak" or "flite") and its voice (+variant)."""

    engine: str
    voice: str

    @classmethod
    def parse(cls, spec: str) -> Speaker:
        engine, voice = spec.split(":", 1)
        return cls(engine, voice)

    @property
    def spec(self) -> str:
        return f"{self.engine}:{self.voice}"

    @property
    def name(self) -> str:
        """File-name prefix: no ``_`` (it separates speaker, word and index), no ``+`` or ``:``."""
        return re.sub(r"[+:_]", "-", self.spec)


def split_speakers(specs: Sequence[str], fraction: float, seed: int) -> tuple[str, ...]:
    """The test speakers: ``round(fraction * n)`` (at least 1, never all) of ``specs``, shared
    out over the engines in proportion (largest remainder) and drawn per engine with a seeded
    RNG, in ``specs`` order."""
    n_test = min(max(round(fraction * len(specs)), 1), len(specs) - 1)
    engines = sorted({Speaker.parse(s).engine for s in specs})
    members = {e: [s for s in specs if Speaker.parse(s).engine == e] for e in engines}
    share = {e: fraction * len(members[e]) for e in engines}
    quota = {e: math.floor(share[e]) for e in engines}
    order = sorted(engines, key=lambda e: (-(share[e] % 1), e))  # largest remainder first
    while sum(quota.values()) < n_test:
        engine = next(e for e in order if quota[e] < len(members[e]))
        quota[engine] += 1
        order.remove(engine)
        order.append(engine)
    rng = np.random.default_rng([seed, 7])
    chosen = {s for e in engines for s in rng.permutation(members[e])[: quota[e]].tolist()}
    return tuple(s for s in specs if s in chosen)


def tool_versions(engines: set[str]) -> dict[str, str]:
    """``program -> first line of --version`` for the engines' programs.

    Raises:
        MissingProgramError: naming the ``apt-get install`` command when one is not installed.
    """
    versions = {}
    for engine in sorted(engines):
        program = PROGRAMS[engine]
        if shutil.which(program) is None:
            raise MissingProgramError(program)
        out = subprocess.run([program, "--version"], capture_output=True, text=True, check=False)
        lines = [ln.strip() for ln in out.stdout.splitlines() if "version" in ln.lower()]
        versions[program] = (lines or [out.stdout.strip()])[0]
    return versions


def installed_voices(engine: str) -> set[str]:
    """Voice names the program accepts: espeak-ng languages and voice files (not MBROLA) and
    variants (``+<variant>``), or flite's built-in voices."""
    if engine == "flite":
        out = subprocess.run(["flite", "-lv"], capture_output=True, text=True, check=False)
        return set(out.stdout.split(":", 1)[-1].split())
    voices = set()
    for kind in ("", "=variant"):
        out = subprocess.run(
            ["espeak-ng", f"--voices{kind}"], capture_output=True, text=True, check=False
        )
        for cells in (row.split() for row in out.stdout.splitlines()[1:]):
            if len(cells) >= 5 and cells[4].startswith("!v/"):
                voices.add("+" + cells[4][3:])
            elif len(cells) >= 5 and not cells[4].startswith("mb/"):
                others = re.findall(r"\(([^\s()]+) \d+\)", " ".join(cells[5:]))
                voices.update((cells[1], cells[4], *others))
    return voices


def synthesize(speaker: Speaker, text: str, out: Path, wpm: float, pitch_factor: float) -> Path:
    """Speak ``text`` into the WAV file ``out`` (the synthesiser's own rate), at ``wpm`` words a
    minute and ``pitch_factor`` times the voice's pitch (see :class:`SynthSettings`)."""
    if speaker.engine == "espeak":
        pitch = min(max(round(50 + 100 * math.log2(pitch_factor)), 0), 99)
        args = ["espeak-ng", "-v", speaker.voice, "-s", str(round(wpm)), "-p", str(pitch)]
        args += ["-w", str(out), text]
    else:
        f0 = FLITE_F0_HZ.get(speaker.voice, 120.0) * pitch_factor
        args = ["flite", "-voice", speaker.voice, "--setf", f"duration_stretch={175 / wpm:.4f}"]
        args += ["--setf", f"int_f0_target_mean={f0:.2f}", "-t", text, "-o", str(out)]
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    if done.returncode != 0 or not out.is_file():
        raise DataError(f"{' '.join(args)} failed ({done.returncode}): {done.stderr.strip()[:200]}")
    return out


def check_speakers(specs: Sequence[str], text: str, scratch: Path, workers: int) -> None:
    """Every voice is installed, and no two speakers say the words identically (espeak-ng
    ignores some variants, e.g. ``en-gb+f4`` is ``en-gb``: one voice in both splits).

    Args:
        specs: Voice specs; text: what they say (e.g. every word of the set); scratch: a
            folder for the WAV files; workers: threads.

    Raises:
        DataError: naming the first voice that is not installed or sounds like another.
    """
    speakers = [Speaker.parse(s) for s in specs]
    known = {engine: installed_voices(engine) for engine in {s.engine for s in speakers}}
    for s in speakers:
        language, *variant = s.voice.split("+", 1) if s.engine == "espeak" else [s.voice]
        for part in (language, *("+" + v for v in variant)):
            if part not in known[s.engine]:
                raise DataError(f"speakers: {PROGRAMS[s.engine]} has no voice {part!r} ({s.spec})")
    with ThreadPoolExecutor(max_workers=workers) as pool:
        files = pool.map(lambda s: synthesize(s, text, scratch / f"{s.name}.wav", 175, 1), speakers)
        sounds = {s.spec: f.read_bytes() for s, f in zip(speakers, files, strict=True)}
    seen: dict[bytes, str] = {}
    for spec, sound in sounds.items():
        if sound in seen:
            raise DataError(f"speakers: {spec!r} sounds exactly like {seen[sound]!r}; drop one")
        seen[sound] = spec

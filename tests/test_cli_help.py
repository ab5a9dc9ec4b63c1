"""The command line follows its ecosystem: help with examples, flags shown as flags, a file
given to the wrong command names the right one, completion, and stable documented exit codes."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from typer.main import get_command
from typer.testing import CliRunner

from edgedistill.agent.errors import AgentError
from edgedistill.cli.app import _user_errors, app
from edgedistill.cli.help import EXAMPLES
from edgedistill.cli.inputs import file_kind
from edgedistill.errors import (
    DataError,
    EdgeDistillError,
    GateError,
    MissingDependencyError,
    RecipeError,
    StageError,
    UnsafeFileError,
)

ROOT = Path(__file__).resolve().parents[1]
WIDE = {"COLUMNS": "200", "TERM": "dumb", "NO_COLOR": "1"}


def _command_paths(command: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command and group below ``command``, as argument paths (``("device", "profile")``).

    Duck-typed on ``commands``: typer 0.29 vendors click, so its groups are no ``click.Group``.
    """
    paths = [prefix]
    for name, sub in (getattr(command, "commands", None) or {}).items():
        if not sub.hidden:
            paths += _command_paths(sub, (*prefix, name))
    return paths


COMMANDS = _command_paths(get_command(app))


def _help(path: tuple[str, ...]) -> str:
    result = CliRunner().invoke(app, [*path, "--help"], env=WIDE)
    assert result.exit_code == 0, result.output
    return result.output


def test_the_command_tree_is_complete() -> None:
    """The walk finds every command the other tests must cover (so they cannot pass vacuously)."""
    names = {" ".join(p) for p in COMMANDS}
    expected = {"run", "validate", "crossmodal", "doctor", "pretrain", "distill", "prune"}
    expected |= {"export", "quantize", "verify", "profile", "bundle", "report"}
    expected |= {"agent", "agent serve", "device", "device profile", "device environment"}
    assert expected <= names


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "edgedistill")
def test_every_help_has_examples_and_no_bool_metavar(path: tuple[str, ...]) -> None:
    text = _help(path)
    assert "Example" in text
    assert "<bool>" not in text and "BOOLEAN" not in text
    assert "Show this message and exit." in text  # the help of --help is still shown


@pytest.mark.parametrize("command", sorted(c for c in EXAMPLES if c))
def test_examples_name_files_that_exist(command: str) -> None:
    """Every example runs from a checkout: its recipe/target paths exist and its command does."""
    names = {" ".join(p) for p in COMMANDS}
    for _, line in EXAMPLES[command]:
        words = line.split()
        start = words.index("edgedistill")
        assert " ".join(words[start + 1 : start + 3]) in names or words[start + 1] in names
        for word in words:
            if word.startswith(("students/", "export/", "teachers/")):
                assert (ROOT / word).is_file(), f"{command}: {word} does not exist"


def test_flags_take_no_value_and_still_work(tmp_path: Path) -> None:
    """Hiding the type changed only the display: ``--force`` is a flag, ``--runs`` a number."""
    text = _help(("device", "profile"))
    row = next(line for line in text.splitlines() if "--debug" in line)
    assert "Show tracebacks." in row and "<" not in row
    assert "<int>" in next(line for line in text.splitlines() if "--runs " in line)
    result = CliRunner().invoke(app, ["validate", "--debug", str(tmp_path / "none.yaml")])
    assert result.exit_code != 0 and isinstance(result.exception, RecipeError)


def test_completion_is_offered_and_completes() -> None:
    text = _help(())
    assert "--install-completion" in text and "--show-completion" in text
    env = {"_EDGEDISTILL_COMPLETE": "complete_bash", "COMP_WORDS": "edgedistill dev"}
    result = CliRunner().invoke(app, [], env={**env, "COMP_CWORD": "1"}, prog_name="edgedistill")
    assert result.exit_code == 0 and result.output.split() == ["device"]
    env["COMP_WORDS"] = "edgedistill device "
    result = CliRunner().invoke(app, [], env={**env, "COMP_CWORD": "2"}, prog_name="edgedistill")
    assert sorted(result.output.split()) == ["environment", "profile"]


# ---- a file given to the wrong command -------------------------------------------------------


def _one_line_error(args: list[str]) -> str:
    result = CliRunner().invoke(app, args, env=WIDE)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["run", "export/desktop-cpu.yaml"], "target profile, not a recipe: pass it with --target"),
        (["validate", "export/edge-cpu-1thread.yaml"], "pass it with --target"),
        (["validate", "teachers/fashion_mnist_convnet.yaml"], "teacher card, not a recipe"),
        (["distill", "teachers/crepe_full.yaml"], "students/*.yaml"),  # a card with `data:`
        (
            ["validate", "students/fashion_mnist.yaml", "--target", "students/seglearn_watch.yaml"],
            "--target students/seglearn_watch.yaml: this is a recipe, not a target profile",
        ),
        (
            ["run", "students/fashion_mnist.yaml", "--target", "teachers/crepe_full.yaml"],
            "teacher card, not a target profile",
        ),
    ],
)
def test_wrong_yaml_names_the_right_place(args: list[str], expected: str) -> None:
    assert expected in _one_line_error(args)


def test_pretrain_without_a_pretrain_section(tmp_path: Path) -> None:
    out = tmp_path / "run"
    line = _one_line_error(["pretrain", "students/fashion_mnist.yaml", "--out", str(out)])
    assert "no pretrain section" in line
    assert "edgedistill distill students/fashion_mnist.yaml" in line
    assert not out.exists()  # refused before the run folder was made


def test_recipe_to_device_profile_says_profile_before_asking_for_a_token(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("EDGEDISTILL_AGENT_TOKEN", raising=False)
    line = _one_line_error(
        ["device", "profile", "students/fashion_mnist.yaml", "--device", "http://127.0.0.1:9"]
    )
    assert "edgedistill profile students/fashion_mnist.yaml --device URL" in line
    line = _one_line_error(
        ["device", "profile", "export/desktop-cpu.yaml", "--device", "http://127.0.0.1:9"]
    )
    assert "edgedistill profile RECIPE --target export/desktop-cpu.yaml" in line


def test_recipe_as_agent_state_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EDGEDISTILL_AGENT_TOKEN", raising=False)
    line = _one_line_error(["agent", "serve", "--state", "students/fashion_mnist.yaml"])
    assert "give a folder" in line and "edgedistill profile students/fashion_mnist.yaml" in line


def test_models_and_run_folders_are_not_recipes(tmp_path: Path) -> None:
    model = tmp_path / "model.onnx"
    model.write_bytes(b"\x08\x07")
    assert "edgedistill device profile" in _one_line_error(["run", str(model)])
    run = tmp_path / "run"
    (run / "export").mkdir(parents=True)
    (run / "export" / "manifest.json").write_text("{}")
    assert "run folder, not a recipe" in _one_line_error(["validate", str(run)])


def test_file_kind_of_every_shipped_yaml() -> None:
    """Every shipped recipe, target and card is recognised as what it is (none as another)."""
    kinds = {"students": "recipe", "export": "target", "teachers": "teacher"}
    for folder, kind in kinds.items():
        files = sorted((ROOT / folder).glob("*.yaml"))
        assert files, folder
        for path in files:
            assert file_kind(path) == kind, path


def test_unknown_yaml_keeps_the_schema_message(tmp_path: Path) -> None:
    """A YAML of no known kind goes on to the recipe parser's own error (no false hint)."""
    path = tmp_path / "odd.yaml"
    path.write_text(yaml.safe_dump({"name": "only-a-name"}))  # neither a recipe nor a target
    assert file_kind(path) == "other"
    assert "'data' is required" in _one_line_error(["validate", str(path)])


# ---- exit codes ----------------------------------------------------------------------------

EXIT_CODES: dict[type[BaseException], int] = {
    EdgeDistillError: 1,
    RecipeError: 2,
    DataError: 3,
    MissingDependencyError: 4,
    StageError: 5,
    GateError: 6,
    UnsafeFileError: 7,
    AgentError: 8,
}


def _raise(error: type[BaseException]) -> BaseException:
    if error is MissingDependencyError:
        return MissingDependencyError("onnx", "export", "export")
    return error("what to change")


@pytest.mark.parametrize("error", list(EXIT_CODES), ids=lambda e: e.__name__)
def test_exit_codes_are_stable(error: type[EdgeDistillError]) -> None:
    assert error.exit_code == EXIT_CODES[error]
    with pytest.raises(typer.Exit) as caught, _user_errors(debug=False):
        raise _raise(error)
    assert caught.value.exit_code == EXIT_CODES[error]


def test_interrupt_and_os_errors() -> None:
    with pytest.raises(typer.Exit) as caught, _user_errors(debug=False):
        raise KeyboardInterrupt
    assert caught.value.exit_code == 130
    with pytest.raises(typer.Exit) as caught, _user_errors(debug=False):
        raise PermissionError(13, "Permission denied", "runs/x")
    assert caught.value.exit_code == 1


def test_every_error_class_has_a_documented_code() -> None:
    """docs/cli.md's table lists each exit code with the class that raises it, as the code is."""
    text = (ROOT / "docs" / "cli.md").read_text()
    rows = dict(re.findall(r"^\|\s*(\d+)\s*\|\s*([^|]+?)\s*\|", text, flags=re.MULTILINE))
    for error, code in EXIT_CODES.items():
        assert error.__name__ in rows.get(str(code), ""), (code, error.__name__)
    assert {"0", "130"} <= set(rows)
    # A more specific error (CudaUnavailableError, ...) keeps its documented parent's code.
    import edgedistill.data.speech_tts  # noqa: F401  (defines one such subclass)

    for sub in _all_subclasses(EdgeDistillError):
        parent = next(c for c in sub.__mro__ if c in EXIT_CODES)
        assert sub.exit_code == EXIT_CODES[parent], f"{sub.__name__}: document its exit code"


def _all_subclasses(cls: type[EdgeDistillError]) -> set[type[EdgeDistillError]]:
    found: set[type[EdgeDistillError]] = set(cls.__subclasses__())
    for sub in list(found):
        found |= _all_subclasses(sub)
    return found

"""The error contract users see.

Every failure that a user can cause (a bad recipe, a missing file, a gate that did not pass)
raises a subclass of :class:`EdgeDistillError`. The CLI prints ``str(error)`` as one line and
exits with :attr:`EdgeDistillError.exit_code`; a traceback is shown only with ``--debug``.
"""

from __future__ import annotations


class EdgeDistillError(Exception):
    """Base class of every error edgedistill raises on purpose."""

    exit_code: int = 1


class RecipeError(EdgeDistillError):
    """The recipe is malformed: unknown key, wrong type, bad value or missing path."""

    exit_code = 2


class DataError(EdgeDistillError):
    """A dataset could not be found or read, or it is not what the recipe says."""

    exit_code = 3


class MissingDependencyError(EdgeDistillError):
    """An optional dependency (an extra) is needed but not installed.

    ``hint`` adds a direct install command (e.g. a ``--no-deps`` install) after the extra.
    """

    exit_code = 4

    def __init__(self, package: str, extra: str, purpose: str, hint: str | None = None) -> None:
        message = f"{purpose} needs the '{package}' package: pip install 'edgedistill[{extra}]'"
        super().__init__(f"{message} (or: {hint})" if hint else message)
        self.package = package
        self.extra = extra


class StageError(EdgeDistillError):
    """A pipeline stage could not run (missing upstream artifact, bad model, ...)."""

    exit_code = 5


class GateError(EdgeDistillError):
    """A verification gate failed: an export diverged from torch, or INT8 lost too much."""

    exit_code = 6


class UnsafeFileError(EdgeDistillError):
    """A file was refused for safety (pickle, external data escaping its folder, ...)."""

    exit_code = 7

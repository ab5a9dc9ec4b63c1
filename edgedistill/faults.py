"""Test-only fault injection: a run kills itself with SIGKILL at a named point.

The promise "an interrupted run resumes, and ends byte-identical to an uninterrupted one" is
only worth something if it is checked at the awkward moments: half-way through caching the
teacher's outputs, in the middle of an epoch, while a checkpoint is being written, between
two quantized models, between two bundle files. Killing a subprocess after a sleep hits such a
moment only by luck; instead the run kills itself, exactly there, when the environment says so::

    EDGEDISTILL_TEST_KILL_AT=<point>[:<n>] edgedistill run recipe.yaml --out RUN

The process sends itself SIGKILL (no ``finally``, no ``atexit``: the same as the OOM killer or
a pulled plug) the ``n``-th time it reaches ``point`` (the first time without ``:n``). Points
and what their index counts:

=================  ==========================================================================
point              where, and the index
=================  ==========================================================================
teacher_batch      teacher cache: after a batch of teacher outputs is computed, before the
                   cache file is written (index: batches computed by this process)
train_batch        trainer: after an optimiser step (index: the step within that training,
                   1-based across epochs, so a resumed run counts on from its checkpoint)
train_epoch        trainer: after epoch e's checkpoint is in place (index: e)
checkpoint_write   trainer: epoch e's checkpoint is fully written to its temporary file but
                   not yet renamed into place (index: e), a torn write
distill_batch      the ``distill`` stage's training, as ``train_batch``
prune_batch        the ``prune`` stage's recovery fine-tuning, as ``train_batch``
quantize_model     quantize stage: after one INT8 model is written (index: models written)
bundle_file        bundle writer: after one model file is copied in (index: files copied)
=================  ==========================================================================

With the variable unset (always, outside tests) :func:`maybe_die` returns after one
comparison with ``None``: the variable is read once, at import.
"""

from __future__ import annotations

import os
import signal

ENV_VAR = "EDGEDISTILL_TEST_KILL_AT"


def parse_kill_spec(text: str | None) -> tuple[str, int | None] | None:
    """``"point"`` / ``"point:n"`` -> ``(point, n)``; unset or empty -> None.

    Raises:
        ValueError: ``n`` is not a positive integer (a typo must not silently never fire).
    """
    if not text:
        return None
    point, sep, count = text.strip().rpartition(":")
    if not sep:
        return text.strip(), None
    if not count.isdigit() or int(count) < 1:
        raise ValueError(f"{ENV_VAR}={text!r}: expected <point>[:<n>] with n >= 1")
    return point, int(count)


_TARGET = parse_kill_spec(os.environ.get(ENV_VAR))
_reached: dict[str, int] = {}


def maybe_die(point: str, index: int | None = None) -> None:
    """SIGKILL this process if ``EDGEDISTILL_TEST_KILL_AT`` names this point (and index).

    Args:
        point: The name of the call site (see the module's table).
        index: Which occurrence this is, in the call site's own counting (a training step,
            an epoch). Omitted: how many times this process has reached ``point`` (1-based).
    """
    if _TARGET is None:
        return
    name, wanted = _TARGET
    if point != name:
        return
    if index is None:
        index = _reached[point] = _reached.get(point, 0) + 1
    if wanted is None or index == wanted:
        _kill_self()


def _kill_self() -> None:
    """SIGKILL: nothing after this line runs (no ``finally``, no ``atexit``, no flush)."""
    os.kill(os.getpid(), signal.SIGKILL)

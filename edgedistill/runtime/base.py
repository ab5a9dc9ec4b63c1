"""One Runner interface for every runtime (the Polygraphy pattern).

Latency measurement (:mod:`edgedistill.bench.latency`) and output comparison
(:mod:`edgedistill.runtime.compare`) are written once against this interface.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from types import TracebackType

import numpy as np

from edgedistill.errors import StageError

INPUT_DTYPES = (np.dtype(np.float32), np.dtype(np.int64))


class Runner(ABC):
    """Loads a model for one runtime and runs it on numpy inputs.

    Subclasses implement :meth:`_load` and :meth:`_infer`; :meth:`infer` checks the input.

    Args:
        name: Model name for messages.
        threads: Intra-op threads the runtime may use.
    """

    runtime: str = "base"
    #: What :meth:`timed_infer`'s number measures, recorded as ``timing`` next to the latency.
    device_clock: str = "cuda-events"

    def __init__(self, name: str, threads: int = 1) -> None:
        self.name = name
        self.threads = threads
        self.input_shape: tuple[int | None, ...] | None = None
        # float32 samples or int64 token ids; a runner that reads its model's input type
        # sets it in _load, others accept either.
        self.input_dtype: np.dtype | None = None
        self._loaded = False

    def load(self) -> Runner:
        """Prepare the model (idempotent)."""
        if not self._loaded:
            self._load()
            self._loaded = True
        return self

    def infer(self, x: np.ndarray) -> np.ndarray:
        """Run one batch [B, ...] (float32, or int64 token ids) -> outputs [B, K] float32."""
        return self._infer(self.check_input(x))

    def timed_infer(self, x: np.ndarray) -> tuple[np.ndarray, float | None]:
        """:meth:`infer` plus the device-side time of the call in ms, where the runtime has one.

        A GPU runner records CUDA events around its kernel launches (after the host-to-device
        copy, before the copy back) and returns that time; :func:`~edgedistill.bench.latency.
        measure_latency` then reports it instead of wall time. ``None`` (the default, every CPU
        runner) means "no device clock: use the wall time of the call".
        """
        return self.infer(x), None

    def check_input(self, x: np.ndarray) -> np.ndarray:
        """Load if needed, check dtype and shape of ``x``, and return it C-contiguous.

        Raises:
            StageError: dtype or shape not what the model takes.
        """
        if not self._loaded:
            self.load()
        x = np.asarray(x)
        allowed = (self.input_dtype,) if self.input_dtype is not None else INPUT_DTYPES
        if x.dtype not in allowed:
            raise StageError(
                f"{self.name} ({self.runtime}): input dtype {x.dtype}, expected "
                f"{' or '.join(str(np.dtype(d)) for d in allowed)}"
            )
        if self.input_shape is not None:
            expected = self.input_shape
            ok = len(x.shape) == len(expected) and all(
                e is None or e == s for e, s in zip(expected, x.shape, strict=True)
            )
            if not ok:
                shown = ["N" if e is None else e for e in expected]
                raise StageError(
                    f"{self.name} ({self.runtime}): input shape {list(x.shape)}, expected {shown}"
                )
        return np.ascontiguousarray(x)

    @abstractmethod
    def _load(self) -> None: ...

    @abstractmethod
    def _infer(self, x: np.ndarray) -> np.ndarray: ...

    def close(self) -> None:
        """Release the runtime's resources."""
        self._loaded = False

    def __enter__(self) -> Runner:
        return self.load()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

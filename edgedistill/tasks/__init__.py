"""The modality-neutral task at the centre of a run, and the data sources that build it."""

from edgedistill.tasks.task import UNLABELLED, InputSpec, Task

__all__ = ["UNLABELLED", "InputSpec", "Task"]

"""edgedistill: distill large frozen teachers into small students that run on edge devices.

The public API is curated here; everything else is internal and may change.

``edgedistill.run(recipe, out=...)``, ``edgedistill.validate(recipe)`` and one function per
stage (``edgedistill.api.distill``, ``edgedistill.api.export``, ...) mirror the command line
(:mod:`edgedistill.api`). The stage functions stay in ``edgedistill.api``: at the top level
``distill``, ``export`` and ``report`` are subpackages.
"""

__version__ = "0.1.0"

from edgedistill import api
from edgedistill.api import (
    ModelResult,
    Recommendation,
    RunResult,
    StageResult,
    Validation,
    run,
    validate,
)
from edgedistill.bench import environment, latency_summary, measure_latency, percentile
from edgedistill.compress import prune_channels, quantize_onnx_static
from edgedistill.config import Recipe, load_recipe
from edgedistill.data import ImageDataset, Normalization, load_idx_dataset
from edgedistill.data.paired import PairedWindows
from edgedistill.distill import KDLoss, TrainSettings, kd_loss, train_student
from edgedistill.distill.comodo import ComodoLoss, comodo_loss
from edgedistill.distill.layered import layered_sd_loss
from edgedistill.distill.objective import LossTermSpec
from edgedistill.distill.terms import TERMS, register_term
from edgedistill.errors import (
    DataError,
    EdgeDistillError,
    GateError,
    MissingDependencyError,
    RecipeError,
    StageError,
    UnsafeFileError,
)
from edgedistill.export import check_onnx_file, export_onnx, export_openvino
from edgedistill.metrics import agreement, count_macs, count_params, topk_accuracy
from edgedistill.pipeline.context import RunContext
from edgedistill.pipeline.run import STAGES, run_pipeline
from edgedistill.runtime import OnnxRuntimeRunner, OpenVinoRunner, Runner, TorchRunner
from edgedistill.students import STUDENTS, build_model
from edgedistill.students.multi_exit import MultiExitStudent
from edgedistill.tasks import InputSpec, Task
from edgedistill.tasks.sources import SOURCES, build_task, register_source
from edgedistill.teachers import FrozenTeacher, load_teacher

__all__ = [
    "SOURCES",
    "STAGES",
    "STUDENTS",
    "TERMS",
    "ComodoLoss",
    "DataError",
    "EdgeDistillError",
    "FrozenTeacher",
    "GateError",
    "ImageDataset",
    "InputSpec",
    "KDLoss",
    "LossTermSpec",
    "MissingDependencyError",
    "ModelResult",
    "MultiExitStudent",
    "Normalization",
    "OnnxRuntimeRunner",
    "OpenVinoRunner",
    "PairedWindows",
    "Recipe",
    "RecipeError",
    "Recommendation",
    "RunContext",
    "RunResult",
    "Runner",
    "StageError",
    "StageResult",
    "Task",
    "TorchRunner",
    "TrainSettings",
    "UnsafeFileError",
    "Validation",
    "__version__",
    "agreement",
    "api",
    "build_model",
    "build_task",
    "check_onnx_file",
    "comodo_loss",
    "count_macs",
    "count_params",
    "environment",
    "export_onnx",
    "export_openvino",
    "kd_loss",
    "latency_summary",
    "layered_sd_loss",
    "load_idx_dataset",
    "load_recipe",
    "load_teacher",
    "measure_latency",
    "percentile",
    "prune_channels",
    "quantize_onnx_static",
    "register_source",
    "register_term",
    "run",
    "run_pipeline",
    "topk_accuracy",
    "train_student",
    "validate",
]

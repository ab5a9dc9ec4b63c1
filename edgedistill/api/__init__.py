"""The Python API: the command line's commands as functions that return typed results.

``edgedistill.run(recipe, out=...)`` is ``edgedistill run RECIPE --out ...``, and each stage
function (:func:`distill`, :func:`prune`, ..., :func:`report`) is the stage command of the same
name: it runs the chain up to and including that stage, skipping stages whose inputs are
unchanged, into the same run folder the command line would use. :func:`validate` is
``edgedistill validate``. Nothing is printed unless ``progress=True``; failures raise the
project's errors (:mod:`edgedistill.errors`), whose ``exit_code`` is the one the command line
exits with.

Example::

    import edgedistill

    result = edgedistill.run("students/fashion_mnist_smoke.yaml", out="runs/smoke")
    print(result.accuracy["student-int8"], result.speedup("student-int8"))
"""

from edgedistill.api.results import (
    ModelResult,
    Recommendation,
    RunResult,
    StageResult,
    Validation,
)
from edgedistill.api.stages import (
    RecipeSource,
    StageOptions,
    bundle,
    distill,
    export,
    pretrain,
    profile,
    prune,
    quantize,
    report,
    run,
    validate,
    verify,
)

__all__ = [
    "ModelResult",
    "RecipeSource",
    "Recommendation",
    "RunResult",
    "StageOptions",
    "StageResult",
    "Validation",
    "bundle",
    "distill",
    "export",
    "pretrain",
    "profile",
    "prune",
    "quantize",
    "report",
    "run",
    "validate",
    "verify",
]

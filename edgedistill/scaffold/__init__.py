"""``edgedistill init``: from a data folder to a commented recipe.

:func:`inspect_data` finds the layout (images or WAV clips per class, IMU recordings with a
labels file, a text CSV) and reads it with the data sources' own readers; :func:`choose_teacher`
judges the offline teacher cards; :func:`propose` sizes a student for a target profile; and
:func:`render_recipe` writes the recipe as commented YAML that ``edgedistill validate`` accepts
and ``edgedistill run`` runs.
"""

from edgedistill.scaffold.detect import inspect_data
from edgedistill.scaffold.findings import Findings
from edgedistill.scaffold.propose import Proposal, Target, propose, recipe_name, resolve_target
from edgedistill.scaffold.render import describe, render_recipe
from edgedistill.scaffold.teachers import TeacherFit, choose_teacher, default_cards_dir

__all__ = [
    "Findings",
    "Proposal",
    "Target",
    "TeacherFit",
    "choose_teacher",
    "default_cards_dir",
    "describe",
    "inspect_data",
    "propose",
    "recipe_name",
    "render_recipe",
    "resolve_target",
]

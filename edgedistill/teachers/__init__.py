"""Teachers: frozen models, teacher cards and the output cache."""

from edgedistill.teachers.adapt import AdaptedTeacher, adapt_teacher
from edgedistill.teachers.base import FrozenTeacher, TeacherCard, load_teacher
from edgedistill.teachers.cache import cached_teacher_logits, teacher_cache_key

__all__ = [
    "AdaptedTeacher",
    "FrozenTeacher",
    "TeacherCard",
    "adapt_teacher",
    "cached_teacher_logits",
    "load_teacher",
    "teacher_cache_key",
]

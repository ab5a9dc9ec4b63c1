"""Student families. Importing this package registers every family."""

from edgedistill.students import audio as audio
from edgedistill.students import imu as imu
from edgedistill.students import pitch as pitch
from edgedistill.students import text as text
from edgedistill.students import timm_students as timm_students
from edgedistill.students import vision as vision
from edgedistill.students.base import STUDENTS, Student, build_model

__all__ = ["STUDENTS", "Student", "build_model"]

"""Data sources, each registered once by importing its module."""

from edgedistill.tasks.sources import audio_folder as audio_folder
from edgedistill.tasks.sources import idx as idx
from edgedistill.tasks.sources import image_folder as image_folder
from edgedistill.tasks.sources import imu_folder as imu_folder
from edgedistill.tasks.sources import packaged as packaged
from edgedistill.tasks.sources import paired as paired
from edgedistill.tasks.sources import pitch_synth as pitch_synth
from edgedistill.tasks.sources import speech_keywords as speech_keywords
from edgedistill.tasks.sources import text_csv as text_csv
from edgedistill.tasks.sources.base import (
    SOURCES,
    SourceConfig,
    SourceContext,
    build_task,
    parse_data_section,
    register_source,
)

__all__ = [
    "SOURCES",
    "SourceConfig",
    "SourceContext",
    "build_task",
    "parse_data_section",
    "register_source",
]

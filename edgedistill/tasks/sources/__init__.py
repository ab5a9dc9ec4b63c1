"""Data sources, each registered once by importing its module."""

from edgedistill.tasks.sources import idx as idx
from edgedistill.tasks.sources import packaged as packaged
from edgedistill.tasks.sources import paired as paired
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

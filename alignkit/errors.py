"""Errors that mean the user's input is wrong (reported in one line, exit code 2), as opposed to bugs."""
from __future__ import annotations


def _collect() -> tuple[type[BaseException], ...]:
    from alignkit.config import ConfigError
    from alignkit.data.chat import TemplateError
    from alignkit.data.errors import DataError, RecordError
    from alignkit.models.loading import ModelLoadError

    return (ConfigError, DataError, RecordError, TemplateError, ModelLoadError, FileNotFoundError, ValueError)


USER_ERRORS = _collect()

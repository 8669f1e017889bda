"""Errors that mean the user's input is wrong (reported in one line, exit code 2), as opposed to bugs."""
from __future__ import annotations

import os
import traceback

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def _collect() -> tuple[type[BaseException], ...]:
    from alignkit.config import ConfigError
    from alignkit.data.chat import TemplateError
    from alignkit.data.errors import DataError, RecordError
    from alignkit.models.loading import ModelLoadError
    from alignkit.paths import PathError

    return (ConfigError, DataError, RecordError, TemplateError, ModelLoadError, PathError, FileNotFoundError)


USER_ERRORS = _collect()


def is_user_error(error: BaseException) -> bool:
    """True for the project's input errors, and for a ValueError that alignkit's own checks raised.

    alignkit validates arguments with ValueError and a message naming what is wrong. A ValueError
    raised inside torch, transformers or another library is not one of those checks: it is shown
    with its traceback, since it more likely means a bug than a bad argument.
    """
    if isinstance(error, USER_ERRORS):
        return True
    if not isinstance(error, ValueError):
        return False
    frames = traceback.extract_tb(error.__traceback__)
    return bool(frames) and os.path.abspath(frames[-1].filename).startswith(_PACKAGE_DIR + os.sep)

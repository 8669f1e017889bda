"""Deterministic, offline language identification backed by langdetect's bundled profiles.

langdetect samples n-grams at random, so the same text can get different answers on different
runs. We build a private detector factory with a fixed seed instead of touching langdetect's
module-level one, so other users of langdetect in the same process are unaffected.
"""
from __future__ import annotations

import functools
import os

_SEED = 0


@functools.cache
def _factory():
    try:
        from langdetect.detector_factory import PROFILES_DIRECTORY, DetectorFactory
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "IFEval language checks need langdetect: pip install langdetect==1.0.9"
        ) from error
    factory = DetectorFactory()
    factory.load_profile(PROFILES_DIRECTORY)
    factory.set_seed(_SEED)
    return factory


@functools.cache
def supported_languages() -> frozenset[str]:
    """Language codes the detector can return, plus bare "zh" for either Chinese script."""
    from langdetect.detector_factory import PROFILES_DIRECTORY

    codes = set(os.listdir(PROFILES_DIRECTORY))
    codes |= {code.split("-")[0] for code in codes}
    return frozenset(codes)


def detect_language(text: str) -> str | None:
    """ISO 639-1 code of the most likely language, or None when the text has no letters to judge."""
    from langdetect.lang_detect_exception import LangDetectException

    detector = _factory().create()
    detector.append(text)
    try:
        return detector.detect()
    except LangDetectException:
        return None


def is_language(text: str, code: str) -> bool:
    """True when `text` is detected as `code`; "zh" accepts both "zh-cn" and "zh-tw".

    Text that cannot be identified counts as not being in the language: a check that cannot be
    verified must not pass.
    """
    detected = detect_language(text)
    if detected is None:
        return False
    return detected == code or detected.split("-")[0] == code

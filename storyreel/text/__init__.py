"""Text encoders: the shared interface, all-MiniLM-L6-v2 (default) and a weight-free hashing encoder.

``get_text_encoder(name, **kw)`` builds one by name from ``TEXT_ENCODERS``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from storyreel.text.base import CacheInfo, TextEncoder, TextStates
from storyreel.text.hashing import HashingEncoder, tokenize_words
from storyreel.text.minilm import MINILM_PACKAGE, MiniLMEncoder, minilm_model_path

__all__ = [
    "TEXT_ENCODERS",
    "MINILM_PACKAGE",
    "CacheInfo",
    "HashingEncoder",
    "MiniLMEncoder",
    "TextEncoder",
    "TextStates",
    "get_text_encoder",
    "minilm_model_path",
    "tokenize_words",
]

TEXT_ENCODERS: dict[str, Callable[..., TextEncoder]] = {
    "minilm": MiniLMEncoder,
    "hashing": HashingEncoder,
}


def get_text_encoder(name: str, **kwargs: Any) -> TextEncoder:
    """Build the text encoder registered as ``name`` (``"minilm"`` or ``"hashing"``) with ``kwargs``."""
    key = name.strip().lower() if isinstance(name, str) else name
    if key not in TEXT_ENCODERS:
        raise ValueError(f"unknown text encoder {name!r}; choose one of {sorted(TEXT_ENCODERS)}")
    return TEXT_ENCODERS[key](**kwargs)

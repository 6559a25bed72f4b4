"""The one error type of message conversion, and how skips are counted by reason."""

from __future__ import annotations

import re


class ConversionError(ValueError):
    """A message whose content cannot be converted; the text says why."""


def reason(text: str) -> str:
    """``text`` with its numbers masked (``#``): skips and warnings of one kind
    count under one reason, not one per value."""
    return re.sub(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?", "#", text)

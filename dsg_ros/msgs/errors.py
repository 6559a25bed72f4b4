"""The one error type of message conversion."""

from __future__ import annotations


class ConversionError(ValueError):
    """A message whose content cannot be converted; the text says why."""

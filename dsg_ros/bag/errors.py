"""The one error type of bag reading and writing."""

from __future__ import annotations


class BagError(ValueError):
    """A bag that cannot be read or written as asked; the text names the file."""

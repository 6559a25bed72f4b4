"""The generated parameter reference matches the code it documents."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_parameter_reference_is_up_to_date():
    """``docs/parameters.md`` is generated from the config dataclasses: a
    field added, renamed or re-defaulted without regenerating it fails here."""
    result = subprocess.run([sys.executable, str(REPO / "docs" / "parameters.py"), "--check"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr

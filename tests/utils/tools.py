"""System tools some tests drive (a browser, a server binary): a missing one fails the
test under CI, where it must be installed, and skips it elsewhere, with the same message."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest


def require_tool(name: str, install_hint: str, path: str | Path | None = None) -> str:
    """The path of tool ``name`` (``path`` if given, else found on ``PATH``). When it is
    missing: ``pytest.fail`` under ``CI=true``, ``pytest.skip`` otherwise, both saying what
    is missing and how to install it."""
    found = (str(path) if Path(path).is_file() else None) if path else shutil.which(name)
    if found:
        return found
    where = str(path) if path else f"{name} on PATH"
    message = f"{where} is missing: {install_hint}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)

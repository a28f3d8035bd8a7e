"""Settings read from the environment, in one place."""

from __future__ import annotations

import os
from pathlib import Path

_REPO_GUESS = Path(__file__).resolve().parents[2]  # src/medweave/settings.py -> the repository


def shared_data_dir() -> Path:
    """Where the real shared data sets live: ``$MEDWEAVE_DATA``, else ``../shared/data`` beside the repo."""
    env = os.environ.get("MEDWEAVE_DATA")
    if env:
        return Path(env)
    for candidate in (_REPO_GUESS.parent / "shared" / "data", Path.cwd().parent / "shared" / "data"):
        if candidate.is_dir():
            return candidate
    return _REPO_GUESS.parent / "shared" / "data"

"""Settings read from the environment, in one place."""

from __future__ import annotations

import ipaddress
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


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1): where a server may listen
    without further protection (``medweave serve`` needs a token elsewhere, ``medweave listen`` an
    allow-list of AE titles)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False

"""The DICOM PS3.15 Basic Application Level Confidentiality Profile, as the standard lists it.

The attribute table (PS3.15 Annex E, Table E.1-1, "Basic Prof." column) is not typed here: it is
read from the ``dicom-anonymizer`` package (Kitware's DicomAnonymizer, BSD licence), which ships the
table of each edition of the standard as Python lists of tags per action code. We use its newest
edition (``EDITION``). Only the module holding the table is loaded (by file, without importing the
package, whose ``__init__`` pulls in its command-line tool).

Action codes (PS3.15 E.1.1): ``X`` remove, ``Z`` replace with a zero-length (or dummy) value, ``D``
replace with a non-zero-length dummy value, ``U`` replace a UID by one that is consistent within the
set, and the combinations ``X/Z``, ``X/D``, ``Z/D``, ``X/Z/D``, ``X/Z/U*`` (the first unless the later
is needed for the object to stay valid). Attributes not in the table are kept by the basic profile;
private attributes are removed (``X``) unless a safe-private option keeps them.
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path
from types import ModuleType

EDITION = "dicomfields_2026c"  # DICOM 2026c, the newest table dicom-anonymizer 2.1 ships
_LISTS = {  # dicom-anonymizer's list name -> the action code of the standard
    "X_TAGS": "X", "Z_TAGS": "Z", "D_TAGS": "D", "U_TAGS": "U", "Z_D_TAGS": "Z/D", "X_Z_TAGS": "X/Z",
    "X_D_TAGS": "X/D", "X_Z_D_TAGS": "X/Z/D", "X_Z_U_STAR_TAGS": "X/Z/U*",
}


class ProfileUnavailable(RuntimeError):
    """The package that ships the profile table is missing or changed shape."""


def _load_table_module() -> ModuleType:
    spec = importlib.util.find_spec("dicomanonymizer")
    if spec is None or not spec.submodule_search_locations:
        raise ProfileUnavailable("the PS3.15 attribute table comes from the 'dicom-anonymizer' package, "
                                 "which is not installed (pip install dicom-anonymizer)")
    path = Path(list(spec.submodule_search_locations)[0]) / "dicom_anonymization_databases" / f"{EDITION}.py"
    if not path.is_file():
        raise ProfileUnavailable(f"dicom-anonymizer has no table {EDITION!r} ({path}); "
                                 "expected dicom-anonymizer >= 2.1")
    module_spec = importlib.util.spec_from_file_location(f"_medweave_ps315_{EDITION}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)  # plain lists of tuples: no imports, no side effects
    return module


@lru_cache(maxsize=1)
def basic_profile() -> tuple[dict[int, str], tuple[tuple[int, int, int, int, str], ...]]:
    """(action by tag, masked entries). A masked entry ``(group, element, group_mask, element_mask,
    action)`` covers the repeating groups (curves 50xx, overlays 60xx)."""
    module = _load_table_module()
    by_tag: dict[int, str] = {}
    masked: list[tuple[int, int, int, int, str]] = []
    for list_name, action in _LISTS.items():
        entries = getattr(module, list_name, None)
        if entries is None:
            raise ProfileUnavailable(f"dicom-anonymizer's table {EDITION} has no list {list_name}")
        for entry in entries:
            if len(entry) == 2:
                by_tag[(entry[0] << 16) | entry[1]] = action
            elif len(entry) == 4:
                masked.append((entry[0], entry[1], entry[2], entry[3], action))
            else:
                raise ProfileUnavailable(f"unexpected entry {entry!r} in {list_name}")
    if len(by_tag) < 500:
        raise ProfileUnavailable(f"the table {EDITION} lists only {len(by_tag)} attributes; expected > 500")
    return by_tag, tuple(masked)


def masked_action(tag: int) -> str | None:
    """The action for a tag in a repeating group (curve data, overlay data and comments), if any."""
    group, element = tag >> 16, tag & 0xFFFF
    for g, e, gmask, emask, action in basic_profile()[1]:
        if group & gmask == g & gmask and element & emask == e & emask:
            return action
    return None

"""The house rules of the layout, checked on the source: DICOM is read and written only in ldct_monai/dicom/."""

from __future__ import annotations

import re
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "ldct_monai"


def _code_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, line) of a module's code, without comments, docstrings and string-only lines."""
    out, in_doc = [], False
    for i, line in enumerate(path.read_text().splitlines(), 1):
        s = line.strip()
        if in_doc:
            in_doc = not (s.endswith('"""') or s.endswith("'''"))
            continue
        if s.startswith(('"""', "'''")):
            in_doc = not (len(s) > 3 and (s.endswith('"""') or s.endswith("'''")))
            continue
        if s.startswith("#") or not s:
            continue
        out.append((i, re.sub(r'"[^"]*"|\'[^\']*\'', '""', line.split("  #")[0])))
    return out


def test_dicom_is_read_and_written_only_in_the_dicom_layer():
    offenders = [
        f"{path.relative_to(PACKAGE.parent)}:{i}: {line.strip()}"
        for path in sorted(PACKAGE.rglob("*.py")) if "dicom" not in path.relative_to(PACKAGE).parts
        for i, line in _code_lines(path) if re.search(r"\bdcmread\b|\.save_as\(", line)
    ]
    assert not offenders, "\n".join(offenders)

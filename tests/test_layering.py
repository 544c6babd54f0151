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


def _library_modules() -> list[str]:
    """Every module of the package except the command layer (ldct_monai.cli, ldct_monai.commands.*)."""
    mods = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        if parts[:2] == ("ldct_monai", "commands") or parts == ("ldct_monai", "cli"):
            continue
        mods.append(".".join(parts))
    return mods


def test_the_library_never_imports_the_command_layer():
    offenders = [
        f"{path.relative_to(PACKAGE.parent)}:{i}: {line.strip()}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.relative_to(PACKAGE).parts[0] != "commands" and path.name != "cli.py"
        for i, line in _code_lines(path) if re.search(r"\bldct_monai\.commands\b|from ldct_monai import commands", line)
    ]
    assert not offenders, "\n".join(offenders)
    # and importing every library module loads none of it
    import subprocess
    import sys

    code = ("import importlib, sys\n"
            f"for m in {_library_modules()!r}:\n"
            "    importlib.import_module(m)\n"
            "print(sorted(m for m in sys.modules if m == 'ldct_monai.cli' or m.startswith('ldct_monai.commands')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"

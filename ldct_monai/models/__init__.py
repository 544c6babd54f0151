"""Denoisers shipped inside the package (package data), used when ``--model`` is omitted.

Each model is a folder ``ldct_monai/models/<name>/`` in the format of :mod:`ldct_monai.modelio`
(``generator.pt`` + ``model.json``, the card) plus ``README.md`` (the card for people). The recipe that
produced it (config file, data sources, command) is in ``ldct_monai/models/recipes/``.
"""

from __future__ import annotations

from pathlib import Path

from ldct_monai.errors import InputError

BUILTIN = "ldct-denoiser-v1"  # the default model of denoise / evaluate and of train --init-generator builtin
MODELS_DIR = Path(__file__).parent


def builtin_model_dir(name: str = BUILTIN) -> Path:
    """Folder of a shipped model.

    Raises:
        InputError: no shipped model of that name (the names are listed by ``ldct-monai models``).
    """
    path = MODELS_DIR / name
    if not (path / "model.json").is_file():
        have = ", ".join(shipped_models()) or "none"
        raise InputError(f"no shipped model {name!r} in {MODELS_DIR} (shipped: {have}).")
    return path


def shipped_models() -> list[str]:
    """Names of the models shipped in the package."""
    return sorted(p.name for p in MODELS_DIR.iterdir() if (p / "model.json").is_file())

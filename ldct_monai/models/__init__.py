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


def resolve_model(spec: str | Path | None) -> Path:
    """What ``--model`` means: None or ``builtin`` -> the shipped default; a shipped model's name -> that model;
    anything else -> a path (a run folder or its ``model/`` folder)."""
    if spec is None or str(spec) == "builtin":
        return builtin_model_dir()
    if str(spec) in shipped_models():
        return builtin_model_dir(str(spec))
    return Path(spec)


def package_model(run_dir: Path, name: str, card: dict, readme: str) -> Path:
    """Copy a trained run's exported model into the package as shipped model ``name``.

    The weights are copied unchanged (their SHA-256 in the card stays valid); ``card`` fields (training
    data, intended use, limits, measured quality) are merged into ``model.json``; ``readme`` becomes
    ``README.md`` (the card for people).
    """
    import json
    import shutil

    from ldct_monai.modelio import CARD_NAME, find_model_dir

    src = find_model_dir(Path(run_dir))
    dst = MODELS_DIR / name
    dst.mkdir(exist_ok=True)
    base = json.loads((src / CARD_NAME).read_text())
    shutil.copyfile(src / base["weights"]["file"], dst / base["weights"]["file"])
    base.update(card, name=name)
    (dst / CARD_NAME).write_text(json.dumps(base, indent=2, sort_keys=True) + "\n")
    (dst / "README.md").write_text(readme)
    return dst

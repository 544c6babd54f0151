"""Denoisers shipped inside the package (package data), used when ``--model`` is omitted.

Each model is a MONAI bundle ``ldct_monai/models/<name>/`` (:mod:`ldct_monai.bundle`: ``configs/``,
``models/model.pt``, ``docs/README.md`` = the card for people, ``LICENSE``). The recipe that produced it
(config file, data sources, command) is in ``ldct_monai/models/recipes/``.
"""

from __future__ import annotations

from pathlib import Path

from ldct_monai.bundle import METADATA
from ldct_monai.errors import InputError

BUILTIN = "ldct-denoiser-v2"  # the default model of denoise / evaluate and of train --init-generator builtin
MODELS_DIR = Path(__file__).parent


def builtin_model_dir(name: str = BUILTIN) -> Path:
    """Folder of a shipped model.

    Raises:
        InputError: no shipped model of that name (the names are listed by ``ldct-monai models``).
    """
    path = MODELS_DIR / name
    if not (path / METADATA).is_file():
        have = ", ".join(shipped_models()) or "none"
        raise InputError(f"no shipped model {name!r} in {MODELS_DIR} (shipped: {have}).")
    return path


def shipped_models() -> list[str]:
    """Names of the models shipped in the package."""
    return sorted(p.name for p in MODELS_DIR.iterdir() if (p / METADATA).is_file())


def resolve_model(spec: str | Path | None) -> Path:
    """What ``--model`` means: None or ``builtin`` -> the shipped default; a shipped model's name -> that model;
    anything else -> a path (a bundle folder, a run folder holding ``model/``, a zip of a bundle, or a model
    folder from before bundles)."""
    if spec is None or str(spec) == "builtin":
        return builtin_model_dir()
    if str(spec) in shipped_models():
        return builtin_model_dir(str(spec))
    return Path(spec)


def package_model(
    run_dir: Path,
    name: str,
    card: dict,
    readme: str,
    *,
    version: str = "1.0.0",
    changelog: dict[str, str] | None = None,
    models_dir: Path | None = None,
) -> Path:
    """Copy a trained run's exported model into the package as the shipped bundle ``name``.

    The run's model is loaded first (so only a model that loads is shipped); its weights are copied byte
    for byte (their SHA-256 in the card stays valid); ``card`` fields (training data, intended use, limits,
    measured quality under ``quality``) are merged into the card and so into ``metadata.json``'s MONAI
    fields (``eval_metrics``, ``intended_use``, ``data_source``); ``readme`` becomes ``docs/README.md``.

    Args:
        run_dir: the run folder, its ``model/`` bundle (or an old model folder).
        name: the shipped model's name (its folder).
        card: card fields to add or replace.
        readme: the card for people (Markdown).
        version: the bundle version.
        changelog: version -> change (default: "first release").
        models_dir: where shipped models live (default: this package; tests use a temporary folder).

    Returns:
        The bundle folder.
    """
    from ldct_monai.io_utils import atomic_output_dir
    from ldct_monai.modelio import _read_model, write_bundle

    loaded, weights = _read_model(Path(run_dir), warn=False)
    merged = {k: v for k, v in loaded.card.items() if k not in ("format", "weights")}
    merged.update(card, name=name)
    versions = merged.get("versions") or None  # the versions it was trained with
    changelog = changelog or {version: f"first release of {name}"}
    dst = Path(models_dir or MODELS_DIR) / name
    with atomic_output_dir(dst, overwrite=True) as tmp:
        write_bundle(tmp, weights, merged, version=version, changelog=changelog, versions=versions, readme=readme)
    return dst

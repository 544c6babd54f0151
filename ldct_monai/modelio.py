"""Export and load models as MONAI bundles (``ldct_monai.bundle``); load and convert older model folders.

A model folder (``RUN_DIR/model/``, a shipped model) is a MONAI bundle::

    configs/metadata.json   MONAI metadata + our card under "ldct_monai" (architecture, HU window,
                            weights SHA-256, training config, manifest hash, step, versions, quality)
    configs/inference.json  network_def, HU window -> [-1, 1] and back, inferer, workflow (NIfTI)
    models/model.pt         the generator's state_dict
    docs/README.md, LICENSE

Loading never runs code from the bundle: the metadata is validated against the vendored MONAI schema,
the config is refused when it names code outside ``ldct_monai``, ``monai`` and ``torch``
(:mod:`ldct_monai.bundle.trust`), only ``network_def`` is instantiated (it must be our
``ResNetGenerator`` with literal arguments: what MONAI's ``ConfigParser`` would build from it), and the
weights are checked against the card's SHA-256 and read with ``torch.load(weights_only=True)``. A bundle
may also be given as a zip of one.

Folders written before bundles (``generator.pt`` + ``model.json``, card format 1) still load, with a
warning naming ``ldct-monai models convert OLD NEW`` (:func:`convert_model`), which makes a bundle of one
with the weights byte for byte unchanged.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import torch

from ldct_monai import __version__
from ldct_monai.bundle import CARD_FORMAT, CARD_KEY, INFERENCE, LICENSE, METADATA, README, WEIGHTS
from ldct_monai.bundle.files import RUN_MODEL_DIR, BundleFiles, find_bundle
from ldct_monai.config import HUWindow
from ldct_monai.errors import InputError
from ldct_monai.io_utils import atomic_write_bytes, atomic_write_text
from ldct_monai.networks import ResNetGenerator
from ldct_monai.runtime import package_versions

MODEL_DIRNAME = RUN_MODEL_DIR  # RUN_DIR/model
LEGACY_WEIGHTS = "generator.pt"  # the files of a pre-bundle model folder (card format 1)
LEGACY_CARD = "model.json"
WEIGHTS_NAME = LEGACY_WEIGHTS  # names kept for code written before bundles
CARD_NAME = LEGACY_CARD


@dataclass
class LoadedModel:
    """A generator ready for inference (eval mode, on CPU) and its card.

    Attributes:
        generator: the LD -> FD generator.
        card: our model card (``architecture``, ``hu_window``, ``step``, ``config``, ``manifest_hash`` ...).
        card_hash: first 16 hex digits of the SHA-256 of ``configs/metadata.json`` (``model.json`` for an
            old folder), quoted in derived DICOM; it covers the card and so the weights' SHA-256.
        path: the bundle folder, the zip, or the old model folder.
        metadata: the whole ``metadata.json`` (empty for an old folder).
    """

    generator: ResNetGenerator
    card: dict
    card_hash: str
    path: Path
    metadata: dict = field(default_factory=dict)

    @property
    def hu_window(self) -> HUWindow:
        return HUWindow(**self.card["hu_window"])

    @property
    def name(self) -> str:
        return str(self.card.get("name", "ldct-monai-cyclegan"))


# ------------------------------------------------------------------------------------------------ export
def _weights_bytes(generator: torch.nn.Module) -> bytes:
    state = {k: v.detach().cpu().contiguous() for k, v in generator.state_dict().items()}
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def write_bundle(
    out_dir: Path,
    weights: bytes,
    card: dict,
    *,
    version: str = "1.0.0",
    changelog: dict[str, str] | None = None,
    versions: dict[str, str] | None = None,
    readme: str | None = None,
) -> Path:
    """Write a bundle for ``card`` with the serialized state_dict ``weights``; return ``out_dir``.

    Each file is written atomically; ``metadata.json``, which holds the weights' SHA-256, comes last, so a
    crash mid-way leaves a folder that fails the checksum instead of a silently mixed model. Files of a
    pre-bundle model in ``out_dir`` (``generator.pt``, ``model.json``) are removed at the end.

    Args:
        out_dir: the bundle folder.
        weights: ``torch.save`` of the generator's state_dict (written unchanged to ``models/model.pt``).
        card: our card; ``format`` and ``weights`` are set here.
        version: bundle version.
        changelog: version -> change; default: one entry saying who exported it.
        versions: package versions the model was made with (default: this environment's).
        readme: ``docs/README.md`` (default: generated from the card).

    Raises:
        InputError: the metadata would not pass MONAI's schema (a bug), or the disk is full.
    """
    from ldct_monai.bundle import configs

    out_dir = Path(out_dir)
    card = {**card, "format": CARD_FORMAT, "weights": {"file": WEIGHTS, "sha256": hashlib.sha256(weights).hexdigest()}}
    versions = dict(versions or package_versions())
    changelog = changelog or {version: f"exported by ldct-monai {__version__}" + (
        f" at training step {card['step']}" if card.get("step") is not None else "")}
    meta = configs.metadata(card, version=version, changelog=changelog, versions=versions)
    configs.validate_metadata(meta, str(out_dir / METADATA))
    atomic_write_bytes(out_dir / WEIGHTS, weights)
    atomic_write_text(out_dir / INFERENCE, _json(configs.inference(card["architecture"]["kwargs"], card["hu_window"])))
    atomic_write_text(out_dir / README, readme if readme is not None else configs.readme_text(card))
    atomic_write_text(out_dir / LICENSE, configs.license_text(card))
    atomic_write_text(out_dir / METADATA, _json(meta))
    for old in (LEGACY_WEIGHTS, LEGACY_CARD):
        (out_dir / old).unlink(missing_ok=True)
    return out_dir


def _json(obj: Any) -> str:
    return json.dumps(obj, indent=2) + "\n"


def export_model(
    out_dir: Path,
    generator: ResNetGenerator,
    arch: dict,
    *,
    hu_window: HUWindow,
    config: dict | None = None,
    manifest_hash: str | None = None,
    step: int | None = None,
    name: str = "ldct-monai-cyclegan",
    extra: dict | None = None,
) -> Path:
    """Write the generator as a MONAI bundle in ``out_dir`` (usually ``RUN_DIR/model``); return ``out_dir``.

    Args:
        out_dir: the model folder.
        generator: the LD->FD generator (unwrapped from DDP / compile).
        arch: ``ResNetGenerator`` keyword arguments that rebuild it (``network_def``).
        hu_window: HU <-> [-1, 1] map used in training.
        config: the training config (``dataclasses.asdict``).
        manifest_hash: hash of the manifest trained on.
        step: optimizer steps done.
        name: the model's name.
        extra: more card fields (validation figures, selection, task, training_data, intended_use ...).
    """
    card = {
        "name": name,
        "task": "low-dose CT -> full-dose CT (CycleGAN generator G_ld2fd)",
        "architecture": {"class": "ResNetGenerator", "kwargs": dict(arch)},
        "hu_window": hu_window.asdict(),
        "step": step,
        "manifest_hash": manifest_hash,
        "config": config or {},
        "versions": package_versions(),
        "ldct_monai_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **(extra or {}),
    }
    return write_bundle(out_dir, _weights_bytes(generator), card, versions=card["versions"])


# -------------------------------------------------------------------------------------------------- load
def _legacy_dir(path: Path) -> Path | None:
    for folder in (path, path / MODEL_DIRNAME):
        if (folder / LEGACY_CARD).is_file():
            return folder
    return None


def find_model_dir(path: Path) -> Path:
    """RUN_DIR or RUN_DIR/model (bundle or old folder) -> the model folder; a zip -> the zip.

    Raises:
        InputError: no model there.
    """
    path = Path(path)
    files = find_bundle(path)
    if files is not None:
        return files.path
    legacy = _legacy_dir(path)
    if legacy is not None:
        return legacy
    raise InputError(f"{path}: no model found (expected a MONAI bundle: {METADATA} in it or in its "
                     f"{MODEL_DIRNAME}/ folder, or a zip of one).")


def read_card(path: Path) -> dict:
    """The model card of the model at ``path`` (bundle, zip or old folder), without loading weights.

    Raises:
        InputError: no model there, or a card that is not JSON.
    """
    path = Path(path)
    files = find_bundle(path)
    if files is not None:
        meta = _json_file(files.read(METADATA), files.label(METADATA))
        card = meta.get(CARD_KEY) if isinstance(meta, dict) else None
        if not isinstance(card, dict):
            raise InputError(f"{files.label(METADATA)}: no {CARD_KEY!r} model card in it (not a bundle ldct-monai wrote).")
        return card
    folder = find_model_dir(path)
    return _json_file((folder / LEGACY_CARD).read_bytes(), str(folder / LEGACY_CARD))


def _json_file(data: bytes, label: str) -> Any:
    try:
        return json.loads(data)
    except ValueError as err:
        raise InputError(f"{label}: not valid JSON ({err}).") from err


def _check_card(card: Any, label: str) -> dict:
    """The architecture kwargs of a card, after checking it can describe a generator we build."""
    try:
        arch = card["architecture"]
        kwargs = dict(arch["kwargs"])
        HUWindow(**card["hu_window"])
    except (ValueError, KeyError, TypeError) as err:
        raise InputError(f"{label}: not a valid model card ({err}).") from err
    if arch.get("class") != "ResNetGenerator":
        raise InputError(f"{label}: unknown architecture {arch.get('class')!r} (expected ResNetGenerator).")
    return kwargs


def _load_state(data: bytes, card: dict, label: str) -> dict[str, torch.Tensor]:
    expected = (card.get("weights") or {}).get("sha256")
    if expected and hashlib.sha256(data).hexdigest() != expected:
        raise InputError(f"{label}: weights do not match the SHA-256 in the model card (file changed or corrupt).")
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError / RuntimeError for unsafe or broken files
        from ldct_monai.checkpoint import unsafe_load_reason

        raise InputError(f"{label}: cannot load weights safely: {unsafe_load_reason(err)}.") from err


def _fit(gen: torch.nn.Module, state: dict, label: str) -> None:
    try:
        gen.load_state_dict(state)
    except (TypeError, ValueError, RuntimeError) as err:
        raise InputError(f"{label}: weights do not fit the card's architecture ({str(err).splitlines()[0]}).") from err
    gen.eval()


def _read_bundle(files: BundleFiles) -> tuple[LoadedModel, bytes]:
    from ldct_monai.bundle import configs, trust

    meta_label, cfg_label = files.label(METADATA), files.label(INFERENCE)
    meta_bytes = files.read(METADATA)
    meta = _json_file(meta_bytes, meta_label)
    if not isinstance(meta, dict):
        raise InputError(f"{meta_label}: expected a JSON object, found {type(meta).__name__}.")
    configs.validate_metadata(meta, meta_label)
    trust.check_config(meta, meta_label)  # MONAI merges it into the config as _meta_: "@_meta_::x" would evaluate it
    card = meta.get(CARD_KEY)
    if not isinstance(card, dict):
        raise InputError(f"{meta_label}: no {CARD_KEY!r} model card in it: a MONAI bundle ldct-monai did not write "
                         "(run it with python -m monai.bundle run).")
    if not isinstance(card.get("format"), int) or card["format"] > CARD_FORMAT:
        raise InputError(f"{meta_label}: model card format {card.get('format')!r}; this ldct-monai reads up to "
                         f"{CARD_FORMAT} (upgrade ldct-monai).")
    kwargs = _check_card(card, meta_label)
    config = _json_file(files.read(INFERENCE), cfg_label)
    if not isinstance(config, dict):
        raise InputError(f"{cfg_label}: expected a JSON object, found {type(config).__name__}.")
    trust.check_config(config, cfg_label)
    net_kwargs = trust.check_network_def(config.get("network_def"), cfg_label)
    if net_kwargs != kwargs:
        raise InputError(f"{cfg_label}: network_def {net_kwargs} differs from the architecture in "
                         f"{METADATA} ({kwargs}).")
    hu = card["hu_window"]
    if (config.get("hu_low"), config.get("hu_high")) != (hu["low"], hu["high"]):
        raise InputError(f"{cfg_label}: HU window [{config.get('hu_low')}, {config.get('hu_high')}] differs from "
                         f"the card's [{hu['low']}, {hu['high']}] in {METADATA}.")
    wrel = str((card.get("weights") or {}).get("file", WEIGHTS))
    if PurePosixPath(wrel).is_absolute() or ".." in PurePosixPath(wrel).parts:
        raise InputError(f"{meta_label}: weights file {wrel!r} is outside the bundle.")
    data = files.read(wrel)
    state = _load_state(data, card, files.label(wrel))
    # network_def is now known to be {"_target_": ResNetGenerator, literal kwargs}: build it as MONAI's
    # ConfigParser would, without importing MONAI's bundle machinery (seconds at start-up) for one call.
    try:
        gen = ResNetGenerator(**net_kwargs)
    except (TypeError, ValueError) as err:
        raise InputError(f"{cfg_label}: cannot build network_def ({err}).") from err
    _fit(gen, state, files.label(wrel))
    card_hash = hashlib.sha256(meta_bytes).hexdigest()[:16]
    return LoadedModel(generator=gen, card=card, card_hash=card_hash, path=files.path, metadata=meta), data


def _read_legacy(mdir: Path) -> tuple[LoadedModel, bytes]:
    card_bytes = (mdir / LEGACY_CARD).read_bytes()
    card = _json_file(card_bytes, str(mdir / LEGACY_CARD))
    kwargs = _check_card(card, str(mdir / LEGACY_CARD))
    wpath = mdir / (card.get("weights") or {}).get("file", LEGACY_WEIGHTS)
    if not wpath.is_file():
        raise InputError(f"{wpath}: model weights missing.")
    data = wpath.read_bytes()
    state = _load_state(data, card, str(wpath))
    try:
        gen = ResNetGenerator(**kwargs)
    except (TypeError, ValueError) as err:
        raise InputError(f"{mdir / LEGACY_CARD}: cannot build its architecture ({err}).") from err
    _fit(gen, state, str(wpath))
    card_hash = hashlib.sha256(card_bytes).hexdigest()[:16]
    return LoadedModel(generator=gen, card=card, card_hash=card_hash, path=mdir), data


def _read_model(path: Path, *, warn: bool = True) -> tuple[LoadedModel, bytes]:
    path = Path(path)
    files = find_bundle(path)
    if files is not None:
        return _read_bundle(files)
    mdir = find_model_dir(path)
    if warn:
        warnings.warn(f"{mdir}: a model folder from before MONAI bundles (generator.pt + model.json); it still loads. "
                      f"Make a bundle of it with: ldct-monai models convert {mdir} NEW_FOLDER", RuntimeWarning,
                      stacklevel=3)
    return _read_legacy(mdir)


def load_model(path: Path) -> LoadedModel:
    """Load a generator (eval mode, CPU) from a bundle folder, a run folder, a zip of a bundle, or an old folder.

    Raises:
        InputError: no model; invalid metadata or card; a config naming code outside ``ldct_monai``,
            ``monai`` and ``torch``; network_def or HU window disagreeing with the card; weights missing,
            changed, unsafe, or not fitting the architecture.
    """
    return _read_model(path)[0]


# --------------------------------------------------------------------------------------------- convert
def convert_model(src: Path, dst: Path, *, overwrite: bool = False) -> Path:
    """Make a MONAI bundle ``dst`` of the pre-bundle model folder ``src``; return ``dst``.

    The weights are copied byte for byte (same SHA-256, same outputs); the card keeps every field and
    records the conversion; ``README.md`` becomes ``docs/README.md``; the package versions in the metadata
    are those the model was made with.

    Raises:
        InputError: ``src`` is not a loadable old model folder (a bundle needs no conversion).
        OutputExistsError: ``dst`` exists and ``overwrite`` is not set (or it is not ldct-monai output).
    """
    from ldct_monai.io_utils import atomic_output_dir

    src = Path(src)
    if find_bundle(src) is not None:
        raise InputError(f"{src}: already a MONAI bundle; nothing to convert.")
    if _legacy_dir(src) is None:
        raise InputError(f"{src}: no model folder from before bundles here (expected {LEGACY_CARD} and "
                         f"{LEGACY_WEIGHTS} in it or in its {MODEL_DIRNAME}/ folder).")
    loaded, weights = _read_legacy(_legacy_dir(src))
    card = {k: v for k, v in loaded.card.items() if k not in ("format", "weights")}
    created = card.get("created", "an unknown date")
    card["converted"] = {"from": f"{LEGACY_CARD} + {LEGACY_WEIGHTS} (card format {loaded.card.get('format', 1)})",
                         "by": f"ldct-monai {__version__}",
                         "at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    sha = hashlib.sha256(weights).hexdigest()
    changelog = {"1.0.0": f"MONAI bundle of the model folder exported on {created}; weights unchanged "
                          f"(sha256 {sha[:16]}...)."}
    readme_path = loaded.path / "README.md"
    readme = readme_path.read_text() if readme_path.is_file() else None
    with atomic_output_dir(Path(dst), overwrite=overwrite) as tmp:
        write_bundle(tmp, weights, card, version="1.0.0", changelog=changelog,
                     versions=card.get("versions") or package_versions(), readme=readme)
    return Path(dst)

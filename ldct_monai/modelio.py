"""Export and load the self-describing LD->FD model: ``model/generator.pt`` + ``model/model.json``.

The card holds everything inference needs (architecture kwargs, HU window) plus provenance (training
config, manifest hash, step, package versions). Weights are a plain ``state_dict`` loaded with
``torch.load(weights_only=True)``: a file a user was handed can never run code.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ldct_monai import __version__
from ldct_monai.config import HUWindow
from ldct_monai.errors import InputError
from ldct_monai.io_utils import atomic_write_bytes, atomic_write_text
from ldct_monai.networks import ResNetGenerator
from ldct_monai.runtime import package_versions

MODEL_DIRNAME = "model"
WEIGHTS_NAME = "generator.pt"
CARD_NAME = "model.json"
CARD_FORMAT = 1


@dataclass
class LoadedModel:
    """A generator ready for inference (eval mode, on CPU) and its card."""

    generator: ResNetGenerator
    card: dict
    card_hash: str  # first 16 hex digits of the SHA-256 of model.json, quoted in derived DICOM
    path: Path  # the model/ folder

    @property
    def hu_window(self) -> HUWindow:
        return HUWindow(**self.card["hu_window"])

    @property
    def name(self) -> str:
        return str(self.card.get("name", "ldct-monai-cyclegan"))


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
    """Write ``out_dir/generator.pt`` and ``out_dir/model.json`` atomically; return ``out_dir``.

    Args:
        out_dir: the model folder (usually ``RUN_DIR/model``).
        generator: the LD->FD generator (unwrapped from DDP / compile).
        arch: ``ResNetGenerator`` keyword arguments that rebuild it.
        hu_window: HU <-> [-1, 1] map used in training.
        config: the training config (``dataclasses.asdict``).
        manifest_hash: hash of the manifest trained on.
        step: optimizer steps done.
        extra: more card fields (e.g. validation figures).
    """
    out_dir = Path(out_dir)
    state = {k: v.detach().cpu().contiguous() for k, v in generator.state_dict().items()}
    buf = io.BytesIO()
    torch.save(state, buf)
    weights = buf.getvalue()
    card = {
        "format": CARD_FORMAT,
        "name": name,
        "task": "low-dose CT -> full-dose CT (CycleGAN generator G_ld2fd)",
        "architecture": {"class": "ResNetGenerator", "kwargs": dict(arch)},
        "hu_window": hu_window.asdict(),
        "weights": {"file": WEIGHTS_NAME, "sha256": hashlib.sha256(weights).hexdigest()},
        "step": step,
        "manifest_hash": manifest_hash,
        "config": config or {},
        "versions": package_versions(),
        "ldct_monai_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **(extra or {}),
    }
    atomic_write_bytes(out_dir / WEIGHTS_NAME, weights)
    atomic_write_text(out_dir / CARD_NAME, json.dumps(card, indent=2, sort_keys=True) + "\n")
    return out_dir


def find_model_dir(path: Path) -> Path:
    """RUN_DIR or RUN_DIR/model -> the folder holding model.json and the weights."""
    path = Path(path)
    if (path / CARD_NAME).is_file():
        return path
    if (path / MODEL_DIRNAME / CARD_NAME).is_file():
        return path / MODEL_DIRNAME
    raise InputError(f"{path}: no model found (expected {CARD_NAME} in it or in its {MODEL_DIRNAME}/ folder).")


def load_model(path: Path) -> LoadedModel:
    """Load the exported generator (eval mode, CPU) from a run folder or its ``model/`` folder.

    Raises:
        InputError: no card, unreadable card, unknown architecture, weights missing, changed, or unsafe.
    """
    mdir = find_model_dir(path)
    card_bytes = (mdir / CARD_NAME).read_bytes()
    try:
        card = json.loads(card_bytes)
        arch = card["architecture"]
        kwargs = dict(arch["kwargs"])
        HUWindow(**card["hu_window"])
    except (ValueError, KeyError, TypeError) as err:
        raise InputError(f"{mdir / CARD_NAME}: not a valid model card ({err}).") from err
    if arch.get("class") != "ResNetGenerator":
        raise InputError(f"{mdir / CARD_NAME}: unknown architecture {arch.get('class')!r} (expected ResNetGenerator).")
    wpath = mdir / card.get("weights", {}).get("file", WEIGHTS_NAME)
    if not wpath.is_file():
        raise InputError(f"{wpath}: model weights missing.")
    data = wpath.read_bytes()
    expected = card.get("weights", {}).get("sha256")
    if expected and hashlib.sha256(data).hexdigest() != expected:
        raise InputError(f"{wpath}: weights do not match the SHA-256 in {CARD_NAME} (file changed or corrupt).")
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError / RuntimeError for unsafe or broken files
        from ldct_monai.checkpoint import unsafe_load_reason

        raise InputError(f"{wpath}: cannot load weights safely: {unsafe_load_reason(err)}.") from err
    try:
        gen = ResNetGenerator(**kwargs)
        gen.load_state_dict(state)
    except (TypeError, ValueError, RuntimeError) as err:
        raise InputError(f"{wpath}: weights do not fit the card's architecture ({str(err).splitlines()[0]}).") from err
    gen.eval()
    card_hash = hashlib.sha256(card_bytes).hexdigest()[:16]
    return LoadedModel(generator=gen, card=card, card_hash=card_hash, path=mdir)

"""The files of a bundle: ``configs/metadata.json``, ``configs/inference.json``, ``LICENSE``, ``docs/README.md``.

Everything here is derived from our model card (the dict :func:`ldct_monai.modelio.export_model` writes,
kept whole under ``metadata["ldct_monai"]``), so the MONAI fields can never disagree with the card:

* ``network_data_format``: the network sees one channel of CT in Hounsfield units, clipped to the card's
  HU window and mapped linearly to [-1, 1] (MONAI model zoo convention: ``"format": "hounsfield"`` with the
  ``value_range`` the network sees; our ``hu_window`` key gives the HU); it returns the same;
  ``post_processed_outputs`` is back in HU.
* ``inference.json``: MONAI transforms for the HU window and back, our :class:`~ldct_monai.bundle.workflow.SliceInferer`
  (each slice reflect-padded to the network stride, exactly as ``ldct-monai denoise`` runs full slices) and
  :class:`~ldct_monai.bundle.workflow.DenoiseLoop`, run by ``python -m monai.bundle run`` on a folder of
  NIfTI volumes.
"""

from __future__ import annotations

import datetime as _dt
import json
from functools import lru_cache
from typing import Any

from ldct_monai.bundle import APACHE_TEXT, CARD_KEY, SCHEMA_PATH, SCHEMA_URL, WEIGHTS
from ldct_monai.errors import InputError

NETWORK_TARGET = "ldct_monai.networks.ResNetGenerator"
AUTHORS = "ldct-monai contributors"
RESEARCH_USE = (
    "Research use only, not a medical device: denoising low-dose CT slices (Hounsfield units) towards "
    "full-dose image quality, for study and method comparison. Check the output against the input."
)
# Shape of what the network accepts: H, W multiples of its stride (4) and at least 8 px; 16*n keeps
# MONAI's default verify_net_in_out input (n=1) above that minimum. The inferer pads any slice to fit.
SPATIAL_SHAPE = ["16*n", "16*n"]


def _tensor(hu: dict[str, float], value_range: list[float], what: str, spatial_shape: list) -> dict[str, Any]:
    return {
        "type": "image", "format": "hounsfield", "modality": "CT", "num_channels": 1,
        "spatial_shape": spatial_shape, "dtype": "float32", "value_range": value_range, "is_patch_data": False,
        "hu_window": [hu["low"], hu["high"]], "channel_def": {"0": what},
    }


def network_data_format(hu: dict[str, float]) -> dict[str, Any]:
    """MONAI ``network_data_format`` for a generator run with the HU window ``hu`` ({"low", "high"})."""
    window = f"HU clipped to [{hu['low']:g}, {hu['high']:g}] and mapped linearly to [-1, 1]"
    return {
        "inputs": {"image": _tensor(hu, [-1.0, 1.0], f"low-dose CT slice, {window}", SPATIAL_SHAPE)},
        "outputs": {"pred": _tensor(hu, [-1.0, 1.0], "denoised CT slice, [-1, 1] = HU window", SPATIAL_SHAPE)},
        "post_processed_outputs": {"pred": _tensor(hu, [hu["low"], hu["high"]], "denoised CT in HU",
                                                   ["*", "*", "*"])},
    }


def _description(card: dict) -> str:
    kw = card["architecture"]["kwargs"]
    hu = card["hu_window"]
    cfg = card.get("config") or {}
    made = f"ldct-monai {card.get('ldct_monai_version', '?')}"
    if cfg.get("method"):
        made += f" train --method {cfg['method']}"
    if card.get("step") is not None:
        made += f", step {card['step']}"
    return (f"{card.get('name', 'ldct-monai model')}: a {'residual ' if kw.get('residual', True) else ''}ResNet "
            f"generator ({kw.get('ngf', 64)} filters, {kw.get('n_blocks', 6)} residual blocks at 1/4 resolution, "
            f"norm {kw.get('norm', 'instance')}) mapping a low-dose CT slice to a full-dose-like slice. Input HU are "
            f"clipped to [{hu['low']:g}, {hu['high']:g}] and mapped linearly to [-1, 1]; the output is mapped back "
            f"to HU. Made by {made}. Slice by slice (2-D); configs/inference.json denoises a folder of NIfTI volumes "
            "(python -m monai.bundle run), ldct-monai denoise --model BUNDLE a DICOM series.")


def _eval_metrics(card: dict) -> dict[str, Any]:
    out: dict[str, Any] = {}
    quality = card.get("quality") or {}
    for key, value in quality.items():
        if key != "summary":
            out[key] = value
    for key, value in (card.get("validation") or {}).items():
        out[f"validation_{key}"] = value
    return out


def metadata(card: dict, *, version: str, changelog: dict[str, str], versions: dict[str, str]) -> dict[str, Any]:
    """``configs/metadata.json`` of a model whose card is ``card``.

    Args:
        card: our model card (``architecture``, ``hu_window``, ``name``, ``task`` and provenance); stored
            whole under ``"ldct_monai"`` and the source of every MONAI field.
        version: bundle version (semantic versioning, as MONAI bundles use).
        changelog: version -> what changed, newest first.
        versions: package versions the bundle was generated with (``package_versions()`` or the card's).
    """
    train = card.get("training_data") or {}
    out = {
        "schema": SCHEMA_URL,
        "version": version,
        "changelog": dict(changelog),
        "monai_version": versions.get("monai", "unknown"),
        "pytorch_version": str(versions.get("torch", "unknown")).split("+")[0],
        "numpy_version": versions.get("numpy", "unknown"),
        "required_packages_version": {  # beyond MONAI: our network and transforms, NIfTI I/O of inference.json
            "ldct-monai": versions.get("ldct-monai", card.get("ldct_monai_version", "unknown")),
            "nibabel": versions.get("nibabel") or _installed("nibabel")},
        "name": card.get("name", "ldct-monai model"),
        "task": card.get("task", "low-dose CT -> full-dose CT denoising"),
        "description": card.get("description") or _description(card),
        "authors": card.get("authors", AUTHORS),
        "copyright": card.get("copyright", f"Copyright (c) {_year(card)} {AUTHORS}"),
        "data_source": train.get("summary") or f"the manifest with hash {card.get('manifest_hash')} (see the card's config)",
        "data_type": "nibabel",
        "image_classes": "one channel: low-dose CT in Hounsfield units",
        "pred_classes": "one channel: denoised CT in Hounsfield units",
        "eval_metrics": _eval_metrics(card),
        "intended_use": card.get("intended_use", RESEARCH_USE),
        "references": [
            "Zhu J-Y, Park T, Isola P, Efros AA. Unpaired Image-to-Image Translation using Cycle-Consistent "
            "Adversarial Networks. ICCV 2017.",
            "Johnson J, Alahi A, Fei-Fei L. Perceptual Losses for Real-Time Style Transfer and Super-Resolution. ECCV 2016.",
        ],
        "network_data_format": network_data_format(card["hu_window"]),
        CARD_KEY: card,
    }
    return out


def _installed(name: str) -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _year(card: dict) -> int:
    try:
        return _dt.datetime.fromisoformat(str(card.get("created"))).year
    except ValueError:
        return _dt.datetime.now(_dt.timezone.utc).year


def inference(arch: dict[str, Any], hu: dict[str, float]) -> dict[str, Any]:
    """``configs/inference.json``: denoise every NIfTI volume of ``dataset_dir`` into ``output_dir``.

    Run from the bundle folder (MONAI convention: ``bundle_root`` is ``.``)::

        python -m monai.bundle run --config_file configs/inference.json --dataset_dir IN --output_dir OUT

    Each volume is read with MONAI ``LoadImaged`` (nibabel), windowed to [-1, 1] with ``ScaleIntensityRanged``,
    denoised slice by slice along its third voxel axis, mapped back to HU and written by ``SaveImaged`` as
    ``OUT/<name>_denoised.nii.gz`` (float32 HU, the input's affine).
    """
    image, pred = "image", "pred"
    return {
        "bundle_root": ".",
        "dataset_dir": "$@bundle_root + '/input'",
        "output_dir": "$@bundle_root + '/eval'",
        "ckpt_path": "$@bundle_root + '/" + WEIGHTS + "'",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "hu_low": hu["low"],
        "hu_high": hu["high"],
        "network_def": {"_target_": NETWORK_TARGET, **arch},
        "network": "$@network_def.to(@device)",
        "datalist": {"_target_": "ldct_monai.bundle.workflow.list_images", "folder": "@dataset_dir"},
        "preprocessing": {"_target_": "monai.transforms.Compose", "transforms": [
            {"_target_": "monai.transforms.LoadImaged", "keys": image, "reader": "NibabelReader", "image_only": True},
            {"_target_": "monai.transforms.EnsureChannelFirstd", "keys": image},
            {"_target_": "monai.transforms.EnsureTyped", "keys": image, "dtype": "float32"},
            {"_target_": "monai.transforms.ScaleIntensityRanged", "keys": image, "a_min": "@hu_low",
             "a_max": "@hu_high", "b_min": -1.0, "b_max": 1.0, "clip": True},
        ]},
        "dataset": {"_target_": "monai.data.Dataset", "data": "@datalist", "transform": "@preprocessing"},
        "dataloader": {"_target_": "monai.data.DataLoader", "dataset": "@dataset", "batch_size": 1,
                       "shuffle": False, "num_workers": 0},
        "inferer": {"_target_": "ldct_monai.bundle.workflow.SliceInferer", "spatial_dim": 2, "sw_batch_size": 4},
        "postprocessing": {"_target_": "monai.transforms.Compose", "transforms": [
            {"_target_": "monai.transforms.ScaleIntensityRanged", "keys": pred, "a_min": -1.0, "a_max": 1.0,
             "b_min": "@hu_low", "b_max": "@hu_high", "clip": True},
            {"_target_": "monai.transforms.SaveImaged", "keys": pred, "output_dir": "@output_dir",
             "output_postfix": "denoised", "output_ext": ".nii.gz", "resample": False, "separate_folder": False,
             "writer": "NibabelWriter", "print_log": False},
        ]},
        "evaluator": {"_target_": "ldct_monai.bundle.workflow.DenoiseLoop", "network": "@network",
                      "ckpt_path": "@ckpt_path", "dataloader": "@dataloader", "inferer": "@inferer",
                      "postprocessing": "@postprocessing", "device": "@device", "image_key": image, "pred_key": pred},
        "run": ["$@evaluator.run()"],
    }


def license_text(card: dict) -> str:
    """``LICENSE``: Apache-2.0 for the configs and weights, and where the training data's own terms are."""
    train = (card.get("training_data") or {}).get("summary")
    data = (f"The weights were trained on: {train}. Those data sets keep their own licences (see docs/README.md)."
            if train else
            f"The weights were trained on the data of the manifest with hash {card.get('manifest_hash')} "
            "(configs/metadata.json, ldct_monai.config.manifest); those data keep their own licences.")
    return (f"{card.get('name', 'ldct-monai model')}: a MONAI bundle exported by ldct-monai.\n"
            f"Copyright (c) {_year(card)} {AUTHORS}.\n\n"
            "The configs, documentation and weights of this bundle are licensed under the Apache License,\n"
            "Version 2.0 (SPDX: Apache-2.0), the licence of ldct-monai; the full text follows.\n"
            f"{data}\n\n" + APACHE_TEXT.read_text())


def readme_text(card: dict) -> str:
    """``docs/README.md`` of an exported training run (the shipped models carry their own)."""
    hu = card["hu_window"]
    val = card.get("validation") or {}
    lines = [
        f"# {card.get('name', 'ldct-monai model')}", "",
        _description(card), "",
        f"- Training: manifest hash `{card.get('manifest_hash')}`, step {card.get('step')}; the whole training "
        "config is `ldct_monai.config` in `configs/metadata.json`.",
        f"- HU window: [{hu['low']:g}, {hu['high']:g}] -> [-1, 1].",
    ]
    if val:
        lines.append("- Validation (last pass): " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                                             for k, v in sorted(val.items())) + ".")
    lines += [
        f"- Intended use: {card.get('intended_use', RESEARCH_USE)}", "",
        "## Run it", "",
        "```bash",
        "ldct-monai denoise LOW_DOSE_SERIES OUT --model THIS_FOLDER      # DICOM in, derived DICOM out",
        "cd THIS_FOLDER && python -m monai.bundle run --config_file configs/inference.json \\",
        "    --dataset_dir NIFTI_IN --output_dir NIFTI_OUT                # NIfTI volumes in and out",
        "```", "",
        "See docs/bundles.md of ldct-monai for verifying and exporting the bundle.", "",
    ]
    return "\n".join(lines)


@lru_cache(maxsize=1)
def _schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text())


def validate_metadata(meta: dict, source: str) -> None:
    """Validate ``meta`` against the vendored MONAI schema (no network; what ``verify_metadata`` checks).

    Raises:
        InputError: the first schema violation, on one line.
    """
    import jsonschema

    try:
        jsonschema.validate(instance=meta, schema=_schema())
    except jsonschema.ValidationError as err:
        where = "/".join(str(p) for p in err.absolute_path) or "<root>"
        raise InputError(f"{source}: not valid MONAI bundle metadata at {where}: {err.message} "
                         f"(schema {SCHEMA_PATH.name}).") from err

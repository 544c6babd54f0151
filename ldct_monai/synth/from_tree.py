"""A paired TCIA-style tree from a folder of real full-dose CT series (``ldct-monai synth OUT --from-tree DIR``).

Every CT series found under ``DIR`` becomes one patient of a tree laid out like TCIA
LDCT-and-Projection-data, so ``build-manifest``, ``train`` and ``evaluate`` run on it unchanged::

    OUT/L001/01-01-2000-NA-NA-12345/1.000000-Full Dose Images-23456/1-001.dcm   the real slices (relabelled)
    OUT/L001/01-01-2000-NA-NA-12345/1.000000-Low Dose Images-34567/1-001.dcm    simulated (from_series)

The full-dose series keeps its pixels, UIDs and geometry; only what the tree's layout needs is changed:
PatientID / PatientName (the tree's ID, as TCIA anonymised theirs), SeriesDescription ("Full Dose
Images", the dose label ``build-manifest`` reads) and BodyPartExamined. Files are renamed in geometric
order. The low-dose series is :func:`ldct_monai.synth.from_series.simulate_low_dose_series` of that copy
at the Mayo dose of its body part (chest 10 %, abdomen and head 25 %). A series the simulator cannot
handle is skipped with its reason; the tree is written atomically.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import numpy as np

from ldct_monai.errors import InputError
from ldct_monai.schema import BodyPart

log = logging.getLogger(__name__)

FULL_DOSE_DESCRIPTION = "Full Dose Images"
LOW_DOSE_DESCRIPTION = "Low Dose Images"
SHARPEN_SIGMA_PX = 1.0  # the unsharp mask's Gaussian (--sharpen): gain 1 + g at high frequency, ~1 + 0.4 g at 0.15


def parse_body_parts(text: str | None) -> tuple[str | None, dict[str, str]]:
    """``"L"`` -> ("L", {}); ``"philips_abdomen_134=L,lidc=C"`` -> (None, {...}) (folder-name overrides)."""
    if not text:
        return None, {}
    if "=" not in text:
        code = text.strip().upper()
        if code not in {b.value for b in BodyPart}:
            raise InputError(f"--body-part must be C, L or N (or FOLDER=C,... pairs), found {text!r}.")
        return code, {}
    pairs = {}
    for item in text.split(","):
        name, _, code = item.partition("=")
        code = code.strip().upper()
        if not name.strip() or code not in {b.value for b in BodyPart}:
            raise InputError(f"--body-part pairs must look like FOLDER=C (C, L or N), found {item!r}.")
        pairs[name.strip()] = code
    return None, pairs


def synth_from_tree(
    source: Path,
    out_dir: Path,
    *,
    body_part: str | None = None,
    dose_fraction: float | None = None,
    kernel: str = "auto",
    electronic_noise: float | None = None,
    seed: int = 0,
    n_views: int | None = None,
    slab_slices: int = 0,
    sharpen: float = 0.0,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Turn every CT series under ``source`` into one patient (real full dose + simulated low dose).

    Args:
        source: folder searched recursively for CT series (never modified).
        out_dir: the new tree.
        body_part: C / L / N for every series, or ``FOLDER=C,...`` pairs matched against the path
            components of each series' folder; default from BodyPartExamined (else abdomen).
        dose_fraction: one low-dose fraction for every series; default per body part (C 0.10, L/N 0.25).
        kernel, electronic_noise, seed, n_views: as for :func:`simulate_low_dose_series`.
        slab_slices: > 0 cuts every series into contiguous slabs of this many slices (a shorter rest joins the
            last slab), each its own patient with its own Study/Series Instance UIDs (derived from the source's):
            more patients for patient-disjoint splits when there are few real series, at the price that
            slabs of one series are not independent patients.
        sharpen: > 0 emulates a sharper reconstruction kernel: the full-dose images are unsharp-masked,
            ``FD + sharpen * (FD - G * FD)`` with a Gaussian ``G`` of :data:`SHARPEN_SIGMA_PX` pixels (FBP is
            linear, so this is the series' kernel times the radial gain ``1 + sharpen (1 - exp(-2 pi^2 sigma^2
            f^2))``: 1 at zero frequency, ``1 + sharpen`` at high frequency), written as a derived full-dose
            series; the low dose is then simulated from the sharpened images, so both share the new texture.
            At 1.5 the LIDC chest's noise peak moves from about 0.28 to 0.4 cycles/pixel.
        overwrite: replace an existing non-empty ``out_dir``.
        progress: progress bar over slices.

    Returns:
        Summary: ``out_dir``, ``patients`` (one dict per written patient: id, source folder, body part,
        slices, dose fraction, kernel, texture, noise check), ``skipped`` (source folder, reason),
        ``files``, ``seconds``.

    Raises:
        InputError: ``source`` holds no CT series, bad options, or no series could be simulated.
    """
    from ldct_monai.dicom.create import make_uid
    from ldct_monai.dicom.reader import list_series, read_series
    from ldct_monai.io_utils import atomic_output_dir
    from ldct_monai.progress import make_progress
    from ldct_monai.synth.from_series import _body_part, simulate_low_dose_series

    t0 = time.perf_counter()
    source = Path(source)
    if not source.is_dir():
        raise InputError(f"{source}: expected a folder of CT series, found {'a file' if source.exists() else 'nothing'}.")
    src, dst = source.resolve(), Path(out_dir).resolve()
    if dst == src or src in dst.parents or dst in src.parents:
        raise InputError(f"{out_dir}: the output tree must not be, contain or lie inside the source folder.")
    default_part, per_folder = parse_body_parts(body_part)
    found = list_series(source)
    if not found:
        raise InputError(f"{source}: no CT series found.")
    if slab_slices < 0:
        raise InputError(f"--slab-slices must be >= 0, found {slab_slices}.")
    if not 0 <= sharpen <= 10:
        raise InputError(f"--sharpen must be in [0, 10], found {sharpen}.")
    plan = []
    for summary in found:
        series = read_series(source, summary.series_instance_uid, warn_skipped=False)
        folder = series.slices[0].path.parent
        rel = folder.relative_to(source) if folder != source else Path(".")
        code = default_part or next((c for name, c in per_folder.items() if name in rel.parts or name == rel.name), None)
        if code is None:
            code = _body_part(series.read_slice(0).dataset, None, folder).value
        n = len(series)
        if slab_slices and n >= 2 * slab_slices:
            starts = list(range(0, n - slab_slices + 1, slab_slices))
            ranges = [(a, b) for a, b in zip(starts, [*starts[1:], n])]
        else:
            ranges = [(0, n)]
        for k, (a, b) in enumerate(ranges):
            label = str(rel) if len(ranges) == 1 else f"{rel} [slices {a + 1}-{b}]"
            plan.append((code, label, series, (a, b), None if len(ranges) == 1 else k))
    plan.sort(key=lambda t: (t[0], t[1].split(" [")[0], t[3]))
    counters: dict[str, int] = {}
    patients, skipped, files = [], [], 0
    with atomic_output_dir(Path(out_dir), overwrite) as tmp, make_progress(disable=not progress) as bar:
        task = bar.add_task("series", total=sum(b - a for *_, (a, b), _ in plan), unit="slices")
        for code, rel, series, (a, b), slab in plan:
            counters[code] = counters.get(code, 0) + 1
            pid = f"{code}{counters[code]:03d}"
            tag = make_uid(seed, series.series_instance_uid, slab)[-5:]
            study = tmp / pid / f"01-01-2000-NA-NA-{tag}"
            fd_dir = study / f"1.000000-{FULL_DOSE_DESCRIPTION}-{tag[::-1]}"
            ld_dir = study / f"1.000000-{LOW_DOSE_DESCRIPTION}-{tag[1:]}0"
            try:
                _write_full_dose(series, fd_dir, pid, code, range(a, b), slab, sharpen)
                result = simulate_low_dose_series(
                    fd_dir, ld_dir, dose_fraction=dose_fraction, body_part=code, kernel=kernel,
                    electronic_noise=electronic_noise, seed=seed + counters[code], n_views=n_views, progress=False,
                )
            except InputError as err:
                shutil.rmtree(tmp / pid, ignore_errors=True)
                counters[code] -= 1
                skipped.append({"source": rel, "reason": str(err)})
                log.warning("%s: skipped (%s)", rel, err)
                bar.advance(task, b - a)
                continue
            files += 2 * (b - a)
            patients.append({
                "patient_id": pid, "source": rel, "body_part": code, "slices": b - a, "sharpen": sharpen,
                "dose_fraction": result["dose_fraction"], "kernel": result["kernel"],
                "kernel_class": result["kernel_class"], "iterative": result["iterative"],
                "texture": result["texture"], "noise_std_hu": result["noise_std_hu"],
                "check": {k: v for k, v in result["check"].items() if not isinstance(v, list)},
            })
            bar.advance(task, b - a)
        if not patients:
            raise InputError(f"{source}: no series could be simulated: " + "; ".join(
                f"{s['source']}: {s['reason']}" for s in skipped[:3]))
    return {"out_dir": str(out_dir), "patients": patients, "skipped": skipped, "files": files,
            "seconds": round(time.perf_counter() - t0, 2)}


def _write_full_dose(series, folder: Path, patient_id: str, code: str, indices: range, slab: int | None,
                     sharpen: float = 0.0) -> None:
    """Copy (a slab of) a real series into the tree, relabelled for its layout; pixels and geometry unchanged.

    SOP Instance UIDs are kept; a slab gets Study / Series Instance UIDs of its own, derived from the source's.
    With ``sharpen`` > 0 the pixels are unsharp-masked (:func:`sharpen_hu`) and each slice becomes a derived
    image with new SOP / Series Instance UIDs that references its source slice.
    """
    from ldct_monai.dicom.create import make_uid, write_dataset
    from ldct_monai.dicom.writer import derive_twin_slice
    from ldct_monai.schema import BODY_PART_EXAMINED
    from ldct_monai.synth.from_series import encode_added_hu

    folder.mkdir(parents=True)
    for n, i in enumerate(indices):
        sl = series.read_slice(i)
        ds = sl.dataset
        ds.PatientID = patient_id
        ds.PatientName = patient_id
        ds.SeriesDescription = FULL_DOSE_DESCRIPTION
        ds.BodyPartExamined = BODY_PART_EXAMINED[BodyPart(code)]
        if slab is not None:
            ds.SeriesInstanceUID = make_uid("slab", series.series_instance_uid, slab)
            ds.StudyInstanceUID = make_uid("slab-study", str(ds.StudyInstanceUID), slab)
        if sharpen > 0:
            hu = sl.hu.astype(np.float32)
            ds = derive_twin_slice(
                ds, encode_added_hu(sl, sharpen_hu(hu, sl.padding, sharpen) - hu),
                sop_instance_uid=make_uid("sharpen", str(ds.SOPInstanceUID), sharpen),
                series_instance_uid=make_uid("sharpen", str(ds.SeriesInstanceUID), sharpen),
                series_description=FULL_DOSE_DESCRIPTION,
                derivation_description=(f"Sharper reconstruction kernel emulated by unsharp masking (gain {sharpen:g}, "
                                        f"Gaussian sigma {SHARPEN_SIGMA_PX:g} px; ldct-monai synth --sharpen)"),
                dose_fraction=1.0,
            )
        write_dataset(ds, folder / f"1-{n + 1:03d}.dcm")


def sharpen_hu(hu: np.ndarray, padding: np.ndarray | None, gain: float, sigma_px: float | None = None) -> np.ndarray:
    """Unsharp mask ``hu + gain * (hu - G * hu)``; padding is excluded from the blur and keeps its values."""
    from scipy.ndimage import gaussian_filter

    sigma = SHARPEN_SIGMA_PX if sigma_px is None else sigma_px
    hu = hu.astype(np.float32)
    if padding is None or not padding.any():
        return hu + gain * (hu - gaussian_filter(hu, sigma, mode="nearest"))
    real = (~padding).astype(np.float32)
    blurred = gaussian_filter(hu * real, sigma, mode="nearest") / np.maximum(gaussian_filter(real, sigma, mode="nearest"), 1e-6)
    return np.where(padding, hu, hu + gain * (hu - blurred))

"""Write a synthetic TCIA "LDCT-and-Projection-data" style tree of full-dose / low-dose CT series.

Layout (one study per patient, one folder per series, one single-frame CT file per slice)::

    OUT_DIR/L001/03-14-2019-NA-NA-40187/1.000000-Full Dose Images-62044/1-001.dcm
    OUT_DIR/L001/03-14-2019-NA-NA-40187/1.000000-Low Dose Images-17305/1-001.dcm

Everything (pixels, UIDs, dates, folder numbers) follows from the seed: the same configuration writes
byte-identical files.
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ldct_monai.errors import InputError
from ldct_monai.schema import BODY_PART_EXAMINED, BodyPart

log = logging.getLogger(__name__)

FULL_DOSE_DESCRIPTION = "Full Dose Images"  # SeriesDescription of the full-dose series (as in TCIA)
LOW_DOSE_DESCRIPTION = "Low Dose Images"  # SeriesDescription of the low-dose series
STUDY_DESCRIPTION = {BodyPart.CHEST: "CT CHEST", BodyPart.ABDOMEN: "CT ABDOMEN", BodyPart.HEAD: "CT HEAD"}
Z_OFFSET = {BodyPart.CHEST: -180.0, BodyPart.ABDOMEN: -420.0, BodyPart.HEAD: 60.0}  # table z of anatomy centre, mm
#: Reconstruction kernel of each body part's protocol (``SynthConfig.kernel == "auto"``): chest CT is read
#: with a sharp kernel, abdomen and head with a standard soft-tissue kernel, as real protocols do.
BODY_PART_KERNEL = {BodyPart.CHEST: "sharp", BodyPart.ABDOMEN: "standard", BodyPart.HEAD: "standard"}
#: The ``standard`` window ``cos(pi f / 2 cutoff)^(2 power)`` (f: fraction of Nyquist), as the projector's
#: kernels: its noise power peaks at 0.157 and halves at 0.280 cycles/pixel, close to the inserted noise of
#: real Mayo B30f abdomens (0.145-0.168 / 0.293-0.301, issue 11), where the simulator's ``smooth`` window
#: (0.11 / 0.20) is too blotchy. The flux is rescaled so its noise level is the calibrated ``smooth`` one.
STANDARD_WINDOW = {"cutoff": 0.9, "power": 0.75}
#: ConvolutionKernel written per (kernel, body part); ``smooth`` and ``sharp`` keep the projector's names.
STANDARD_DICOM_NAME = {BodyPart.ABDOMEN: "B40f", BodyPart.HEAD: "H40s", BodyPart.CHEST: "B40f"}


@dataclass(frozen=True)
class SynthConfig:
    """Configuration of ``ldct-monai synth`` (one field per CLI option).

    Attributes:
        patients: patients per body part (C001..., L001..., N001...).
        slices: slices per series.
        size: rows = columns of every image, pixels (field of view / size = pixel spacing).
        seed: everything random follows from it.
        slice_thickness: SliceThickness = spacing between slice centres, mm (Mayo: 1 or 3).
        kernel: reconstruction kernel for every body part, ``smooth`` (B30f-like), ``standard``
            (B40f / H40s, :data:`STANDARD_WINDOW`) or ``sharp`` (D45f-like), or ``auto``: the body
            part's protocol kernel (:data:`BODY_PART_KERNEL`: chest sharp, abdomen and head standard).
        dose_fraction: low-dose fraction for every body part; None = Mayo defaults (C 0.10, L/N 0.25).
        dose_fractions: per-body-part overrides, e.g. ``(("C", 0.05),)``; win over ``dose_fraction``.
        no_ld_share: share of patients per body part written without a low-dose series (the GE exams
            of TCIA have none), rounded to whole patients.
        body_parts: which of C, L, N to write.
        n_views: projections over 180 degrees; None = ``size`` (enough for noise realism, fast).
        chunk: slices simulated together (memory vs speed).
    """

    patients: int = 1  # one patient per body part: the smallest tree with all three body parts
    slices: int = 8  # enough for 3-D continuity checks, small enough to be quick
    size: int = 128  # fast on a CPU; 512 is the clinical matrix
    seed: int = 0
    slice_thickness: float = 1.0  # mm; the Mayo data have 1 mm and 3 mm reconstructions
    kernel: str = "auto"  # per body part, as real protocols: chest sharp, abdomen and head standard
    dose_fraction: float | None = None  # None: 0.25, chest 0.10, as in the Mayo data
    dose_fractions: tuple[tuple[str, float], ...] = ()  # per body part, over dose_fraction
    no_ld_share: float = 0.0  # TCIA: about half the exams (GE) have no low-dose series
    body_parts: tuple[str, ...] = ("C", "L", "N")
    n_views: int | None = None
    chunk: int = 16  # slices per simulation pass: ~16 x size^2 x views floats in flight

    def validate(self) -> None:
        """Raise :class:`InputError` listing every out-of-range field."""
        from ldct_monai.synth.projector import KERNELS

        problems = []
        if self.patients < 1:
            problems.append(f"patients must be >= 1, found {self.patients}")
        if self.slices < 1:
            problems.append(f"slices must be >= 1, found {self.slices}")
        if not 16 <= self.size <= 1024:
            problems.append(f"size must be in [16, 1024] pixels, found {self.size}")
        if not 0.1 <= self.slice_thickness <= 10:
            problems.append(f"slice thickness must be in [0.1, 10] mm, found {self.slice_thickness}")
        if self.kernel not in {"auto", "standard", *KERNELS}:
            problems.append(f"kernel must be auto, standard or one of {sorted(KERNELS)}, found {self.kernel!r}")
        if self.dose_fraction is not None and not 0 < self.dose_fraction <= 1:
            problems.append(f"dose fraction must be in (0, 1], found {self.dose_fraction}")
        for bp, frac in self.dose_fractions:
            if bp not in {p.value for p in BodyPart} or not 0 < frac <= 1:
                problems.append(f"dose fraction override must be C, L or N with a value in (0, 1], found {bp}={frac}")
        if not 0 <= self.no_ld_share <= 1:
            problems.append(f"share without low dose must be in [0, 1], found {self.no_ld_share}")
        bad = [b for b in self.body_parts if b not in {p.value for p in BodyPart}]
        if bad or not self.body_parts:
            problems.append(f"body parts must be among C, L, N, found {list(self.body_parts)}")
        if self.n_views is not None and self.n_views < 16:
            problems.append(f"views must be >= 16, found {self.n_views}")
        if self.chunk < 1:
            problems.append(f"chunk must be >= 1, found {self.chunk}")
        if problems:
            raise InputError("Invalid synth configuration: " + "; ".join(problems) + ".")

    def kernel_for(self, body_part: BodyPart) -> str:
        """Reconstruction kernel (``smooth``, ``standard`` or ``sharp``) used for ``body_part``."""
        return BODY_PART_KERNEL[body_part] if self.kernel == "auto" else self.kernel

    def fraction_for(self, body_part: BodyPart) -> float:
        """Low-dose fraction used for ``body_part``."""
        from ldct_monai.synth.noise import PROTOCOLS

        overrides = dict(self.dose_fractions)
        if body_part.value in overrides:
            return float(overrides[body_part.value])
        return float(self.dose_fraction) if self.dose_fraction is not None else PROTOCOLS[body_part].dose_fraction


def synth_tree(out_dir: Path, config: SynthConfig, progress: bool = True, overwrite: bool = False) -> dict:
    """Simulate and write the whole tree atomically (a temporary sibling renamed at the end).

    Args:
        out_dir: tree root; must not exist or be empty unless ``overwrite``.
        config: what to simulate.
        progress: show a rich progress bar (slices simulated and written).
        overwrite: replace an existing non-empty ``out_dir``.

    Returns:
        Summary: ``out_dir``, ``files``, ``series``, ``patients`` (ids per body part), ``no_low_dose``
        (ids), ``seconds``, ``config``, and ``noise`` per body part: ``fd_std_hu`` (full-dose noise),
        ``ld_std_hu`` (low-dose noise), ``diff_std_hu`` (std of LD - FD) in soft tissue (noise-free
        phantom 0..100 HU, eroded 3 pixels), ``psnr_db`` (LD vs FD on [-1024, 3071] HU, whole image).

    Raises:
        InputError: invalid configuration or unwritable output.
        OutputExistsError: ``out_dir`` is not empty and ``overwrite`` is False.
    """
    import torch

    from ldct_monai.io_utils import atomic_output_dir
    from ldct_monai.progress import make_progress
    from ldct_monai.synth.projector import clear_cache

    config.validate()
    check_resources(config, Path(out_dir))  # before any work: a typo like --slices 100000 must not fill RAM first
    t0 = time.perf_counter()
    plan = _plan(config)
    total = sum(len(p["doses"]) * config.slices for p in plan)
    stats: dict[str, dict[str, list[float]]] = {}
    files = 0
    with atomic_output_dir(Path(out_dir), overwrite) as tmp, make_progress(disable=not progress) as bar:
        task = bar.add_task("synth", total=total, unit="slices", info="")
        try:
            with torch.inference_mode():
                for patient in plan:
                    bar.update(task, info=patient["id"])
                    for written, patient_stats in _write_patient(tmp, patient, config):
                        files += written
                        bar.advance(task, written)
                        for key, values in patient_stats.items():
                            stats.setdefault(patient["body_part"].value, {}).setdefault(key, []).extend(values)
        finally:
            clear_cache()
    summary = {
        "out_dir": str(Path(out_dir)),
        "files": files,
        "series": sum(len(p["doses"]) for p in plan),
        "patients": {bp: [p["id"] for p in plan if p["body_part"].value == bp] for bp in config.body_parts},
        "no_low_dose": [p["id"] for p in plan if len(p["doses"]) == 1],
        "seconds": round(time.perf_counter() - t0, 2),
        "config": asdict(config),
        "noise": {bp: _summarise(v) for bp, v in stats.items()},
    }
    return summary


# Memory model of one synth run, fitted to measured peaks (RSS on a 2-core VM: +86 MiB at 128 px, +700 MiB at
# 256 px for 16 slices; +1.8 GiB for 1000 mm of chest texture fields).
BASE_BYTES = 300 * 2**20  # Python, torch and the package loaded
FIELD_PEAK_BYTES_PER_VOXEL = 96  # FFT filtering of one 2 mm texture field (float64 + complex128 copies)
PROJECTION_BYTES = 2.7  # per (slice in a chunk x pixel x view) while a chunk is simulated
MAX_TORSO_FOV_MM, MAX_HEAD_FOV_MM = 460.0, 280.0  # the largest fields of view make_phantom draws
FILE_OVERHEAD_BYTES = 3 * 1024  # DICOM header of one slice
TILE_PEAK_BYTES_PER_VOXEL = 96  # FFT filtering of one fine texture tile (as for the fields)


def estimate_resources(config: SynthConfig) -> dict[str, float]:
    """Upper estimates of peak memory and disk (bytes) for ``config``, before anything is simulated.

    Memory: the texture fields of the largest patient (one 2 mm voxel grid per field over the scanned z
    range plus a margin, built by FFT one patient at a time), its fine texture tiles (fixed size, whatever
    the series length), the texture patterns of one painting block, and one chunk of projections. Disk:
    every slice file (16-bit pixels and a header).
    """
    from ldct_monai.synth.phantom import CHEST_TILES, PAINT_BLOCK, PATTERNS, TILES

    zh = config.slices * config.slice_thickness / 2 + 8.0
    nz_fine, nz_coarse = math.ceil(2 * zh / 2.0) + 1, math.ceil(2 * zh / 4.0) + 1
    peak_fields = 0.0
    for bp in config.body_parts:
        fov = MAX_HEAD_FOV_MM if bp == BodyPart.HEAD.value else MAX_TORSO_FOV_MM
        fine = nz_fine * (math.ceil(fov / 2.0) + 1) ** 2
        coarse = nz_coarse * (math.ceil(fov / 4.0) + 1) ** 2
        n_fine = 1 if bp == BodyPart.HEAD.value else 3  # chest, abdomen: fine texture and two vessel fields
        tiles = [math.prod(shape) for _, shape in {**TILES, **(CHEST_TILES if bp == "C" else {})}.values()]
        stored = 4.0 * (n_fine * fine + coarse + sum(tiles))
        peak_fields = max(peak_fields, stored + FIELD_PEAK_BYTES_PER_VOXEL * max(fine, max(tiles)))
    # painting: every pattern and tile sample of one block of sub-slices, plus the image and a membership
    painting = 4.0 * PAINT_BLOCK * config.size**2 * (len(PATTERNS) + len(TILES) + len(CHEST_TILES) + 4)
    views = config.n_views or config.size
    projections = PROJECTION_BYTES * min(config.chunk, config.slices) * config.size**2 * views
    doses = 2 - config.no_ld_share
    files = config.patients * len(config.body_parts) * config.slices * doses
    return {
        "memory": BASE_BYTES + peak_fields + painting + projections,
        "disk": files * (2 * config.size**2 + FILE_OVERHEAD_BYTES),
        "files": files,
    }


def available_memory() -> float | None:
    """Bytes of memory this process can still use (MemAvailable, capped by a cgroup limit); None if unknown."""
    avail = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = float(line.split()[1]) * 1024
    except OSError:
        return None
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = float(Path("/sys/fs/cgroup/memory.current").read_text().strip())
        if limit != "max" and avail is not None:
            avail = min(avail, float(limit) - used)
    except (OSError, ValueError):
        pass
    return avail


def free_disk(path: Path) -> float | None:
    """Free bytes on the filesystem ``path`` will be written to (its nearest existing folder); None if unknown."""
    import shutil

    p = Path(os.path.realpath(path))
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return float(shutil.disk_usage(p).free)
    except OSError:
        return None


def check_resources(config: SynthConfig, out_dir: Path) -> dict[str, float]:
    """Refuse a configuration whose estimated memory or disk (:func:`estimate_resources`) is not there.

    Raises:
        InputError: naming both estimates and what the machine has.
    """
    need = estimate_resources(config)
    mem, disk = available_memory(), free_disk(out_dir)
    short = []
    if mem is not None and need["memory"] > mem:
        short.append(f"about {_gib(need['memory'])} of memory, {_gib(mem)} available")
    if disk is not None and need["disk"] > disk:
        short.append(f"about {_gib(need['disk'])} of disk for {int(need['files'])} files, {_gib(disk)} free at {out_dir}")
    if short:
        raise InputError(
            f"synth --patients {config.patients} --slices {config.slices} --size {config.size} needs "
            f"{' and '.join(short)}; lower --slices, --size or --patients."
        )
    return need


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def _summarise(values: dict[str, list[float]]) -> dict[str, float]:
    out = {}
    for key in ("fd_var", "ld_var", "diff_var"):
        if values.get(key):
            out[key.replace("_var", "_std_hu")] = round(math.sqrt(float(np.mean(values[key]))), 2)
    if values.get("mse"):
        out["psnr_db"] = round(20 * math.log10(4095.0 / math.sqrt(float(np.mean(values["mse"])))), 2)
    return out


def _plan(config: SynthConfig) -> list[dict]:
    """Per patient: id, body part, random generator seeds, dates, folder numbers, which doses."""
    plan = []
    for bi, bp_code in enumerate(config.body_parts):
        bp = BodyPart(bp_code)
        rng = np.random.default_rng([config.seed, bi, 7919])
        n_without = int(round(config.no_ld_share * config.patients))
        without = set(rng.permutation(config.patients)[:n_without].tolist())
        for i in range(config.patients):
            prng = np.random.default_rng([config.seed, ord(bp_code), i])
            date = _dt.date(2016, 1, 1) + _dt.timedelta(days=int(prng.integers(0, 6 * 365)))
            plan.append(
                {
                    "id": f"{bp_code}{i + 1:03d}",
                    "body_part": bp,
                    "seed": [config.seed, ord(bp_code), i],
                    "date": date,
                    "study_folder": f"{date:%m-%d-%Y}-NA-NA-{int(prng.integers(10000, 100000)):05d}",
                    "series_numbers": [int(prng.integers(10000, 100000)) for _ in range(2)],
                    "sex": "F" if prng.random() < 0.5 else "M",
                    "age": f"{int(prng.integers(35, 85)):03d}Y",
                    "doses": ("full",) if i in without else ("full", "low"),
                }
            )
    return plan


def reconstruction_window(kernel: str, n: int, spacing: float, protocol):
    """What :func:`~ldct_monai.synth.simulate.scan` gets for ``kernel``: a projector kernel name, or for
    ``standard`` the sampled :data:`STANDARD_WINDOW` with the protocol's flux (and electronic noise)
    scaled by the window's noise variance relative to ``smooth``, so the noise level stays the calibrated
    one (docs/simulator.md) and only its texture changes.

    Args:
        kernel: ``smooth``, ``standard`` or ``sharp``.
        n: detector bins (image size).
        spacing: bin width, mm.
        protocol: the body part's :class:`~ldct_monai.synth.noise.DoseProtocol`.

    Returns:
        (kernel name or window tensor on [0, 1] x Nyquist, protocol to scan with).
    """
    import dataclasses

    import torch

    from ldct_monai.synth.projector import ramp_filter

    if kernel != "standard":
        return kernel, protocol
    f = torch.linspace(0, 1, 513, dtype=torch.float64)
    c, p = STANDARD_WINDOW["cutoff"], STANDARD_WINDOW["power"]
    window = torch.where(f <= c, torch.cos(math.pi * f / (2 * c)).clamp_min(0) ** (2 * p), 0.0)
    # FBP noise variance is the integral of the squared filter: scaling every count by k (photons and
    # electronic noise std by sqrt(k)) divides the variance by k exactly
    k = float((ramp_filter(n, spacing, window) ** 2).sum() / (ramp_filter(n, spacing, "smooth") ** 2).sum())
    scaled = dataclasses.replace(protocol, i0=protocol.i0 * k,
                                 electronic_noise=protocol.electronic_noise * math.sqrt(k))
    return window.float(), scaled


def _write_patient(root: Path, patient: dict, config: SynthConfig):
    """Simulate one patient chunk by chunk; yield (files written, noise statistics) per chunk."""
    import torch
    import torch.nn.functional as F

    from ldct_monai.dicom.create import SeriesInfo, make_ct_slice, make_uid, write_dataset
    from ldct_monai.synth.noise import PROTOCOLS
    from ldct_monai.synth.phantom import make_phantom
    from ldct_monai.synth.projector import KERNEL_DICOM_NAME
    from ldct_monai.synth.simulate import scan

    bp: BodyPart = patient["body_part"]
    pid = patient["id"]
    seed = patient["seed"]
    rng = np.random.default_rng(seed)
    t = config.slice_thickness
    extent = config.slices * t
    phantom = make_phantom(bp, rng, extent)
    gen = torch.Generator().manual_seed(int(rng.integers(0, 2**62)))
    protocol = PROTOCOLS[bp]
    fraction = config.fraction_for(bp)
    kernel = config.kernel_for(bp)
    low = "low" in patient["doses"]
    spacing = phantom.fov / config.size
    window, protocol = reconstruction_window(kernel, config.size, spacing, protocol)
    # slice centres from head to feet (InstanceNumber 1 is the most cranial, as a scanner writes them)
    z_local = (config.slices - 1) / 2 * t - np.arange(config.slices) * t
    z_table = Z_OFFSET[bp] + float(rng.uniform(-40, 40))
    sub = max(1, min(6, int(round(t))))  # sub-slices averaged per slice: one per mm of thickness

    study_uid = make_uid(*seed, "study")
    for_uid = make_uid(*seed, "frame-of-reference")
    common = dict(
        patient_id=pid,
        study_uid=study_uid,
        frame_of_reference_uid=for_uid,
        series_number=1,
        patient_name=pid,
        patient_sex=patient["sex"],
        patient_age=patient["age"],
        study_date=patient["date"],
        study_id="1",
        accession_number=f"{pid}{patient['date']:%y%m%d}",
        study_description=STUDY_DESCRIPTION[bp],
        body_part=BODY_PART_EXAMINED[bp],
        manufacturer="ldct-monai",
        model_name="synthetic parallel-beam",
        kvp=120.0,
        kernel=STANDARD_DICOM_NAME[bp] if kernel == "standard" else KERNEL_DICOM_NAME[kernel],
        slice_thickness=t,
        pixel_spacing=(spacing, spacing),
        rescale_intercept=-1024.0,
        rescale_slope=1.0,
    )
    infos = {
        "full": SeriesInfo(
            series_uid=make_uid(*seed, "series", "full"),
            series_description=FULL_DOSE_DESCRIPTION,
            tube_current_ma=protocol.tube_current_ma,
            exposure_mas=protocol.exposure_mas,
            exposure_time_ms=500.0,
            ctdi_vol=protocol.ctdi_vol,
            **common,
        ),
        "low": SeriesInfo(
            series_uid=make_uid(*seed, "series", "low"),
            series_description=LOW_DOSE_DESCRIPTION,
            tube_current_ma=protocol.tube_current_ma * fraction,
            exposure_mas=protocol.exposure_mas * fraction,
            exposure_time_ms=500.0,
            ctdi_vol=protocol.ctdi_vol * fraction,
            image_type=("DERIVED", "SECONDARY", "AXIAL"),
            extra={
                "DerivationDescription": (
                    f"Simulated {fraction:g} dose fraction: projection-domain Poisson + electronic noise "
                    "insertion (Yu et al. 2012) on the full-dose projections"
                )
            },
            **common,
        ),
    }
    series_dirs = {}
    for dose, number in zip(("full", "low"), patient["series_numbers"]):
        if dose in patient["doses"]:
            desc = infos[dose].series_description
            series_dirs[dose] = root / pid / patient["study_folder"] / f"1.000000-{desc}-{number:05d}"
            series_dirs[dose].mkdir(parents=True)
    origin = -(config.size - 1) / 2 * spacing
    first_chunk = True
    for c0 in range(0, config.slices, config.chunk):
        zs = z_local[c0 : c0 + config.chunk]
        hu = phantom.sample(config.size, zs, sub=sub, thickness=t)
        res = scan(hu, spacing, t, protocol, fraction=fraction if low else None, kernel=window,
                   generator=gen, n_views=config.n_views, noise_slices=4 if first_chunk else 0)
        outside = ~res.fov_mask
        volumes = {"full": res.fd.masked_fill(outside, -1024.0)}
        if low:
            volumes["low"] = res.ld.masked_fill(outside, -1024.0)
        written = 0
        for dose, vol in volumes.items():
            arr = vol.numpy()
            for j, z in enumerate(zs):
                k = c0 + j
                ds = make_ct_slice(
                    arr[j],
                    infos[dose],
                    instance_number=k + 1,
                    position=(origin, origin, round(z_table + float(z), 4)),
                    sop_uid=make_uid(*seed, dose, k),
                )
                # automatic exposure control: this slice's tube current, exposure and CTDIvol
                f = float(res.exposure_factor[j])
                info = infos[dose]
                ds.XRayTubeCurrent = int(round(info.tube_current_ma * f))
                ds.Exposure = int(round(info.exposure_mas * f))
                ds.CTDIvol = round(info.ctdi_vol * f, 4)
                write_dataset(ds, series_dirs[dose] / f"1-{k + 1:03d}.dcm")
                written += 1
        # noise figures in soft tissue of the noise-free phantom, eroded so edges do not count
        soft = ((hu > 0) & (hu < 100)).float()[:, None]
        mask = (-F.max_pool2d(-soft, 7, 1, 3))[:, 0] > 0.5
        st: dict[str, list[float]] = {}
        if res.fd_noise is not None:
            m = mask[: res.fd_noise.shape[0]]
            if m.any():
                st["fd_var"] = [float(res.fd_noise[m].var())]
                if low:
                    ld_noise = res.fd_noise + (res.ld - res.fd)[: res.fd_noise.shape[0]]
                    st["ld_var"] = [float(ld_noise[m].var())]
        if low:
            if mask.any():
                st["diff_var"] = [float((res.ld - res.fd)[mask].var())]
            win = lambda x: x.clamp(-1024.0, 3071.0)  # noqa: E731
            st["mse"] = ((win(volumes["low"]) - win(volumes["full"])) ** 2).mean(dim=(1, 2)).tolist()
        first_chunk = False
        yield written, st

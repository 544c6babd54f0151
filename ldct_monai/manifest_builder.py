"""Building a manifest (``ldct-monai build-manifest``): a TCIA-style LDCT tree into patient-disjoint splits.

:class:`ManifestConfig` and :func:`build_manifest`, on top of the header scan of :mod:`ldct_monai.dicom.scan`. The
split itself is :func:`plan_manifest`, a pure function of the scanned headers and the config (so it is
tested without files). Reading a manifest back is :mod:`ldct_monai.manifest`; the contract (file names,
columns, split rules) is in docs/manifest.md.
"""

from __future__ import annotations

import bisect
import csv
import hashlib
import json
import logging
import os
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ldct_monai import __version__
from ldct_monai.dicom.scan import REASONS, SliceHeader, Skip
from ldct_monai.errors import InputError
from ldct_monai.schema import (
    BODY_PARTS,
    DOSE_COLUMNS,
    DOSE_FILES,
    PAIR_COLUMNS,
    SKIPPED_COLUMNS,
    SPLIT_FILES,
    SPLITS,
    Dose,
    Split,
    parse_body_part,
)

logger = logging.getLogger(__name__)


TCIA_PATIENT_ID = re.compile(r"^([CLN])\d+$", re.IGNORECASE)  # C001 chest, L067 abdomen, N012 head


@dataclass(frozen=True)
class ManifestConfig:
    """Everything that decides a manifest (saved in ``splits.json``; ``workers`` only changes the speed).

    Raises:
        InputError: a value is out of range (ratios, patterns, body parts, doses).
    """

    seed: int = 0  # key of every hash below: same seed + same tree = same bytes
    ratios: tuple[float, float, float] = (0.7, 0.2, 0.1)  # train/val/test per body part (LDCTBench 70/20/10)
    workers: int | None = None  # header-reading processes; None = all cores (never changes the output)
    body_parts: tuple[str, ...] | None = None  # keep only these of C, L, N; None = all
    max_patients: int | None = None  # per body part, keep the N patients with the smallest hash; None = all
    min_slices: int = 1  # a series with fewer usable slices is skipped
    ld_pattern: str = r"\b(low|quarter)[\s_-]*dose\b"  # regex (case-insensitive) on SeriesDescription
    fd_pattern: str = r"\bfull[\s_-]*dose\b"  # TCIA: "Full Dose Images" / "Low Dose Images"
    default_dose: str | None = None  # 'low' / 'full' for series matching neither pattern; None = skip them
    default_body_part: str | None = None  # C / L / N when neither the ID nor BodyPartExamined says; None = skip
    z_tolerance: float = 0.25  # test pairs: |z_ld - z_fd| <= this fraction of the full-dose slice spacing
    single_dose: bool = True  # patients with one dose serve that dose in train/val (TCIA GE exams: FD only)
    paired: bool = False  # also write train_pairs.csv / val_pairs.csv: train/val patients' LD-FD pairs (supervised)

    def __post_init__(self) -> None:
        ratios = tuple(float(r) for r in self.ratios)
        if len(ratios) != 3 or any(r < 0 for r in ratios) or abs(sum(ratios) - 1.0) > 1e-3:
            raise InputError(
                f"ratios: expected three non-negative train,val,test fractions summing to 1, found {self.ratios}."
            )
        object.__setattr__(self, "ratios", ratios)
        if self.body_parts is not None:
            parts = tuple(sorted({str(b).strip().upper() for b in self.body_parts}))
            bad = [b for b in parts if b not in BODY_PARTS]
            if bad or not parts:
                raise InputError(f"body parts: expected some of C, L, N, found {','.join(self.body_parts) or '(none)'}.")
            object.__setattr__(self, "body_parts", parts)
        if self.default_body_part is not None:
            bp = str(self.default_body_part).strip().upper()
            if bp not in BODY_PARTS:
                raise InputError(f"default body part: expected C, L or N, found {self.default_body_part!r}.")
            object.__setattr__(self, "default_body_part", bp)
        if self.default_dose is not None and self.default_dose not in {d.value for d in Dose}:
            raise InputError(f"default dose: expected 'low' or 'full', found {self.default_dose!r}.")
        for name in ("ld_pattern", "fd_pattern"):
            try:
                re.compile(getattr(self, name), re.IGNORECASE)
            except re.error as err:
                raise InputError(f"{name} (--{name.replace('_', '-')}): not a valid regular expression ({err}).") from err
        if self.max_patients is not None and self.max_patients < 1:
            raise InputError(f"max patients: expected at least 1, found {self.max_patients}.")
        if self.min_slices < 1:
            raise InputError(f"min slices: expected at least 1, found {self.min_slices}.")
        if not 0 < self.z_tolerance < 1:
            raise InputError(f"z tolerance: expected a fraction of the slice spacing in (0, 1), found {self.z_tolerance}.")
        if self.workers is not None and self.workers < 1:
            raise InputError(f"workers: expected at least 1, found {self.workers}.")

    def saved(self) -> dict:
        """The fields that decide the output (``workers`` left out: it changes only the speed)."""
        d = asdict(self)
        d.pop("workers")
        d["ratios"] = list(d["ratios"])
        if d["body_parts"] is not None:
            d["body_parts"] = list(d["body_parts"])
        return d


def unit_hash(seed: int, purpose: str, key: str) -> float:
    """A number in [0, 1) fixed by (seed, purpose, key): SHA-256, so it never depends on other patients."""
    digest = hashlib.sha256(f"{seed}\x1f{purpose}\x1f{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


@dataclass
class PatientPlan:
    """One patient's place in the manifest (what ``splits.json`` records)."""

    patient_id: str
    body_part: str
    series: dict[str, str]  # dose value -> SeriesInstanceUID kept
    u: float  # split hash
    v: float  # dose-side hash (train/val)
    split: str = ""
    dose: str = ""  # 'low' / 'full' in train/val, 'both' in test
    assigned_by: str = "hash"  # 'hash', or 'min_one' when moved so that a small body part fills every split

    @property
    def paired(self) -> bool:
        return len(self.series) == 2


@dataclass
class ManifestPlan:
    """The result of :func:`plan_manifest`: rows of every output file, and the patients."""

    rows: dict[str, list[SliceHeader]] = field(default_factory=lambda: {k: [] for k in DOSE_FILES})
    pairs: list[tuple[SliceHeader, SliceHeader]] = field(default_factory=list)
    split_pairs: dict[str, list[tuple[SliceHeader, SliceHeader]]] = field(default_factory=lambda: {Split.TRAIN: [], Split.VAL: []})
    skipped: list[Skip] = field(default_factory=list)
    patients: dict[str, PatientPlan] = field(default_factory=dict)

    def usable(self) -> int:
        """Slices written to a split file (a pair counts twice)."""
        return sum(len(r) for r in self.rows.values()) + 2 * len(self.pairs)


def classify_dose(description: str, config: ManifestConfig) -> str | None:
    """'low' / 'full' from a SeriesDescription (config patterns, case-insensitive), else the default dose.

    A description matching both patterns is ambiguous and gets the default dose too.
    """
    low = re.search(config.ld_pattern, description, re.IGNORECASE) is not None
    full = re.search(config.fd_pattern, description, re.IGNORECASE) is not None
    if low != full:
        return Dose.LOW.value if low else Dose.FULL.value
    return config.default_dose


def resolve_body_part(patient_id: str, body_parts_examined: Iterable[str], default: str | None) -> str | None:
    """C / L / N from the TCIA patient prefix, else the most common BodyPartExamined alias, else ``default``."""
    m = TCIA_PATIENT_ID.match(patient_id)
    if m:
        return m.group(1).upper()
    votes = Counter(bp.value for bp in map(parse_body_part, body_parts_examined) if bp is not None)
    if votes:
        return sorted(votes.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]
    return default


def _split_of(u: float, cum: tuple[float, float]) -> str:
    return Split.TRAIN if u < cum[0] else Split.VAL if u < cum[1] else Split.TEST


def _interval_distance(u: float, lo: float, hi: float) -> float:
    return 0.0 if lo <= u < hi else min(abs(u - lo), abs(u - hi))


def plan_manifest(headers: Sequence[SliceHeader], config: ManifestConfig) -> ManifestPlan:
    """Group scanned slices into series and patients, filter them, and assign splits (pure function).

    Rules (docs/manifest.md explains why): one series per patient and dose; a patient's split comes from
    a seeded hash of its ID (adding patients never moves it), per body part; in train/val each patient
    gives one dose, balanced per body part; test patients give both doses, paired on z.
    """
    plan = ManifestPlan()
    skip = plan.skipped

    def drop(hs: Iterable[SliceHeader], reason: str, detail: str) -> None:
        skip.extend(Skip(h.path, reason, detail) for h in hs)

    # 1. duplicate SOPInstanceUIDs: keep the first path in sort order
    first_path: dict[str, str] = {}
    series: dict[tuple[str, str], list[SliceHeader]] = defaultdict(list)
    for h in sorted(headers, key=lambda h: h.path):
        if h.sop_uid in first_path:
            skip.append(Skip(h.path, "duplicate_sop_uid", f"same SOPInstanceUID as {first_path[h.sop_uid]}"))
            continue
        first_path[h.sop_uid] = h.path
        series[(h.patient_id, h.series_uid)].append(h)
    del first_path

    # 2. dose of each series, then body part of each patient
    by_patient: dict[str, dict[str, list[list[SliceHeader]]]] = defaultdict(lambda: defaultdict(list))
    for (pid, _uid), hs in sorted(series.items()):
        dose = classify_dose(hs[0].series_description, config)
        if dose is None:
            drop(hs, "unknown_dose", f"SeriesDescription {hs[0].series_description!r}")
            continue
        by_patient[pid][dose].append(hs)
    del series

    candidates: dict[str, dict[str, list[SliceHeader]]] = {}
    body_part_of: dict[str, str] = {}
    for pid in sorted(by_patient):
        doses = by_patient[pid]
        all_series = [hs for d in sorted(doses) for hs in doses[d]]
        bp = resolve_body_part(pid, (hs[0].body_part_examined for hs in all_series), config.default_body_part)
        if bp is None:
            for hs in all_series:
                drop(hs, "unknown_body_part", f"patient {pid}: BodyPartExamined {hs[0].body_part_examined!r}")
            continue
        if config.body_parts is not None and bp not in config.body_parts:
            for hs in all_series:
                drop(hs, "excluded_body_part", f"patient {pid} is body part {bp}")
            continue
        kept: dict[str, list[SliceHeader]] = {}
        for dose in sorted(doses):
            good = []
            for hs in doses[dose]:
                hs = _consistent_size(hs, drop)
                if len(hs) < config.min_slices:
                    drop(hs, "too_few_slices", f"{len(hs)} usable slices < --min-slices {config.min_slices}")
                    continue
                good.append(hs)
            if not good:
                continue
            good.sort(key=lambda hs: (-len(hs), hs[0].series_uid))
            kept[dose] = good[0]
            for hs in good[1:]:
                detail = f"patient {pid} {dose} dose: kept series {good[0][0].series_uid} ({len(good[0])} slices)"
                drop(hs, "extra_series", detail)
        if kept:
            candidates[pid] = kept
            body_part_of[pid] = bp
    del by_patient

    # 3. patients per body part, --max-patients by hash
    per_bp: dict[str, list[str]] = defaultdict(list)
    for pid in sorted(candidates):
        per_bp[body_part_of[pid]].append(pid)
    for bp, pids in per_bp.items():
        if config.max_patients is not None and len(pids) > config.max_patients:
            pids.sort(key=lambda p: (unit_hash(config.seed, "select", p), p))
            for pid in pids[config.max_patients :]:
                for hs in candidates.pop(pid).values():
                    drop(hs, "over_max_patients", f"body part {bp} keeps {config.max_patients} patients")
            del pids[config.max_patients :]
            pids.sort()

    # 4. splits by hash, per body part
    r_train, r_val, r_test = config.ratios
    cum = (r_train, r_train + r_val)
    bounds = {Split.TRAIN: (0.0, cum[0]), Split.VAL: (cum[0], cum[1]), Split.TEST: (cum[1], 1.0)}
    for bp in sorted(per_bp):
        members: list[PatientPlan] = []
        for pid in per_bp[bp]:
            kept = candidates[pid]
            p = PatientPlan(
                patient_id=pid,
                body_part=bp,
                series={d: hs[0].series_uid for d, hs in kept.items()},
                u=unit_hash(config.seed, "split", pid),
                v=unit_hash(config.seed, "dose", pid),
            )
            if not p.paired and (not config.single_dose or cum[1] <= 0):
                why = "--no-single-dose" if not config.single_dose else "train and val ratios are 0"
                for hs in kept.values():
                    drop(hs, "single_dose_patient", f"patient {pid} has only {next(iter(kept))} dose ({why})")
                continue
            p.split = _split_of(p.u, cum)
            if p.split == Split.TEST and not p.paired:
                # Single-dose patients cannot be paired: spread them over train/val in the same proportions.
                u2 = (p.u - cum[1]) / (1.0 - cum[1])
                p.split = Split.TRAIN if u2 < cum[0] / cum[1] else Split.VAL
            members.append(p)
        _fill_empty_splits(members, config.ratios, bounds)
        for p in members:
            plan.patients[p.patient_id] = p

    # 5. dose side in train/val: balanced per body part (ties keep the running total over body parts even)
    for split in (Split.TRAIN, Split.VAL):
        running = {Dose.LOW: 0, Dose.FULL: 0}
        for bp in sorted(per_bp):
            group = [p for p in plan.patients.values() if p.body_part == bp and p.split == split]
            paired = sorted((p for p in group if p.paired), key=lambda p: (p.v, p.patient_id))
            n_ld = sum(1 for p in group if not p.paired and Dose.LOW in p.series)
            n_fd = sum(1 for p in group if not p.paired and Dose.FULL in p.series)
            x = n_fd + len(paired) - n_ld  # 2k = x balances low and full patients
            k = x // 2 + (x % 2 if running[Dose.LOW] <= running[Dose.FULL] else 0)
            k = max(0, min(len(paired), k))
            for i, p in enumerate(paired):
                p.dose = Dose.LOW if i < k else Dose.FULL
            for p in group:
                if not p.paired:
                    p.dose = next(iter(p.series))
                running[p.dose] += 1

    # 6. rows
    for pid in sorted(plan.patients):
        p = plan.patients[pid]
        kept = candidates[pid]
        if p.split == Split.TEST:
            p.dose = "both"
            _pair(p, kept[Dose.LOW], kept[Dose.FULL], config.z_tolerance, plan, drop)
            continue
        if config.paired and p.paired:  # the unpaired rows below stay as they are
            _pair(p, kept[Dose.LOW], kept[Dose.FULL], config.z_tolerance, plan, lambda *_: None, out=plan.split_pairs[p.split])
        key = f"{p.split}_{'ld' if p.dose == Dose.LOW else 'fd'}"
        plan.rows[key].extend(sorted(kept[p.dose], key=lambda h: (h.z, h.sop_uid)))
        for dose, hs in kept.items():
            if dose != p.dose:
                drop(hs, "other_dose", f"{p.split} patient {pid} contributes its {p.dose}-dose series only")
    plan.skipped.sort(key=lambda s: (s.path, s.reason))
    return plan


def _consistent_size(hs: list[SliceHeader], drop) -> list[SliceHeader]:
    """Keep the slices with the series' most common Rows x Columns; drop the rest as inconsistent_size."""
    sizes = Counter((h.rows, h.cols) for h in hs)
    if len(sizes) == 1:
        return hs
    (rows, cols), _ = sorted(sizes.items(), key=lambda kv: (-kv[1], kv[0]))[0]
    keep = [h for h in hs if (h.rows, h.cols) == (rows, cols)]
    for h in hs:
        if (h.rows, h.cols) != (rows, cols):
            drop([h], "inconsistent_size", f"{h.rows}x{h.cols} in series {h.series_uid} of {rows}x{cols} slices")
    return keep


def _fill_empty_splits(members: list[PatientPlan], ratios: tuple[float, float, float], bounds: dict) -> None:
    """Small-cohort rule: a split with a non-zero ratio that the hash left empty takes one patient.

    Filled in the order train, test, val; the patient moved is the one whose hash lies nearest that
    split's interval, taken from a split that keeps at least one patient (test needs a paired patient).
    Only patients moved here (``assigned_by='min_one'``) can change split when patients are added.
    """
    ratio = dict(zip(SPLITS, ratios, strict=True))
    for split in (Split.TRAIN, Split.TEST, Split.VAL):
        if ratio[split] <= 0 or any(p.split == split for p in members):
            continue
        counts = Counter(p.split for p in members)
        lo, hi = bounds[split]
        donors = [p for p in members if counts[p.split] > 1 and (split != Split.TEST or p.paired)]
        if not donors:
            continue
        best = min(donors, key=lambda p: (_interval_distance(p.u, lo, hi), p.patient_id))
        logger.info(
            "body part %s: no patient hashed to %s; moved %s there (small-cohort rule)",
            best.body_part, split, best.patient_id,
        )  # fmt: skip
        best.split = split
        best.assigned_by = "min_one"


def _pair(
    p: PatientPlan, low: list[SliceHeader], full: list[SliceHeader], tolerance: float, plan: ManifestPlan, drop,
    out: list | None = None,
) -> None:
    """Match low- and full-dose slices one to one on z (nearest first, within tolerance x FD spacing).

    Pairs go to ``out`` (default: the test pairs of ``plan``).
    """
    out = plan.pairs if out is None else out
    if (low[0].rows, low[0].cols) != (full[0].rows, full[0].cols):
        detail = (
            f"test patient {p.patient_id}: low dose {low[0].rows}x{low[0].cols}, "
            f"full dose {full[0].rows}x{full[0].cols}"
        )
        drop(low, "inconsistent_size", detail)
        drop(full, "inconsistent_size", detail)
        return
    low = sorted(low, key=lambda h: (h.z, h.sop_uid))
    full = sorted(full, key=lambda h: (h.z, h.sop_uid))
    spacing = _spacing(full) or _spacing(low) or full[0].slice_thickness or 1.0
    tol = tolerance * spacing
    fz = [h.z for h in full]
    lz = [h.z for h in low]
    cands = set()
    for i, z in enumerate(lz):
        for j in _nearest(fz, z):
            cands.add((abs(z - fz[j]), i, j))
    for j, z in enumerate(fz):
        for i in _nearest(lz, z):
            cands.add((abs(z - lz[i]), i, j))
    used_l: set[int] = set()
    used_f: set[int] = set()
    for dz, i, j in sorted(cands):
        if dz <= tol and i not in used_l and j not in used_f:
            used_l.add(i)
            used_f.add(j)
            out.append((low[i], full[j]))
    for i, h in enumerate(low):
        if i not in used_l:
            drop([h], "unmatched_z", f"low-dose z {h.z:.3f} mm: no full-dose slice within {tol:.3f} mm")
    for j, h in enumerate(full):
        if j not in used_f:
            drop([h], "unmatched_z", f"full-dose z {h.z:.3f} mm: no low-dose slice within {tol:.3f} mm")


def _nearest(sorted_z: list[float], z: float) -> list[int]:
    k = bisect.bisect_left(sorted_z, z)
    return [j for j in (k - 1, k) if 0 <= j < len(sorted_z)]


def _spacing(hs: list[SliceHeader]) -> float | None:
    """Median distance between consecutive distinct slice positions (mm), None for one slice."""
    diffs = sorted(b.z - a.z for a, b in zip(hs, hs[1:], strict=False) if b.z - a.z > 1e-6)
    return diffs[len(diffs) // 2] if diffs else None


# ----------------------------------------------------------------------------------------------------
# Writing


def _fmt(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(round(value, 6) + 0.0)  # + 0.0 turns -0.0 into 0.0
    return str(value)


def _write_csv(path: Path, columns: Sequence[str], rows: Iterable[Sequence[object]]) -> int:
    """Stream rows to a UTF-8 CSV ('\\n' line ends), fsync it; returns the number of rows."""
    n = 0
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(columns)
        for row in rows:
            w.writerow([_fmt(v) for v in row])
            n += 1
        f.flush()
        os.fsync(f.fileno())
    return n


def _dose_row(h: SliceHeader, bp: str, dose: str) -> tuple:
    return (
        h.patient_id, bp, dose, h.series_uid, h.sop_uid, h.path, h.z,
        h.study_uid, h.series_description, h.instance_number, h.rows, h.cols,
        h.pixel_spacing_row, h.pixel_spacing_col, h.slice_thickness,
        h.kvp, h.tube_current, h.exposure, h.ctdivol, h.kernel, h.manufacturer,
    )  # fmt: skip


def _pair_row(lo: SliceHeader, fd: SliceHeader, bp: str) -> tuple:
    return (
        fd.patient_id, bp, fd.z, lo.path, fd.path, lo.sop_uid, fd.sop_uid,
        lo.z, fd.z, lo.series_uid, fd.series_uid, fd.study_uid,
        fd.rows, fd.cols, fd.pixel_spacing_row, fd.pixel_spacing_col, fd.slice_thickness, fd.kernel,
    )  # fmt: skip


def write_manifest(
    plan: ManifestPlan, folder: Path, data_root: Path, config: ManifestConfig, files_scanned: int
) -> dict:
    """Write every manifest file into ``folder`` (rows streamed, sorted; JSON keys sorted).

    Returns:
        The ``splits.json`` document.
    """
    from ldct_monai.io_utils import atomic_write_text

    folder = Path(folder)
    pats = plan.patients
    for key in DOSE_FILES:
        dose = Dose.LOW if key.endswith("_ld") else Dose.FULL
        rows = sorted(plan.rows[key], key=lambda h: (h.patient_id, h.series_uid, h.z, h.sop_uid))
        out_rows = (_dose_row(h, pats[h.patient_id].body_part, dose) for h in rows)
        _write_csv(folder / SPLIT_FILES[key], DOSE_COLUMNS, out_rows)
    pairs = sorted(plan.pairs, key=lambda lf: (lf[1].patient_id, lf[1].z, lf[1].sop_uid))
    pair_rows = (_pair_row(lo, fd, pats[fd.patient_id].body_part) for lo, fd in pairs)
    _write_csv(folder / SPLIT_FILES["test_pairs"], PAIR_COLUMNS, pair_rows)
    if config.paired:
        for split, split_pairs in plan.split_pairs.items():
            rows_ = sorted(split_pairs, key=lambda lf: (lf[1].patient_id, lf[1].z, lf[1].sop_uid))
            _write_csv(folder / SPLIT_FILES[f"{split}_pairs"], PAIR_COLUMNS,
                       (_pair_row(lo, fd, pats[fd.patient_id].body_part) for lo, fd in rows_))
    _write_csv(folder / SPLIT_FILES["skipped"], SKIPPED_COLUMNS, plan.skipped)
    doc = splits_json(plan, data_root, config, files_scanned)
    atomic_write_text(folder / "splits.json", json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return doc


def count_plan(plan: ManifestPlan) -> dict:
    """Patients, series and slices per split / body part / dose (test: patients and pairs)."""
    counts: dict = {s: {} for s in SPLITS}
    for p in plan.patients.values():
        if p.split == Split.TEST:
            continue
        c = counts[p.split].setdefault(p.body_part, {}).setdefault(p.dose, {"patients": 0, "series": 0, "slices": 0})
        c["patients"] += 1
        c["series"] += 1
    for key, rows in plan.rows.items():
        split, dose = key.split("_")
        for h in rows:
            bp = plan.patients[h.patient_id].body_part
            counts[split][bp][Dose.LOW if dose == "ld" else Dose.FULL]["slices"] += 1
    for p in plan.patients.values():
        if p.split == Split.TEST:
            counts[Split.TEST].setdefault(p.body_part, {"patients": 0, "pairs": 0})["patients"] += 1
    for _lo, fd in plan.pairs:
        counts[Split.TEST][plan.patients[fd.patient_id].body_part]["pairs"] += 1
    return counts


def splits_json(plan: ManifestPlan, data_root: Path, config: ManifestConfig, files_scanned: int) -> dict:
    """The ``splits.json`` document (no timestamp: the same tree gives the same bytes and hash)."""
    return {
        "tool": "ldct-monai build-manifest",
        "version": __version__,
        "data_root": str(Path(data_root).resolve()),
        "seed": config.seed,
        "ratios": dict(zip(SPLITS, config.ratios, strict=True)),
        "config": config.saved(),
        "files_scanned": files_scanned,
        "patients": {
            pid: {
                "split": p.split,
                "body_part": p.body_part,
                "dose": p.dose,
                "doses_available": sorted(p.series),
                "series": dict(sorted(p.series.items())),
                "assigned_by": p.assigned_by,
            }
            for pid, p in sorted(plan.patients.items())
        },
        "counts": count_plan(plan),
        "skipped": dict(sorted(Counter(s.reason for s in plan.skipped).items())),
    }


_HINTS = {
    "unknown_dose": " Series descriptions match neither dose pattern: see --ld-pattern / --fd-pattern / --default-dose.",
    "unknown_body_part": " Body part unknown: see --default-body-part.",
}


def build_manifest(
    data_root: Path,
    out_dir: Path,
    config: ManifestConfig | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Scan ``data_root`` (headers only, in parallel) and write the manifest folder ``out_dir`` atomically.

    Args:
        data_root: root of a TCIA-style DICOM tree (any layout works; folders are only a fallback for
            the patient ID).
        out_dir: manifest folder to create (refused when it exists and is not empty, unless ``overwrite``).
        config: split and filter settings; defaults when None.
        overwrite: replace an existing ``out_dir``.
        progress: show a progress bar (files/s, ETA) on stderr.

    Returns:
        The contents of ``splits.json`` (counts per split / body part / dose, skipped per reason, the
        patients) plus ``out_dir`` and ``rows`` (rows written per file).

    Raises:
        InputError: ``data_root`` is missing or not a folder, has no files, or nothing usable was found.
        OutputExistsError: ``out_dir`` exists and is not empty and ``overwrite`` is False.
    """
    from ldct_monai.io_utils import atomic_output_dir, check_output_dir
    from ldct_monai.dicom.scan import scan_tree

    config = config or ManifestConfig()
    data_root = Path(data_root)
    if not data_root.exists():
        raise InputError(f"{data_root}: data root does not exist.")
    if not data_root.is_dir():
        raise InputError(f"{data_root}: data root is not a folder.")
    out_dir = Path(out_dir)
    check_output_dir(out_dir, overwrite)  # fail before a long scan, not after
    headers, skipped, n_files = scan_tree(data_root, config.workers, progress, exclude=[out_dir])
    if n_files == 0:
        raise InputError(f"{data_root}: no files found (expected a DICOM tree such as C001/<study>/<series>/1-001.dcm).")
    plan = plan_manifest(headers, config)
    del headers
    plan.skipped = sorted([*skipped, *plan.skipped], key=lambda s: (s.path, s.reason))
    if plan.usable() == 0:
        reasons = Counter(s.reason for s in plan.skipped).most_common()
        found = ", ".join(f"{n} {r}" for r, n in reasons)
        hints = "".join(_HINTS[r] for r, _ in reasons if r in _HINTS)
        raise InputError(
            f"{data_root}: no usable CT slices among {n_files} files "
            f"(expected TCIA-style CT series; found {found}).{hints}"
        )
    for split in (Split.TRAIN, Split.VAL):
        for dose in ("ld", "fd"):
            if plan.rows[f"{split}_{dose}"] == [] and any(p.split == split for p in plan.patients.values()):
                name = Dose.LOW if dose == "ld" else Dose.FULL
                logger.warning("%s has no %s-dose slices: unpaired training needs both doses.", split, name)
    with atomic_output_dir(out_dir, overwrite) as tmp:
        summary = write_manifest(plan, tmp, data_root, config, n_files)
    summary["out_dir"] = str(out_dir)
    summary["rows"] = {k: len(plan.rows[k]) for k in DOSE_FILES}
    summary["rows"] |= {"test_pairs": len(plan.pairs), "skipped": len(plan.skipped)}
    if config.paired:
        summary["rows"] |= {f"{k}_pairs": len(v) for k, v in plan.split_pairs.items()}
    return summary


def summary_table(summary: dict):
    """A rich Table of a :func:`build_manifest` summary: patients / slices per body part, split and dose."""
    from rich.table import Table

    table = Table(
        title=f"Manifest {summary['out_dir']} ({summary['files_scanned']} files scanned)",
        caption="patients / slices (test: patients / LD-FD pairs)",
    )
    table.add_column("body part")
    for col in ("train LD", "train FD", "val LD", "val FD", Split.TEST):
        table.add_column(col, justify="right")
    counts = summary["counts"]
    parts = sorted({bp for split in counts.values() for bp in split})
    total = defaultdict(lambda: [0, 0])
    for bp in parts:
        cells = []
        for split, dose in ((Split.TRAIN, Dose.LOW), (Split.TRAIN, Dose.FULL), (Split.VAL, Dose.LOW), (Split.VAL, Dose.FULL)):
            c = counts[split].get(bp, {}).get(dose, {"patients": 0, "slices": 0})
            cells.append(f"{c['patients']} / {c['slices']}")
            total[(split, dose)][0] += c["patients"]
            total[(split, dose)][1] += c["slices"]
        t = counts[Split.TEST].get(bp, {"patients": 0, "pairs": 0})
        cells.append(f"{t['patients']} / {t['pairs']}")
        total[Split.TEST][0] += t["patients"]
        total[Split.TEST][1] += t["pairs"]
        table.add_row(bp, *cells)
    table.add_section()
    keys = [(Split.TRAIN, Dose.LOW), (Split.TRAIN, Dose.FULL), (Split.VAL, Dose.LOW), (Split.VAL, Dose.FULL)]
    table.add_row("all", *[f"{total[k][0]} / {total[k][1]}" for k in keys], f"{total['test'][0]} / {total['test'][1]}")
    skipped = Table(title="Skipped files (skipped.csv)")
    skipped.add_column("reason")
    skipped.add_column("files", justify="right")
    skipped.add_column("meaning")
    for reason, n in summary["skipped"].items():
        skipped.add_row(reason, str(n), REASONS.get(reason, ""))
    if not summary["skipped"]:
        skipped.add_row("(none)", "0", "")
    from rich.console import Group

    return Group(table, skipped)

"""3-D anatomical phantoms (chest, abdomen, head) in Hounsfield units, sampled at any slice position.

A phantom is an ordered list of solid shapes (ellipsoids, elliptic cylinders with a z extent, boxes)
in patient coordinates (DICOM LPS, mm: +x patient left, +y posterior, +z head), painted in order, later
shapes over earlier ones. Edges are anti-aliased over one pixel (partial volume), and a shape's value can
carry a 3-D texture: a sum of terms, each an amplitude (HU) times a pattern made from smooth random fields
sampled continuously in (x, y, z), so neighbouring slices of a series are continuous and a 3 mm slice is
the average of its 1 mm sub-slices. Vessels and airways are tubes around the intersection curves of the
zero sets of two random fields (a branching network), septa and fascia are sheets around the zero set of
one field, parenchyma and trabecular bone are band-limited fields.

Two kinds of field: 2 mm and 4 mm grids over the whole scanned range (large vessels, organ-scale
texture), and periodic 0.5 mm "tiles" (:class:`Tile`, 80 x 80 x 20 mm, wrapped, each seen through its own
random rotation) for the detail at the scale of real full-dose images (0.5-3 mm: small vessels, bronchi,
fat septa, noise-like parenchyma). Tiles cost the same memory whatever the series length, and every
fine pattern combines two tiles of different sizes and rotations, so it does not repeat visibly.

Every patient draws its own size, shape, fat, organ positions and lesions from its seed. Lesions are
small (4-10 mm radius) low-contrast spheres, 5-20 HU above or below the organ they sit in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ldct_monai.schema import BodyPart

# Tissue values (HU) at 120 kVp, unenhanced; each patient jitters them by a few HU.
AIR, LUNG, FAT, WATER, CSF = -1000.0, -860.0, -100.0, 0.0, 8.0
MUSCLE, BLOOD, LIVER, SPLEEN, KIDNEY = 50.0, 42.0, 60.0, 48.0, 32.0
GREY, WHITE = 40.0, 28.0
CORTICAL, TRABECULAR, SKULL, DIPLOE, CARTILAGE = 1100.0, 230.0, 1500.0, 700.0, 120.0


PAINT_BLOCK = 8  # sub-slices painted together (memory: ~16 full-image texture patterns per sub-slice)


@dataclass
class Shape:
    """One solid: ``kind`` ``ellipsoid`` | ``cylinder`` (elliptic, between ``z0`` and ``z1``) | ``box``.

    Attributes:
        centre: (x, y, z) mm.
        radii: (a, b, c) semi-axes mm (``c`` unused for cylinders; for boxes, half widths).
        value: HU painted inside.
        angle: rotation about z, radians.
        texture: None, or terms ``((pattern, amplitude_HU), ...)`` added to ``value`` (a single
            ``(pattern, amplitude_HU)`` pair is accepted); patterns are listed in :data:`PATTERNS`.
    """

    kind: str
    centre: tuple[float, float, float]
    radii: tuple[float, float, float]
    value: float
    angle: float = 0.0
    z0: float = -math.inf
    z1: float = math.inf
    texture: tuple[tuple[str, float], ...] | tuple[str, float] | None = None

    def __post_init__(self) -> None:
        if self.texture is not None and isinstance(self.texture[0], str):
            self.texture = (self.texture,)  # one term written as a bare pair
        for name, _ in self.texture or ():
            if name not in PATTERNS:
                raise ValueError(f"unknown texture pattern {name!r}; expected one of {sorted(PATTERNS)}.")

    def z_range(self) -> tuple[float, float]:
        if self.kind == "ellipsoid":
            return self.centre[2] - self.radii[2], self.centre[2] + self.radii[2]
        return self.z0, self.z1


#: Texture patterns a shape can use, and what each one is (all continuous in x, y, z).
PATTERNS: dict[str, str] = {
    "organ": "unit-variance field, ~5 mm correlation (4 mm grid): organ-scale inhomogeneity",
    "fine": "unit-variance field, ~1.6 mm correlation (2 mm grid)",
    "vessels": "large vessel tree, 2-5 mm tubes, peak 1 (2 mm grid fields; chest and abdomen)",
    "micro": "unit-variance band-limited field, 0.5-2 mm correlation (two tiles): noise-like parenchyma",
    "twigs": "small vessels / bronchioles, tubes ~1 mm across, peak 1 (tiles)",
    "sheets": "septa and fascia, sheets ~1 mm thick, peak 1 (tile)",
    "airway_wall": "bronchial walls around small airways, peak 1 (tiles)",
    "airway_lumen": "air in the same small airways, peak 1 (tiles)",
}


@dataclass
class Tile:
    """A periodic unit-variance 3-D field on a fine grid, sampled with wrap-around through a rotation.

    Attributes:
        data: (D + 1, H + 1, W + 1) field; the last plane of each axis repeats the first (wrap).
        voxel: voxel size, mm.
        rotation: (3, 3) rotation applied to patient coordinates before wrapping, so the tile's period
            is not aligned with the image axes.
        offset: (3,) mm added after the rotation.
    """

    data: torch.Tensor
    voxel: float
    rotation: torch.Tensor
    offset: torch.Tensor

    def sample(self, coords: torch.Tensor, zt: torch.Tensor) -> torch.Tensor:
        """Values at the (len(zt), n, n) pixel centres ``coords`` (x = y) and slice positions ``zt`` (mm)."""
        n, d = coords.numel(), zt.numel()
        r = self.rotation
        xyz = (coords[None, None, :, None] * r[:, 0] + coords[None, :, None, None] * r[:, 1]
               + zt[:, None, None, None] * r[:, 2] + self.offset)  # (d, n, n, 3): x, y, z in tile axes
        size = torch.tensor([self.data.shape[2] - 1, self.data.shape[1] - 1, self.data.shape[0] - 1],
                            dtype=torch.float32) * self.voxel
        grid = 2 * torch.remainder(xyz, size) / size - 1  # wrap: one period maps onto [-1, 1]
        return F.grid_sample(self.data[None, None], grid.reshape(1, d, n, n, 3), mode="bilinear",
                             align_corners=True)[0, 0]


@dataclass
class Phantom:
    """A patient: shapes plus the random texture fields they refer to.

    Attributes:
        body_part: C, L or N.
        fov: reconstruction field of view (image width), mm.
        shapes: painted in order.
        fields: name -> (D, H, W) unit-variance field covering ``field_box``.
        tiles: name -> periodic fine field (:class:`Tile`).
        field_box: ((x0, x1), (y0, y1), (z0, z1)) mm covered by every field.
        z_centre: z (mm) where the scanned range is centred.
        lesions: (x, y, z, radius, contrast) of every lesion, for tests and docs.
    """

    body_part: BodyPart
    fov: float
    shapes: list[Shape] = field(default_factory=list)
    fields: dict[str, torch.Tensor] = field(default_factory=dict)
    tiles: dict[str, Tile] = field(default_factory=dict)
    field_box: tuple[tuple[float, float], ...] = ((-1, 1), (-1, 1), (-1, 1))
    z_centre: float = 0.0
    lesions: list[tuple[float, float, float, float, float]] = field(default_factory=list)

    def add(self, kind: str, centre, radii, value: float, **kw) -> Shape:
        s = Shape(kind, tuple(float(c) for c in centre), tuple(float(r) for r in radii), float(value), **kw)
        self.shapes.append(s)
        return s

    def sample(self, n: int, z: np.ndarray | list[float], sub: int = 1, thickness: float = 0.0) -> torch.Tensor:
        """HU volume (len(z), n, n) on an ``n`` x ``n`` grid spanning :attr:`fov`.

        Args:
            n: pixels per side.
            z: slice centres, mm.
            sub: sub-slices averaged across each slice's ``thickness`` (slice sensitivity profile).
            thickness: nominal slice thickness, mm.
        """
        z = np.asarray(z, dtype=np.float64)
        offsets = (np.arange(sub) + 0.5) / sub - 0.5 if sub > 1 else np.zeros(1)
        zz = (z[:, None] + offsets[None, :] * thickness).reshape(-1)
        # painted a few sub-slices at a time: the texture patterns of a block are full images each
        vol = torch.cat([self._paint(n, zz[i : i + PAINT_BLOCK]) for i in range(0, len(zz), PAINT_BLOCK)])
        return vol.reshape(len(z), len(offsets), n, n).mean(dim=1)

    def _paint(self, n: int, zs: np.ndarray) -> torch.Tensor:
        px = self.fov / n
        coords = (torch.arange(n, dtype=torch.float32) - (n - 1) / 2) * px  # pixel centres, mm
        zt = torch.as_tensor(zs, dtype=torch.float32)
        img = torch.full((len(zs), n, n), AIR)
        patterns: dict[str, torch.Tensor] = {}  # computed on first use, over the whole image
        for s in self.shapes:
            lo, hi = s.z_range()
            keep = (zt >= lo - px) & (zt <= hi + px)
            if not bool(keep.any()):
                continue
            r = max(s.radii[0], s.radii[1]) if s.kind != "box" else math.hypot(s.radii[0], s.radii[1])
            c0, c1 = _index_range(coords, s.centre[0] - r - 2 * px, s.centre[0] + r + 2 * px)
            r0, r1 = _index_range(coords, s.centre[1] - r - 2 * px, s.centre[1] + r + 2 * px)
            if c1 <= c0 or r1 <= r0:
                continue
            idx = torch.nonzero(keep).reshape(-1)
            x = coords[c0:c1][None, None, :] - s.centre[0]
            y = coords[r0:r1][None, :, None] - s.centre[1]
            zz = zt[idx][:, None, None] - s.centre[2]
            m = _membership(s, x, y, zz, px)
            value = torch.as_tensor(s.value)
            for name, amp in s.texture or ():
                if name not in patterns:
                    patterns[name] = self._pattern(name, coords, zt, patterns)
                value = value + amp * patterns[name][idx, r0:r1, c0:c1]
            region = img[idx, r0:r1, c0:c1]
            img[idx, r0:r1, c0:c1] = region + m * (value - region)
        return img

    def _pattern(
        self, name: str, coords: torch.Tensor, zt: torch.Tensor, cache: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """One texture pattern of :data:`PATTERNS` over the whole (len(zt), n, n) image.

        Tile samples are kept in ``cache`` (under ``tile:NAME``): the airway wall and lumen share theirs.
        """

        def tile(key: str) -> torch.Tensor:
            if f"tile:{key}" not in cache:
                cache[f"tile:{key}"] = self.tiles[key].sample(coords, zt)
            return cache[f"tile:{key}"]

        if name in ("organ", "fine"):
            return self._sample_field(self.fields[name], coords, zt)
        if name == "vessels":
            f1, f2 = (self._sample_field(self.fields[k], coords, zt) for k in ("vessel_a", "vessel_b"))
            return torch.exp(-(f1**2 + f2**2) / (2 * 0.16**2))
        if name == "micro":
            # two scales of noise-like detail; unit variance overall
            return (tile("micro_a") + tile("micro_b")) / math.sqrt(2.0)
        if name == "twigs":
            # tubes along the curves where both fields vanish; 0.17 of the field std sets ~1 mm diameter
            return torch.exp(-(tile("twigs_a") ** 2 + tile("twigs_b") ** 2) / (2 * 0.17**2))
        if name == "sheets":
            return torch.exp(-tile("sheets") ** 2 / (2 * 0.10**2))
        # small airways: air inside radius 0.16 (field units), a wall ring just outside it
        d = torch.sqrt(tile("airway_a") ** 2 + tile("airway_b") ** 2)
        if name == "airway_lumen":
            return torch.sigmoid((0.16 - d) / 0.015)
        return torch.exp(-((d - 0.19) ** 2) / (2 * 0.03**2))

    def _sample_field(self, f: torch.Tensor, coords: torch.Tensor, zt: torch.Tensor) -> torch.Tensor:
        (x0, x1), (y0, y1), (z0, z1) = self.field_box
        gx = (2 * (coords - x0) / (x1 - x0) - 1).clamp(-1, 1)
        gy = (2 * (coords - y0) / (y1 - y0) - 1).clamp(-1, 1)
        gz = (2 * (zt - z0) / (z1 - z0) - 1).clamp(-1, 1)
        n, d = coords.numel(), zt.numel()
        grid = torch.stack(
            (gx[None, None, :].expand(d, n, n), gy[None, :, None].expand(d, n, n), gz[:, None, None].expand(d, n, n)),
            dim=-1,
        )[None]
        return F.grid_sample(f[None, None], grid, mode="bilinear", align_corners=True)[0, 0]


def _index_range(coords: torch.Tensor, lo: float, hi: float) -> tuple[int, int]:
    n, px = coords.numel(), float(coords[1] - coords[0])
    i0 = int(math.floor((lo - float(coords[0])) / px))
    i1 = int(math.ceil((hi - float(coords[0])) / px)) + 1
    return max(0, i0), min(n, i1)


def _membership(s: Shape, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor, px: float) -> torch.Tensor:
    """Fraction of each pixel inside the shape: 1 inside, 0 outside, a linear ramp one pixel wide."""
    ca, sa = math.cos(s.angle), math.sin(s.angle)
    u = x * ca + y * sa
    v = -x * sa + y * ca
    a, b, c = s.radii
    zc = z + s.centre[2]
    bounded = math.isfinite(s.z0) or math.isfinite(s.z1)
    # signed distance outside the z extent (cylinders, boxes); unbounded shapes stay 2-D and broadcast
    z_out = torch.maximum(s.z0 - zc, zc - s.z1) if bounded else None
    if s.kind == "box":
        d = torch.maximum(u.abs() - a, v.abs() - b)
        d = d if z_out is None else torch.maximum(d, z_out)
        return (0.5 - d / px).clamp(0, 1)
    q = (u / a) ** 2 + (v / b) ** 2
    if s.kind == "ellipsoid":
        q = q + (z / c) ** 2
        grad = 2 * torch.sqrt((u / a**2) ** 2 + (v / b**2) ** 2 + (z / c**2) ** 2 + 1e-12)
        d = (q - 1) / grad
    else:  # elliptic cylinder between z0 and z1
        grad = 2 * torch.sqrt((u / a**2) ** 2 + (v / b**2) ** 2 + 1e-12)
        d = (q - 1) / grad
        d = d if z_out is None else torch.maximum(d, z_out)
    return (0.5 - d / px).clamp(0, 1)


def _field(rng: np.random.Generator, shape: tuple[int, int, int], sigma: float) -> torch.Tensor:
    """Gaussian random field with unit variance, correlation length ``sigma`` voxels (FFT filtering)."""
    noise = rng.standard_normal(shape)
    freqs = np.meshgrid(*[np.fft.fftfreq(s) for s in shape], indexing="ij")
    k2 = sum(f**2 for f in freqs)
    filt = np.exp(-2 * (math.pi * sigma) ** 2 * k2)
    f = np.fft.ifftn(np.fft.fftn(noise) * filt).real
    f = (f - f.mean()) / (f.std() + 1e-12)
    return torch.as_tensor(f, dtype=torch.float32)


#: Fine tiles: name -> (correlation length in voxels, tile shape (D, H, W)). 0.5 mm voxels, so the
#: smallest detail is about one pixel of a 512 matrix; the two tiles of a pattern differ in size so
#: their sum does not repeat.
TILE_VOXEL_MM = 0.5
TILES: dict[str, tuple[float, tuple[int, int, int]]] = {
    "micro_a": (1.2, (40, 160, 160)),  # ~0.6 mm: pixel-scale parenchyma
    "micro_b": (3.0, (36, 144, 144)),  # ~1.5 mm
    "twigs_a": (5.0, (40, 160, 160)),  # ~2.5 mm: small vessels a few mm apart
    "twigs_b": (5.0, (36, 144, 144)),
    "sheets": (8.0, (40, 160, 160)),  # ~4 mm: septa about a centimetre apart
}
CHEST_TILES: dict[str, tuple[float, tuple[int, int, int]]] = {
    "airway_a": (7.0, (40, 160, 160)),  # small bronchi, sparser than the vessels
    "airway_b": (7.0, (36, 144, 144)),
}


def _tile(rng: np.random.Generator, sigma: float, shape: tuple[int, int, int]) -> Tile:
    """A periodic unit-variance field (FFT filtering is periodic), wrap-padded, with a random rotation."""
    f = _field(rng, shape, sigma)
    f = torch.cat((f, f[:1]), 0)
    f = torch.cat((f, f[:, :1]), 1)
    f = torch.cat((f, f[:, :, :1]), 2)
    q, _ = np.linalg.qr(rng.standard_normal((3, 3)))  # a random rotation (or reflection: same statistics)
    offset = rng.uniform(0, TILE_VOXEL_MM * min(shape), 3)
    return Tile(f.contiguous(), TILE_VOXEL_MM, torch.as_tensor(q, dtype=torch.float32),
                torch.as_tensor(offset, dtype=torch.float32))


def make_phantom(body_part: BodyPart | str, rng: np.random.Generator, z_extent: float) -> Phantom:
    """A random patient of ``body_part`` whose anatomy covers ``z_extent`` mm around z = 0.

    Args:
        body_part: C (chest), L (abdomen / liver) or N (head).
        rng: the patient's random generator (all per-patient variation comes from it).
        z_extent: length of the scanned range, mm (texture fields cover it with a margin).
    """
    bp = BodyPart(body_part)
    builder = {BodyPart.CHEST: _chest, BodyPart.ABDOMEN: _abdomen, BodyPart.HEAD: _head}[bp]
    ph = builder(rng)
    half = ph.fov / 2
    zh = z_extent / 2 + 8.0
    ph.field_box = ((-half, half), (-half, half), (-zh, zh))
    # texture fields: 2 mm voxels for vessels and fine texture, 4 mm for organ parenchyma
    n_fine = int(math.ceil(ph.fov / 2.0)) + 1
    nz_fine = int(math.ceil(2 * zh / 2.0)) + 1
    n_coarse = int(math.ceil(ph.fov / 4.0)) + 1
    nz_coarse = int(math.ceil(2 * zh / 4.0)) + 1
    ph.fields["organ"] = _field(rng, (nz_coarse, n_coarse, n_coarse), sigma=1.2)
    ph.fields["fine"] = _field(rng, (nz_fine, n_fine, n_fine), sigma=0.8)
    if bp != BodyPart.HEAD:  # lung vessels; abdominal (mesenteric, hepatic) vessels
        ph.fields["vessel_a"] = _field(rng, (nz_fine, n_fine, n_fine), sigma=2.5)
        ph.fields["vessel_b"] = _field(rng, (nz_fine, n_fine, n_fine), sigma=2.5)
    tiles = {**TILES, **(CHEST_TILES if bp == BodyPart.CHEST else {})}
    for name, (sigma, shape) in tiles.items():
        ph.tiles[name] = _tile(rng, sigma, shape)
    return ph


# Texture terms (pattern, HU) per tissue. Real full-dose anatomy carries a few to ~20 HU of structure in
# soft tissue at the 0.5-3 mm scale (small vessels, septa, fat between muscle fascicles) and hundreds of
# HU in the lungs (vessels and bronchi down to the pixel size): without it a denoiser learns to blur.
TEX_SUBCUTANEOUS_FAT = (("fine", 6.0), ("micro", 8.0), ("sheets", 110.0))  # fibrous septa (~0 HU) in fat
TEX_MUSCLE = (("fine", 5.0), ("micro", 10.0), ("sheets", -80.0))  # fat between fascicles (marbling)
TEX_VISCERAL_FAT = (("fine", 8.0), ("micro", 8.0), ("sheets", 80.0), ("twigs", 200.0),
                    ("vessels", 220.0))  # mesenteric / mediastinal vessels (2-5 mm) and their branches in fat
TEX_LIVER = (("organ", 6.0), ("micro", 10.0), ("twigs", 40.0),
             ("vessels", 45.0))  # portal / hepatic vein branches, brighter in the portal venous phase
TEX_LUNG = (("vessels", 880.0), ("fine", 12.0), ("micro", 25.0), ("twigs", 450.0),  # small vessels
            ("airway_wall", 450.0), ("airway_lumen", -140.0))  # small bronchi: soft-tissue wall, air inside
TEX_BRAIN = (("fine", 4.0), ("micro", 2.5))  # grey matter: a few HU (the head window is only 80 HU wide)


def _tex_organ(amp: float, vessels: float = 30.0) -> tuple[tuple[str, float], ...]:
    """Organ parenchyma: ``amp`` HU of organ-scale texture, fine detail and small vessels."""
    return (("organ", amp), ("micro", 10.0), ("twigs", vessels))


def _tex_bone(amp: float) -> tuple[tuple[str, float], ...]:
    """Trabecular pattern: ``amp`` HU at 1.6 mm and three quarters of it at 0.5-1.5 mm."""
    return (("fine", amp), ("micro", 0.75 * amp))


def _jit(rng: np.random.Generator, scale: float) -> float:
    return float(rng.uniform(-scale, scale))


def _body_wall(ph: Phantom, rng: np.random.Generator, a: float, b: float, fat: float, muscle: float) -> None:
    """Skin/subcutaneous fat, muscle layer, and the visceral fat inside it; the patient table below."""
    ph.add("cylinder", (0, 0, 0), (a, b, 0), FAT + _jit(rng, 10), texture=TEX_SUBCUTANEOUS_FAT)
    ph.add("cylinder", (0, 0, 0), (a - fat, b - fat, 0), MUSCLE + _jit(rng, 5), texture=TEX_MUSCLE)
    inner = (a - fat - muscle, b - fat - muscle, 0)
    ph.add("cylinder", (0, 0, 0), inner, FAT + 10 + _jit(rng, 10), texture=TEX_VISCERAL_FAT)
    # carbon-fibre table top under the patient (a thin, dense shell over foam)
    y = b + 6.0
    ph.add("box", (0, y + 4, 0), (min(ph.fov * 0.42, 230), 4.0, 0), -850.0)
    ph.add("box", (0, y + 1, 0), (min(ph.fov * 0.42, 230), 1.0, 0), 250.0)
    ph.add("box", (0, y + 8, 0), (min(ph.fov * 0.42, 230), 1.0, 0), 250.0)


def _spine(ph: Phantom, rng: np.random.Generator, y: float, r: float, z_phase: float) -> None:
    """Vertebral bodies (cortical shell, trabecular core) alternating with discs along z, canal, processes."""
    period = 2.6 * r + 6.0
    for k in range(-8, 9):
        zc = z_phase + k * period
        half = (period - 6.0) / 2
        ph.add("cylinder", (0, y, 0), (r, 0.9 * r, 0), CARTILAGE - 30, z0=zc + half, z1=zc + half + 6.0)  # disc
        ph.add("cylinder", (0, y, 0), (r, 0.9 * r, 0), CORTICAL, z0=zc - half, z1=zc + half)
        ph.add("cylinder", (0, y, 0), (r - 2.2, 0.9 * r - 2.2, 0), TRABECULAR + _jit(rng, 40), z0=zc - half + 1.5,
               z1=zc + half - 1.5, texture=_tex_bone(60.0))
        # pedicles, laminae and spinous process
        for side in (-1, 1):
            ph.add("cylinder", (side * 0.55 * r, y + 1.05 * r, 0), (0.22 * r, 0.45 * r, 0), CORTICAL * 0.8,
                   angle=side * 0.35, z0=zc - half * 0.8, z1=zc + half * 0.8)
            ph.add("cylinder", (side * 1.2 * r, y + 0.8 * r, 0), (0.75 * r, 0.16 * r, 0), CORTICAL * 0.75,
                   angle=side * 0.2, z0=zc - half * 0.5, z1=zc + half * 0.5)
        ph.add("cylinder", (0, y + 1.95 * r, 0), (0.2 * r, 0.6 * r, 0), CORTICAL * 0.8,
               z0=zc - half * 0.7, z1=zc + half * 0.7)
    ph.add("cylinder", (0, y + 1.35 * r, 0), (0.42 * r, 0.38 * r, 0), CSF + 20)  # canal with cord


def _lesions(ph: Phantom, rng: np.random.Generator, organ: Shape, count: int, base: float) -> None:
    """Low-contrast spherical lesions (5-20 HU either sign) well inside ``organ``."""
    a, b, c = organ.radii
    for _ in range(count):
        rad = float(rng.uniform(4.0, 10.0))
        ang = float(rng.uniform(0, 2 * math.pi))
        frac = float(rng.uniform(0.0, 0.55))
        x = organ.centre[0] + frac * (a - rad) * math.cos(ang)
        y = organ.centre[1] + frac * (b - rad) * math.sin(ang)
        z = float(rng.uniform(-0.2, 0.2)) * c
        contrast = float(rng.uniform(5.0, 20.0)) * (1 if rng.random() < 0.5 else -1)
        ph.add("ellipsoid", (x, y, z), (rad, rad, rad), base + contrast, texture=(("organ", 3.0), ("micro", 5.0)))
        ph.lesions.append((x, y, z, rad, contrast))


def _torso(rng: np.random.Generator, part: BodyPart, a0: float, b0: float, fov: tuple[float, float],
           fat_mm: tuple[float, float], muscle: float) -> tuple[Phantom, float, float, float, float]:
    """A torso of random scale s: semi-axes a0, b0 (mm, jittered), FOV clipped to ``fov``, fat layer and
    muscle wall (``_body_wall``). Returns (phantom, s, a, b, fat)."""
    s = float(rng.uniform(0.85, 1.15))
    a, b = a0 * s * float(rng.uniform(0.95, 1.05)), b0 * s * float(rng.uniform(0.92, 1.08))
    ph = Phantom(part, fov=float(np.clip(2 * a + 50, *fov)))
    fat = float(rng.uniform(*fat_mm)) * s
    _body_wall(ph, rng, a, b, fat, muscle=muscle)
    return ph, s, a, b, fat


def _abdomen(rng: np.random.Generator) -> Phantom:
    ph, s, a, b, fat = _torso(rng, BodyPart.ABDOMEN, 165, 118, (340, 460), (12, 35), muscle=12.0)
    inner_b = b - fat - 12
    # paraspinal muscles and psoas
    for side in (-1, 1):
        ph.add("cylinder", (side * 38 * s, inner_b - 28 * s, 0), (26 * s, 24 * s, 0), MUSCLE + _jit(rng, 4),
               texture=(("organ", 4.0), *TEX_MUSCLE[1:]))
    liver = ph.add("ellipsoid", (-62 * s + _jit(rng, 8), -8 * s + _jit(rng, 8), 15), (82 * s, 78 * s, 95),
                   LIVER + _jit(rng, 8), angle=0.25, texture=TEX_LIVER)
    ph.add("ellipsoid", (liver.centre[0] + 10, liver.centre[1] + 20, 5), (12, 12, 18), BLOOD - 6)  # portal vein
    ph.add("ellipsoid", (-48 * s, -55 * s, -25), (16, 13, 28), WATER + 8)  # gallbladder
    spleen = ph.add("ellipsoid", (88 * s, 38 * s, 25), (30 * s, 52 * s, 60), SPLEEN + _jit(rng, 5), angle=-0.5,
                    texture=_tex_organ(5.0))
    ph.add("ellipsoid", (45 * s, -40 * s, 30), (42 * s, 30 * s, 45), 25.0, texture=_tex_organ(5.0, 0.0))  # stomach
    ph.add("ellipsoid", (40 * s, -58 * s, 38), (22 * s, 10 * s, 20), AIR)  # gas in the stomach fundus
    ph.add("ellipsoid", (12 * s, 8 * s, -20), (48 * s, 13 * s, 22), 45.0, angle=-0.15,
           texture=(*_tex_organ(5.0), ("sheets", -50.0)))  # pancreas, fatty lobulation
    for side in (-1, 1):
        k = ph.add("ellipsoid", (side * 62 * s, 42 * s, -30 + _jit(rng, 8)), (27 * s, 34 * s, 55),
                   KIDNEY + _jit(rng, 4), angle=side * 0.45, texture=_tex_organ(4.0))
        ph.add("ellipsoid", (k.centre[0] - side * 10, k.centre[1] - 5, k.centre[2]), (9, 12, 25), FAT + 20)  # sinus fat
    ph.add("cylinder", (18, 34 * s, 0), (11, 11, 0), BLOOD + _jit(rng, 4))  # aorta
    ph.add("cylinder", (-22, 28 * s, 0), (13, 10, 0), BLOOD + _jit(rng, 4))  # inferior vena cava
    # bowel loops (fluid, wall) with gas pockets in the anterior abdomen
    for _ in range(int(rng.integers(4, 8))):
        x, y = float(rng.uniform(-60, 90)) * s, float(rng.uniform(-inner_b + 20, -5)) * s
        rr = float(rng.uniform(10, 18))
        zc = float(rng.uniform(-40, 40))
        ph.add("ellipsoid", (x, y, zc), (rr, rr * 0.8, 45), 35.0, texture=(("fine", 6.0), ("micro", 6.0)))
        if rng.random() < 0.6:
            ph.add("ellipsoid", (x, y - rr * 0.3, zc), (rr * 0.6, rr * 0.4, 35), AIR)
    _spine(ph, rng, y=inner_b - 30 * s, r=22 * s, z_phase=_jit(rng, 15))
    # lower ribs, cut obliquely in the lateral body wall
    for side in (-1, 1):
        for phi in (-0.35, 0.15, 0.6):
            x = side * (a - fat - 7) * math.cos(phi)
            y = -(b - fat - 7) * math.sin(phi)
            ph.add("ellipsoid", (x, y, _jit(rng, 20)), (5, 7, 45), CORTICAL * 0.7, angle=side * phi,
                   texture=_tex_bone(60.0))
    _lesions(ph, rng, liver, int(rng.integers(1, 4)), liver.value)
    _lesions(ph, rng, spleen, int(rng.integers(0, 2)), spleen.value)
    return ph


def _chest(rng: np.random.Generator) -> Phantom:
    ph, s, a, b, fat = _torso(rng, BodyPart.CHEST, 160, 112, (330, 450), (8, 25), muscle=16.0)
    ib = b - fat - 16
    ia = a - fat - 16
    # ribs on a ring just inside the chest wall, sternum in front
    for side in (-1, 1):
        for ang in np.linspace(0.35, 2.8, 8):
            x = side * (ia - 4) * math.sin(ang)
            y = -(ib - 4) * math.cos(ang)
            ph.add("ellipsoid", (x, y, _jit(rng, 15)), (6.5, 5.0, 30), CORTICAL * 0.75, texture=_tex_bone(80.0))
    ph.add("cylinder", (0, -ib + 6, 0), (14 * s, 6, 0), CORTICAL * 0.6, texture=_tex_bone(60.0))
    lungs = []
    for side in (-1, 1):
        lung = ph.add("ellipsoid", (side * 0.47 * ia, 2 * s, 0), (0.46 * ia, 0.86 * ib, 170),
                      LUNG + _jit(rng, 20), texture=TEX_LUNG)
        lungs.append(lung)
    # mediastinum: heart, great vessels, airway, oesophagus
    heart = ph.add("ellipsoid", (18 * s, -18 * s, -15), (58 * s, 50 * s, 65), BLOOD + _jit(rng, 5), angle=-0.5,
                   texture=(("organ", 4.0), ("micro", 5.0)))
    ph.add("ellipsoid", (18 * s, -18 * s, -15), (48 * s, 40 * s, 55), BLOOD + 6, angle=-0.5,
           texture=(("organ", 3.0), ("micro", 5.0)))
    ph.add("cylinder", (-8, -30 * s, 0), (15, 15, 0), BLOOD + 2, z0=20, z1=200)  # ascending aorta
    ph.add("cylinder", (22, 42 * s, 0), (12, 12, 0), BLOOD + 2)  # descending aorta
    ph.add("cylinder", (0, 8 * s, 0), (9, 8, 0), AIR, z0=25, z1=200)  # trachea
    for side in (-1, 1):
        ph.add("cylinder", (side * 14, 10 * s, 0), (6, 5, 0), AIR, z0=-40, z1=25)  # main bronchi
    ph.add("cylinder", (8, 30 * s, 0), (7, 6, 0), MUSCLE - 10)  # oesophagus
    # a solid lung nodule in each lung
    for lung in lungs:
        rad = float(rng.uniform(3, 6))
        x = lung.centre[0] + _jit(rng, lung.radii[0] * 0.5)
        y = lung.centre[1] + _jit(rng, lung.radii[1] * 0.5)
        ph.add("ellipsoid", (x, y, _jit(rng, 10)), (rad, rad, rad), 20.0)
    _spine(ph, rng, y=ib - 22 * s, r=18 * s, z_phase=_jit(rng, 12))
    for side in (-1, 1):  # scapulae
        ph.add("ellipsoid", (side * 0.55 * a, b - fat - 9, 0), (42 * s, 4.5, 120), CORTICAL * 0.6, angle=-side * 0.3,
               texture=_tex_bone(80.0))
    _lesions(ph, rng, heart, 1, heart.value)
    return ph


def _head(rng: np.random.Generator) -> Phantom:
    s = float(rng.uniform(0.9, 1.1))
    a, b, c = 72 * s, 92 * s * float(rng.uniform(0.95, 1.05)), 110 * s
    ph = Phantom(BodyPart.HEAD, fov=float(np.clip(2 * b + 60, 220, 280)))
    ph.z_centre = 0.0
    scalp = float(rng.uniform(4, 7))
    bone = float(rng.uniform(5, 8))
    ph.add("ellipsoid", (0, 0, 0), (a + scalp, b + scalp, c + scalp), 20.0,
           texture=(("fine", 8.0), ("micro", 5.0)))  # scalp
    ph.add("ellipsoid", (0, 0, 0), (a, b, c), SKULL + _jit(rng, 100), texture=_tex_bone(80.0))  # outer table
    ph.add("ellipsoid", (0, 0, 0), (a - bone * 0.3, b - bone * 0.3, c - bone * 0.3), DIPLOE, texture=_tex_bone(120.0))
    ph.add("ellipsoid", (0, 0, 0), (a - bone * 0.7, b - bone * 0.7, c - bone * 0.7), SKULL - 150)  # inner table
    ph.add("ellipsoid", (0, 0, 0), (a - bone, b - bone, c - bone), CSF)  # subarachnoid CSF
    brain = ph.add("ellipsoid", (0, 2, 0), (a - bone - 2.5, b - bone - 3, c - bone - 3), GREY + _jit(rng, 3),
                   texture=TEX_BRAIN)
    wm = []
    for side in (-1, 1):  # white matter of each hemisphere
        radii = (0.42 * brain.radii[0], 0.72 * brain.radii[1], 70)
        wm.append(ph.add("ellipsoid", (side * 0.42 * brain.radii[0], 4, 5), radii,
               WHITE + _jit(rng, 2), texture=(("organ", 3.0), ("micro", 2.0))))
    ph.add("box", (0, 0, 0), (1.0, b - bone - 4, 0), 55.0)  # falx cerebri
    for side in (-1, 1):  # lateral ventricles
        ph.add("ellipsoid", (side * 11 * s, -4, 8), (6 * s, 28 * s, 22), CSF, angle=side * 0.18)
    ph.add("ellipsoid", (0, 10, -8), (2.0, 12, 12), CSF)  # third ventricle
    for hemisphere in wm:
        _lesions(ph, rng, hemisphere, int(rng.integers(0, 2)), hemisphere.value)
    return ph

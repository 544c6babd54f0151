"""MONAI dictionary transforms for CT slices: DICOM -> HU -> [-1, 1] -> random tissue patches -> augment.

Each transform is an array class plus a ``...d`` dictionary wrapper (MONAI style). The chain used for
training (:func:`train_transforms`) is::

    LoadCTSliced            DICOM file -> (1, H, W) float32 HU (modality LUT of that slice)
    ScaleIntensityRanged    HU window [-1024, 3071] -> [-1, 1], clipped           (MONAI)
    EnsureTyped             plain float32 tensors (cache files load with weights_only=True)
    --- cache boundary: everything above is deterministic and cached by data.py ---
    RandTissuePatchd        several random P x P patches per slice, avoiding mostly-air patches
    RandRotate90d           0 or 90 degrees, p = 0.5                               (MONAI)
    RandFlipd               horizontal flip, p = 0.5                                (MONAI)

Random dictionary transforms draw once per call and apply that draw to every key, so paired LD/FD keys
(test pairs) stay aligned; unpaired training runs one key per stream.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import (
    Compose,
    EnsureTyped,
    MapTransform,
    RandFlipd,
    Randomizable,
    RandRotate90d,
    ScaleIntensityRanged,
    Transform,
)
from monai.utils import StrEnum

from ldct_monai.config import DEFAULT_HU_WINDOW, HUWindow
from ldct_monai.dicom.reader import read_hu
from ldct_monai.errors import InputError


class Keys(StrEnum):
    """Dictionary keys of the data pipeline (one per domain)."""

    LD = "ld"  # low-dose image
    FD = "fd"  # full-dose image


class LoadCTSlice(Transform):
    """Read one single-frame CT DICOM file into a (1, H, W) float32 tensor of HU.

    The package's one pixel-read path (``ldct_monai.dicom.reader.read_hu``: the same accept / reject decision
    as build-manifest and denoise): the slice's own RescaleSlope/Intercept, no reorientation. MONAI's ``LoadImage(reader="PydicomReader")`` transposes rows and columns and was
    measured ~6x slower per slice (docs/training.md), so it is not used here.
    """

    def __call__(self, path: str | Path) -> torch.Tensor:
        hu = read_hu(path)
        if hu.ndim != 2:
            raise InputError(f"{path}: expected a single-frame 2D slice, found pixel array shape {hu.shape}.")
        return torch.from_numpy(np.ascontiguousarray(hu))[None]


class LoadCTSliced(MapTransform):
    """Dictionary wrapper of :class:`LoadCTSlice`: replaces each key's file path by its HU tensor."""

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.loader = LoadCTSlice()

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.loader(d[key])
        return d


def scale_hu(keys: KeysCollection, window: HUWindow = DEFAULT_HU_WINDOW) -> ScaleIntensityRanged:
    """MONAI ``ScaleIntensityRanged`` mapping the HU window to [-1, 1] with clipping (network space)."""
    return ScaleIntensityRanged(keys, a_min=window.low, a_max=window.high, b_min=-1.0, b_max=1.0, clip=True)


class RandTissuePatch(Randomizable, Transform):
    """Draw ``num_samples`` random square patches from a (C, H, W) image, avoiding mostly-air patches.

    A candidate patch is accepted when at least ``min_fraction`` of its pixels are above ``threshold``
    (in the image's own units; use :func:`tissue_threshold` to convert an HU level). Up to ``tries``
    candidates are drawn per patch; if none qualifies, the candidate with most tissue is used, so a
    slice that is almost all air still yields patches (and never an endless loop). Tissue fractions come
    from an integral image, so a draw costs O(1). Images smaller than the patch are padded with ``pad_value``.

    Args:
        size: patch side in pixels.
        num_samples: patches per call.
        threshold: pixel value above which a pixel counts as tissue.
        min_fraction: fraction of tissue pixels a patch needs, in [0, 1].
        tries: candidates per patch.
        pad_value: value used to pad images smaller than ``size`` (air, -1 in network space).
    """

    def __init__(self, size: int, num_samples: int = 1, threshold: float = -0.75, min_fraction: float = 0.5,
                 tries: int = 10, pad_value: float = -1.0) -> None:
        if size < 1 or num_samples < 1 or tries < 1:
            raise ValueError(f"need size, num_samples, tries >= 1, found {size}, {num_samples}, {tries}.")
        self.size = int(size)
        self.num_samples = int(num_samples)
        self.threshold = float(threshold)
        self.min_fraction = float(min_fraction)
        self.tries = int(tries)
        self.pad_value = float(pad_value)
        self._origins: list[tuple[int, int]] = []

    def pad(self, img: torch.Tensor) -> torch.Tensor:
        """Pad (C, H, W) at the bottom/right to at least ``size`` x ``size``."""
        h, w = img.shape[-2:]
        ph, pw = max(0, self.size - h), max(0, self.size - w)
        if ph or pw:
            img = torch.nn.functional.pad(torch.as_tensor(img), (0, pw, 0, ph), value=self.pad_value)
        return img

    def randomize(self, img: torch.Tensor) -> None:
        """Choose the patch origins (row, col) for ``img`` (already padded)."""
        h, w = img.shape[-2:]
        s = self.size
        mask = (torch.as_tensor(img) > self.threshold).any(dim=0).to(torch.float64)
        integral = torch.zeros((h + 1, w + 1), dtype=torch.float64)
        integral[1:, 1:] = mask.cumsum(0).cumsum(1)
        area = float(s * s)
        self._origins = []
        for _ in range(self.num_samples):
            best, best_frac = (0, 0), -1.0
            for _ in range(self.tries):
                r = int(self.R.randint(0, h - s + 1))
                c = int(self.R.randint(0, w - s + 1))
                frac = float(integral[r + s, c + s] - integral[r, c + s] - integral[r + s, c] + integral[r, c]) / area
                if frac > best_frac:
                    best, best_frac = (r, c), frac
                if frac >= self.min_fraction:
                    break
            self._origins.append(best)

    def crop(self, img: torch.Tensor) -> list[torch.Tensor]:
        """Cut the patches chosen by the last :meth:`randomize` from ``img`` (padded like it)."""
        img = self.pad(img)
        s = self.size
        return [img[..., r : r + s, c : c + s].clone() for r, c in self._origins]

    def __call__(self, img: torch.Tensor, randomize: bool = True) -> list[torch.Tensor]:
        img = self.pad(img)
        if randomize:
            self.randomize(img)
        return self.crop(img)


class RandTissuePatchd(Randomizable, MapTransform):
    """Dictionary wrapper of :class:`RandTissuePatch`: one draw of origins for all keys.

    The tissue mask comes from the first key present. Returns a list of ``num_samples`` dictionaries
    (MONAI's convention for multi-sample crops; ``monai.data.list_data_collate`` flattens them).
    """

    def __init__(self, keys: KeysCollection, size: int, num_samples: int = 1, threshold: float = -0.75,
                 min_fraction: float = 0.5, tries: int = 10, pad_value: float = -1.0,
                 allow_missing_keys: bool = False) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.cropper = RandTissuePatch(size, num_samples, threshold, min_fraction, tries, pad_value)

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> RandTissuePatchd:
        super().set_random_state(seed, state)
        self.cropper.set_random_state(seed, state)
        return self

    def randomize(self, data: torch.Tensor) -> None:
        self.cropper.randomize(self.cropper.pad(data))

    def __call__(self, data: Mapping[Hashable, object]) -> list[dict[Hashable, object]]:
        d = dict(data)
        keys = list(self.key_iterator(d))
        if not keys:
            return [dict(d) for _ in range(self.cropper.num_samples)]
        self.randomize(d[keys[0]])
        crops = {k: self.cropper.crop(d[k]) for k in keys}
        out = []
        for i in range(self.cropper.num_samples):
            item = dict(d)
            for k in keys:
                item[k] = crops[k][i]
            out.append(item)
        return out


def tissue_threshold(hu: float, window: HUWindow = DEFAULT_HU_WINDOW) -> float:
    """An HU level expressed in network space [-1, 1] (for :class:`RandTissuePatch`'s threshold)."""
    return float(window.to_unit(np.array([hu], dtype=np.float32))[0])


def load_transforms(keys: Sequence[str], window: HUWindow = DEFAULT_HU_WINDOW) -> Compose:
    """The deterministic, cacheable part: DICOM -> HU -> [-1, 1] (clipped) -> plain float32 tensor.

    Plain tensors (no MONAI metadata) keep the disk cache loadable with ``torch.load(weights_only=True)``.
    """
    return Compose([
        LoadCTSliced(keys),
        scale_hu(keys, window),
        EnsureTyped(keys, data_type="tensor", dtype=torch.float32, track_meta=False),
    ])


def augment_transforms(
    keys: Sequence[str],
    patch_size: int,
    patches_per_slice: int,
    window: HUWindow = DEFAULT_HU_WINDOW,
    tissue_hu: float = -500.0,
    min_tissue_fraction: float = 0.5,
    tries: int = 10,
) -> Compose:
    """The random part: tissue patches, rot90 (0/90 degrees) and horizontal flip (MathWorks example).

    Seed it per item with ``Compose.set_random_state`` for results independent of workers and order.
    """
    return Compose([
        RandTissuePatchd(keys, patch_size, patches_per_slice, tissue_threshold(tissue_hu, window),
                         min_tissue_fraction, tries),
        RandRotate90d(keys, prob=0.5, max_k=1, spatial_axes=(0, 1)),
        RandFlipd(keys, prob=0.5, spatial_axis=1),  # axis 1 of (H, W) = columns: a left-right flip
    ])


def train_transforms(keys: Sequence[str], patch_size: int, patches_per_slice: int,
                     window: HUWindow = DEFAULT_HU_WINDOW, **kwargs: float) -> Compose:
    """The whole training chain: :func:`load_transforms` then :func:`augment_transforms`."""
    return Compose([load_transforms(keys, window), augment_transforms(keys, patch_size, patches_per_slice, window, **kwargs)])

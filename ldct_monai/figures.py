"""Report figures (matplotlib, Agg, no pyplot state): side-by-side slices, difference maps, curves.

Every image panel states its HU display window and has a colour bar in HU; difference maps use a
diverging colour map with limits symmetric about 0 HU, the same for every panel of a figure so they
can be compared. Images are clipped to the full CT range [-1024, 3071] HU first, as in the metrics.
Files are written atomically.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ldct_monai.io_utils import atomic_write_bytes
from ldct_monai.metrics import FULL_RANGE_HU, Window

PANEL_IN = 3.2  # inches per image panel
DPI = 100  # 3.2 in x 100 dpi = 320 px per panel; the centre-crop row shows a 512 px slice at full resolution


def _new_figure(width_in: float, height_in: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    atomic_write_bytes(Path(path), buf.getvalue())
    return Path(path)


def centre_crop_box(shape: tuple[int, int], fraction: float) -> tuple[int, int, int, int]:
    """(row0, row1, col0, col1) of the centred crop whose sides are ``fraction`` of the image's."""
    h, w = shape
    ch, cw = max(1, round(h * fraction)), max(1, round(w * fraction))
    r0, c0 = (h - ch) // 2, (w - cw) // 2
    return r0, r0 + ch, c0, c0 + cw


def _clip(x: np.ndarray) -> np.ndarray:
    return np.clip(np.asarray(x, dtype=np.float32), *FULL_RANGE_HU)


def _draw_rows(fig, panels: Mapping[str, np.ndarray], crop: float, imshow_kwargs: dict, cbar_label: str) -> None:
    from matplotlib.patches import Rectangle

    names = list(panels)
    axes = fig.subplots(2, len(names), squeeze=False)
    first = next(iter(panels.values()))
    r0, r1, c0, c1 = centre_crop_box(first.shape, crop)
    im = None
    for j, name in enumerate(names):
        img = panels[name]
        ax_full, ax_crop = axes[0, j], axes[1, j]
        im = ax_full.imshow(img, **imshow_kwargs)
        ax_full.set_title(name, fontsize=10)
        if crop < 1.0:
            ax_full.add_patch(Rectangle((c0 - 0.5, r0 - 0.5), c1 - c0, r1 - r0, fill=False, edgecolor="gold", linewidth=0.8))
        ax_crop.imshow(img[r0:r1, c0:c1], **imshow_kwargs, extent=(c0 - 0.5, c1 - 0.5, r1 - 0.5, r0 - 0.5))
        ax_crop.set_title(f"{name}, centre crop", fontsize=8)
        for ax in (ax_full, ax_crop):
            ax.set_xticks([])
            ax.set_yticks([])
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label=cbar_label)


def comparison_figure(
    panels: Mapping[str, np.ndarray], path: Path, *, window: Window, title: str = "", crop: float = 0.5
) -> Path:
    """Slices side by side (e.g. low-dose | model | baselines | full-dose), full size and centre crop.

    Args:
        panels: column title -> (H, W) HU image, in display order; all the same shape.
        path: PNG file to write.
        window: display window (grey levels from ``window.lower`` to ``window.upper`` HU).
        title: figure title (patient, z); the window is appended.
        crop: centre crop side as a fraction of the image side (drawn as a box on the full-size row).

    Returns:
        ``path``.
    """
    _check_panels(panels)
    fig = _new_figure(PANEL_IN * len(panels) + 1.0, 2 * PANEL_IN + 0.6)
    kwargs = {"cmap": "gray", "vmin": window.lower, "vmax": window.upper, "interpolation": "antialiased"}
    _draw_rows(fig, {k: _clip(v) for k, v in panels.items()}, crop, kwargs, "HU")
    fig.suptitle(f"{title}  [window C {window.center:g} / W {window.width:g} HU]".strip())
    return _save(fig, path)


def difference_limit(diff: np.ndarray, percentile: float = 99.5) -> float:
    """Symmetric colour limit (HU) for a difference map: the ``percentile`` of |diff|, rounded up.

    Rounded up to 1, 2 or 5 x 10^k so figures of similar slices share limits; at least 1 HU.
    """
    v = float(np.percentile(np.abs(diff), percentile)) if diff.size else 1.0
    if not np.isfinite(v) or v <= 1.0:
        return 1.0
    k = 10 ** np.floor(np.log10(v))
    for m in (1.0, 2.0, 5.0, 10.0):
        if v <= m * k:
            return float(m * k)
    return float(10 * k)


def difference_figure(
    ld: np.ndarray,
    denoised: np.ndarray,
    fd: np.ndarray,
    path: Path,
    *,
    title: str = "",
    crop: float = 0.5,
    limit: float | None = None,
    denoised_label: str = "denoised",
) -> Path:
    """Difference maps LD − FD, denoised − FD and removed noise LD − denoised (HU), full size and crop.

    Args:
        ld, denoised, fd: (H, W) HU images of one slice.
        path: PNG file to write.
        title: figure title.
        crop: centre crop fraction (as in :func:`comparison_figure`).
        limit: colour limit in HU (symmetric, ±limit); from LD − FD by :func:`difference_limit` if None.
        denoised_label: what the denoised image is called in the panel titles.

    Returns:
        ``path``.
    """
    ld, den, fd = _clip(ld), _clip(denoised), _clip(fd)
    panels = {
        "low-dose − full-dose": ld - fd,
        f"{denoised_label} − full-dose": den - fd,
        f"removed: low-dose − {denoised_label}": ld - den,
    }
    _check_panels(panels)
    lim = limit if limit is not None else difference_limit(panels["low-dose − full-dose"])
    fig = _new_figure(PANEL_IN * 3 + 1.0, 2 * PANEL_IN + 0.6)
    kwargs = {"cmap": "RdBu_r", "vmin": -lim, "vmax": lim, "interpolation": "antialiased"}
    _draw_rows(fig, panels, crop, kwargs, "difference (HU)")
    fig.suptitle(f"{title}  [±{lim:g} HU]".strip())
    return _save(fig, path)


def curve_figure(
    x: Sequence[float],
    series: Mapping[str, Sequence[float]],
    path: Path,
    *,
    xlabel: str = "optimizer steps",
    ylabel: str = "test PSNR (dB)",
    title: str = "",
) -> Path:
    """Line plot of one or more series against ``x`` (e.g. test PSNR per convention vs training steps).

    Args:
        x: x values (shared by all series).
        series: label -> y values, each as long as ``x``.
        path: PNG file to write.
    """
    for name, ys in series.items():
        if len(ys) != len(x):
            raise ValueError(f"series {name!r} has {len(ys)} values for {len(x)} x values.")
    fig = _new_figure(6.0, 4.0)
    ax = fig.subplots()
    for name, ys in series.items():
        ax.plot(list(x), list(ys), marker="o", markersize=3, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if title:
        ax.set_title(title)
    if series:
        ax.legend()
    return _save(fig, path)


def _check_panels(panels: Mapping[str, np.ndarray]) -> None:
    if not panels:
        raise ValueError("no images to draw.")
    shapes = {np.shape(v) for v in panels.values()}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ValueError(f"panels must be 2-D images of one shape, found {sorted(shapes)}.")

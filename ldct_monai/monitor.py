"""Training monitoring: metrics CSVs, TensorBoard, preview PNGs, loss curves, a no-reference noise estimate.

Only rank 0 of a DDP run creates a :class:`Monitor`. Everything is append-only and keyed by the
optimizer step, so a resumed run first truncates rows newer than its checkpoint and then continues the
same files.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from ldct_monai.config import HUWindow

log = logging.getLogger(__name__)

TRAIN_CSV = "metrics.csv"
VAL_CSV = "val_metrics.csv"
PREVIEW_WINDOW = (-160.0, 240.0)  # display window for previews: soft tissue C 40 / W 400 HU


def flat_noise_std(hu: np.ndarray, lo: float = -150.0, hi: float = 250.0, size: int = 7) -> float:
    """No-reference noise level in HU: median local standard deviation over flat soft-tissue regions.

    A pixel counts when its whole ``size`` x ``size`` neighbourhood lies in [lo, hi] HU (soft tissue,
    no air, bone or edges nearby); the local std there is mostly noise. Unpaired validation has no
    ground truth, so G(LD) is judged by how close this gets to the level of real full-dose images.

    Returns:
        The noise estimate in HU, or NaN when the image has no flat soft-tissue region.
    """
    from scipy.ndimage import uniform_filter

    x = np.asarray(hu, dtype=np.float64)
    inside = uniform_filter(((x >= lo) & (x <= hi)).astype(np.float64), size, mode="constant") > 1 - 1e-9
    if not inside.any():
        return float("nan")
    mean = uniform_filter(x, size)
    var = np.maximum(uniform_filter(x * x, size) - mean * mean, 0.0)
    return float(np.median(np.sqrt(var[inside])))


class CsvLog:
    """Append-only CSV keyed by ``step``; :meth:`truncate` drops rows after a step (resume)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.fields: list[str] | None = None
        if self.path.is_file():
            with open(self.path, newline="") as f:
                self.fields = next(csv.reader(f), None)

    def truncate(self, step: int) -> None:
        if not self.path.is_file():
            return
        with open(self.path, newline="") as f:
            rows = [r for r in csv.DictReader(f) if int(float(r["step"])) <= step]
        with open(self.path, "w", newline="") as f:
            if self.fields:
                w = csv.DictWriter(f, fieldnames=self.fields)
                w.writeheader()
                w.writerows(rows)

    def append(self, row: Mapping[str, float]) -> None:
        new = not self.path.is_file() or self.fields is None
        if new:
            self.fields = list(row)
        with open(self.path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.fields, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})

    def read(self) -> list[dict[str, float]]:
        if not self.path.is_file():
            return []
        with open(self.path, newline="") as f:
            return [{k: float(v) if v not in ("", None) else float("nan") for k, v in r.items()} for r in csv.DictReader(f)]


class Monitor:
    """Rank-0 sink for scalars, images and checkpoints-adjacent files of one run folder."""

    def __init__(self, run_dir: Path, window: HUWindow, tensorboard: bool = True, resume_step: int | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.window = window
        self.train_log = CsvLog(self.run_dir / TRAIN_CSV)
        self.val_log = CsvLog(self.run_dir / VAL_CSV)
        if resume_step is not None:
            self.train_log.truncate(resume_step)
            self.val_log.truncate(resume_step)
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(self.run_dir / "tb"), purge_step=resume_step)
            except ImportError as err:  # tensorboard is a dependency, but keep training if it is broken
                log.warning("TensorBoard disabled: %s", err)

    def scalars(self, step: int, values: Mapping[str, float], prefix: str = "train") -> None:
        (self.train_log if prefix == "train" else self.val_log).append({"step": step, **values})
        if self.tb is not None:
            for k, v in values.items():
                if k not in ("step", "epoch"):
                    self.tb.add_scalar(f"{prefix}/{k}", v, step)

    def images(self, step: int, panels: Sequence[tuple[str, torch.Tensor]], tag: str = "val") -> Path:
        """Save a preview PNG (``previews/step_XXXXXXXX.png``) and a TensorBoard grid of (1, 1, H, W) images."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        hu = [(name, self.window.to_hu(img.detach().float().cpu().numpy()[0, 0])) for name, img in panels]
        lo, hi = PREVIEW_WINDOW
        cols = 3 if len(hu) > 4 else len(hu)
        rows = -(-len(hu) // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.4 * rows), squeeze=False)
        for ax in axes.flat:
            ax.axis("off")
        for ax, (name, img) in zip(axes.flat, hu, strict=False):
            ax.imshow(img, cmap="gray", vmin=lo, vmax=hi)
            noise = flat_noise_std(img)
            ax.set_title(f"{name}\nnoise {noise:.1f} HU" if np.isfinite(noise) else name, fontsize=9)
        fig.suptitle(f"step {step}  (window C {(lo + hi) / 2:.0f} / W {hi - lo:.0f} HU)", fontsize=10)
        fig.tight_layout()
        path = self.run_dir / "previews" / f"step_{step:08d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=80)
        plt.close(fig)
        if self.tb is not None:
            for name, img in hu:
                disp = np.clip((img - lo) / (hi - lo), 0, 1)[None]
                self.tb.add_image(f"{tag}/{name}", disp, step)
        return path

    def loss_curves(self) -> Path | None:
        """Plot the train losses (and validation noise levels) to ``loss_curves.png``."""
        rows = self.train_log.read()
        if not rows:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        vrows = self.val_log.read()
        fig, axes = plt.subplots(1, 3 if vrows else 2, figsize=(15 if vrows else 10, 3.8))
        steps = [r["step"] for r in rows]
        supervised = "loss_g" not in rows[0]
        panels = ((("loss", "l1", "mse"), "supervised loss, L1, MSE"), (("ssim",), "1-SSIM")) if supervised else (
            (("loss_g", "adv_g", "loss_d"), "generator / discriminator"),
            (("cycle", "identity"), "cycle L1 and identity 1-SSIM (unweighted)"))
        for ax, (keys, title) in zip(axes, panels):
            for k in keys:
                ax.plot(steps, [r[k] for r in rows], label=k)
            ax.set_title(title)
        if vrows:
            vs = [r["step"] for r in vrows]
            curves = ((("psnr_ld", "LD input"), ("psnr_g_ld", "G(LD)")) if supervised else
                      (("noise_ld", "LD input"), ("noise_g_ld", "G(LD)"), ("noise_fd", "real FD")))
            for k, lab in curves:
                axes[2].plot(vs, [r.get(k, float("nan")) for r in vrows], marker="o", label=lab)
            axes[2].set_title("val: PSNR vs FD (dB, full range)" if supervised else "val: flat-region noise (HU)")
        for ax in axes:
            ax.set_xlabel("step")
            ax.legend(fontsize=8)
            ax.grid(alpha=0.3)
        fig.tight_layout()
        path = self.run_dir / "loss_curves.png"
        fig.savefig(path, dpi=80)
        plt.close(fig)
        return path

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()

"""What ``configs/inference.json`` instantiates when a MONAI user runs the bundle.

``python -m monai.bundle run --config_file configs/inference.json`` builds MONAI's data pipeline from the
config and calls ``DenoiseLoop.run()``: a plain loop (no pytorch-ignite, which ldct-monai does not need)
over the data loader, :class:`SliceInferer` for the network, the config's post-processing (HU and
``SaveImaged``) on each decollated item.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from monai.inferers import Inferer

from ldct_monai.errors import InputError

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def list_images(folder: str | Path) -> list[dict[str, str]]:
    """The NIfTI volumes of ``folder`` (sorted, not recursive) as MONAI data dicts ``{"image": path}``.

    Raises:
        InputError: ``folder`` is missing or holds no ``*.nii`` / ``*.nii.gz`` file.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: no such folder of NIfTI images (set it with --dataset_dir).")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(NIFTI_SUFFIXES))
    if not files:
        raise InputError(f"{folder}: no NIfTI image (*.nii, *.nii.gz) in it.")
    return [{"image": str(p)} for p in files]


class SliceInferer(Inferer):
    """Run a 2-D network on every slice of (B, C, H, W) or (B, C, X, Y, Z) input.

    Each slice is reflect-padded at its bottom/right edges to a multiple of the network's stride and
    cropped back (edge-replicated when a side is too short to reflect), the same arithmetic as
    ``ldct-monai denoise`` on full slices. Volumes are cut along ``spatial_dim`` (2: the third voxel
    axis, axial for NIfTI converted from axial CT series).

    Args:
        spatial_dim: the spatial axis of a volume along which slices are taken (0, 1 or 2).
        sw_batch_size: slices per forward pass.
        stride: multiple the slice sides are padded to when the network has no ``stride`` attribute.
    """

    def __init__(self, spatial_dim: int = 2, sw_batch_size: int = 4, stride: int = 4) -> None:
        super().__init__()
        if spatial_dim not in (0, 1, 2):
            raise ValueError(f"spatial_dim must be 0, 1 or 2, found {spatial_dim}.")
        if sw_batch_size < 1:
            raise ValueError(f"sw_batch_size must be at least 1, found {sw_batch_size}.")
        self.spatial_dim = spatial_dim
        self.sw_batch_size = sw_batch_size
        self.stride = stride

    def _padded(self, x: torch.Tensor, network: Callable[..., torch.Tensor], stride: int) -> torch.Tensor:
        h, w = x.shape[-2:]
        ph, pw = (-h) % stride, (-w) % stride
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="reflect" if (ph < h and pw < w) else "replicate")
        return network(x)[..., :h, :w].float()

    def __call__(self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any, **kwargs: Any) -> torch.Tensor:
        """(B, C, H, W) or (B, C, X, Y, Z) -> the network's output of the same shape (a MetaTensor if ``inputs`` is)."""
        from monai.utils import convert_to_dst_type

        stride = int(getattr(network, "stride", self.stride))
        x = inputs.as_tensor() if hasattr(inputs, "as_tensor") else inputs
        if x.ndim not in (4, 5):
            raise ValueError(f"SliceInferer needs (B, C, H, W) or (B, C, X, Y, Z) input, found shape {tuple(x.shape)}.")
        volume = x.ndim == 5
        if volume:
            axis = 2 + self.spatial_dim
            x = torch.movedim(x, axis, 1)  # (B, n_slices, C, h, w)
            b, n = x.shape[:2]
            x = x.reshape(b * n, *x.shape[2:])
        out = torch.cat([self._padded(x[i : i + self.sw_batch_size], network, stride)
                         for i in range(0, len(x), self.sw_batch_size)])
        if volume:
            out = torch.movedim(out.reshape(b, n, *out.shape[1:]), 1, axis)
        return convert_to_dst_type(out, dst=inputs, dtype=torch.float32)[0]


class DenoiseLoop:
    """The bundle's inference workflow: load the weights, denoise every batch, post-process every item.

    Args:
        network: the generator (``network_def`` on the device).
        dataloader: yields dicts with ``image_key`` (MONAI ``DataLoader``).
        inferer: called as ``inferer(image, network)``.
        postprocessing: called on each decollated item after the prediction is stored at ``pred_key``
            (in the bundle: back to HU, then ``SaveImaged``).
        device: where the images go.
        ckpt_path: ``models/model.pt`` (a state_dict, loaded with ``weights_only=True``); None keeps the
            network's weights.
        image_key: key of the input image.
        pred_key: key the prediction is stored under.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        dataloader: Iterable[dict[str, Any]],
        inferer: Callable[..., torch.Tensor],
        postprocessing: Callable[[dict[str, Any]], Any] | None = None,
        device: str | torch.device = "cpu",
        ckpt_path: str | Path | None = None,
        image_key: str = "image",
        pred_key: str = "pred",
    ) -> None:
        self.network = network
        self.dataloader = dataloader
        self.inferer = inferer
        self.postprocessing = postprocessing
        self.device = torch.device(device)
        self.ckpt_path = ckpt_path
        self.image_key = image_key
        self.pred_key = pred_key

    def run(self) -> int:
        """Denoise everything the data loader yields; return the number of items post-processed."""
        from monai.apps.utils import get_logger
        from monai.data import decollate_batch

        logger = get_logger(__name__)  # MONAI's handler and format, like the bundle CLI's own lines
        if self.ckpt_path is not None:
            state = torch.load(self.ckpt_path, map_location="cpu", weights_only=True)
            self.network.load_state_dict(state)
            logger.info(f"Loaded weights {self.ckpt_path}.")
        self.network.eval()
        n = 0
        with torch.no_grad():
            for batch in self.dataloader:
                batch = dict(batch)
                batch[self.pred_key] = self.inferer(batch[self.image_key].to(self.device), self.network).cpu()
                for item in decollate_batch(batch):
                    if self.postprocessing is not None:
                        self.postprocessing(item)
                    n += 1
                    meta = getattr(item[self.pred_key], "meta", {})
                    logger.info(f"Denoised {meta.get('filename_or_obj', f'item {n}')} "
                                f"({' x '.join(str(v) for v in item[self.pred_key].shape[1:])} voxels).")
        logger.info(f"Denoised {n} image(s).")
        return n

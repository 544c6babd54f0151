"""The training configuration: one frozen dataclass, named presets, and YAML/JSON config files.

Every field of :class:`TrainConfig` is declared with :func:`opt`: its default, the reason for it (the
``ldct-monai train --help`` text) and whether ``train`` has a command-line flag for it. The flags
(:data:`CLI_FIELDS`) are the options a user needs; every other field (research switches, loss weights,
optimiser details) is set in a ``--config`` file or from Python. A run saves ``asdict(config)`` in
``RUN_DIR/config.json``, in every checkpoint and in the model card, so the run can be resumed and the
model rebuilt from the files alone.

Precedence (lowest to highest): the dataclass defaults < ``--preset`` < ``--config FILE`` < CLI flags.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ldct_monai.config import HUWindow
from ldct_monai.errors import InputError
from ldct_monai.schema import PRECISIONS

CACHE_MODES = ("none", "memory", "disk")
D_NORMS = ("instance", "batch", "none")
D_CONDITIONS = ("none", "body-part")
MODEL_SELECT = ("last", "val-noise", "val-pairs")
FD2LD = ("resnet", "noise")
NOISE_LEVELS = ("part", "image")
NOISE_SOURCES = ("generator", "ld-residual")
METHODS = ("cyclegan", "supervised")
SUPERVISED_LOSSES = ("l1", "mse", "l1+ssim")


def opt(default: Any, help: str, cli: bool = False) -> Any:
    """A config field: its ``default``, the reason for it (``help``, shown by ``train --help``) and whether
    ``train`` has a flag for it (``cli``; without one the field is set in a ``--config`` file or from Python)."""
    return field(default=default, metadata={"help": help, "cli": cli})


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a CycleGAN training run. Defaults follow the MathWorks example / Zhu et al.

    Lengths are in pixels, intensities in HU, learning rates per optimizer step. ``batch_size`` counts
    *patches per process*: under DDP the global batch is ``batch_size * world_size``.
    """

    # --- what ---
    method: str = opt("cyclegan", "cyclegan (unpaired train_ld/train_fd) or supervised (train_pairs.csv of "
                      "build-manifest --paired)", cli=True)
    init_generator: str = opt("", "start the LD->FD generator from a trained model: builtin (the shipped denoiser) "
                              "or a model folder", cli=True)

    # --- where ---
    manifest: str = opt("", "manifest folder from build-manifest (required)", cli=True)
    out: str = opt("", "RUN_DIR: checkpoints, logs, previews, model/ (required)", cli=True)
    resume: bool = opt(False, "continue from the newest checkpoint in RUN_DIR (exactly: same next batch, same lr)",
                       cli=True)
    overwrite: bool = opt(False, "delete an existing non-empty RUN_DIR and start over", cli=True)
    preset: str = opt("matlab", "name of the preset the run started from (recorded, not used after)", cli=True)
    seed: int = opt(0, "seeds weights, sampling and augmentation: same seed + same thread count = same run on CPU",
                    cli=True)

    # --- device and speed ---
    device: str = opt("auto", "cuda if present, else cpu", cli=True)
    precision: str = opt("fp32", "bf16 autocast is ~2x faster on AVX-512-bf16 CPUs and GPUs; fp32 is the safe default",
                         cli=True)
    threads: int = opt(0, "torch CPU threads; 0 keeps torch's default (one per core). 1 is far faster on a busy "
                       "machine", cli=True)
    compile: bool = opt(False, "torch.compile: helps on GPUs, costs minutes of compile time on a small CPU")
    channels_last: bool = opt(False, "NHWC memory format: faster convolutions on GPUs with tensor cores")

    # --- data ---
    patch_size: int = opt(128, "MathWorks example: 128x128 patches", cli=True)
    patches_per_slice: int = opt(16, "MathWorks example: 16 patches per image (one decode feeds many patches)", cli=True)
    batch_size: int = opt(32, "patches per optimizer step per process; MathWorks minibatch 32", cli=True)
    min_tissue_fraction: float = opt(0.5, "a patch is kept when >= this fraction of its pixels is above tissue_hu")
    tissue_hu: float = opt(-500.0, "pixels above this HU count as tissue (air is -1000, lung ~ -800 .. -500)")
    patch_tries: int = opt(10, "random draws per patch before the draw with the most tissue is taken")
    hu_low: float = opt(-1024.0, "HU mapped to -1 (the full 12-bit CT range, MathWorks normalizeCTImages)")
    hu_high: float = opt(3071.0, "HU mapped to +1")
    cache: str = opt("memory", "decoded slices kept in RAM (none | memory | disk); DICOM decode is the slow part")
    cache_dir: str = opt("", "folder for cache: disk; \"\" means RUN_DIR/cache")
    num_workers: int = opt(2, "DataLoader worker processes per rank (0 loads in the training process)", cli=True)
    body_part_batches: bool = opt(False, "each step takes LD and FD slices of one body part (rotating): "
                                  "docs/training.md", cli=True)

    # --- model ---
    ngf: int = opt(64, "generator filters (Zhu et al., MathWorks)", cli=True)
    n_blocks: int = opt(6, "residual blocks: 6 for 128 px patches, 9 for 256 px (Zhu et al.)", cli=True)
    upsample: str = opt("resize", "nearest x2 + conv: no checkerboard artifacts in flat soft tissue (Odena et al.)")
    residual: bool = opt(True, "output = input + correction: denoising is a small correction of the input")
    g_norm: str = opt("instance", "generator norm: instance (Zhu et al.) or none (patch-trained, slice-run "
                      "supervised denoisers)")
    init_identity: bool = opt(True, "zero the generators' last conv: a residual generator starts as the identity")
    fd2ld: str = opt("resnet", "CycleGAN FD->LD generator: resnet (Zhu et al.) or noise (FD + fresh noise of the "
                     "measured NPS shape and level, refined adversarially: docs/training.md)")
    noise_level: str = opt("part", "fd2ld: noise: part (one level per body part) or image (the part's level times "
                           "each FD image's fine-detail noise over the part's median: sigma_add = sigma_FD "
                           "sqrt(1/f - 1) per image)")
    noise_source: str = opt("generator", "fd2ld: noise: generator (F's coloured noise at the measured level) or "
                            "ld-residual (the site's own low-dose noise, LD - G0(LD) of the step's LD batch with G0 "
                            "the frozen --init-generator, scaled by sigma_add / sigma_LD per body part)")
    ndf: int = opt(64, "discriminator filters (70x70 PatchGAN, Zhu et al.)", cli=True)
    d_layers: int = opt(3, "PatchGAN layers; 3 gives the 70x70 receptive field")
    d_norm: str = opt("instance", "discriminator norm (Zhu et al.); \"batch\" sees noise level far sooner "
                      "(docs/training.md)")
    d_window: bool = opt(False, "discriminators also see each patch in its body part's reading window (LDCTBench); "
                         "docs/training.md", cli=True)
    d_condition: str = opt("none", "body-part: discriminators also get the patch's body part (C/L/N one-hot planes); "
                           "docs/training.md", cli=True)

    # --- losses ---
    supervised_loss: str = opt("l1", "supervised: l1, mse or l1+ssim (L1 + 0.2 x (1 - SSIM)) between G(LD) and FD")
    lambda_cycle: float = opt(10.0, "cycle L1 weight (Zhu et al., MathWorks)")
    lambda_adv_fd: float = opt(1.0, "weight of G's adversarial term (D_fd); 0 with fd2ld: noise: G learns from the "
                                "backward cycle G(F(FD)) ~ FD alone")
    lambda_identity: float = opt(5.0, "identity 1-SSIM weight: 0.5 x lambda_cycle as Zhu et al.'s identity term")
    # Research switches that did not help (docs/history.md): off by default, config files only.
    lambda_identity_l1: float = opt(0.0, "optional identity L1 weight (off: SSIM alone, as in the MathWorks example)")
    lambda_fidelity_lf: float = opt(0.0, "weight of L1 between pooled G(LD) and LD (and F(FD), FD): keeps HU level, "
                                    "not noise")
    fidelity_pool: int = opt(8, "pixels averaged per side for lambda_fidelity_lf (noise is high-frequency)")

    # --- optimisation ---
    lr: float = opt(2e-4, "Adam learning rate (Zhu et al., MathWorks)", cli=True)
    beta1: float = opt(0.5, "Adam beta1: 0.5 is the GAN standard (Radford et al., Zhu et al.)")
    beta2: float = opt(0.999, "Adam beta2")
    epochs: int = opt(10, "schedule length; one TCIA epoch is ~10^6 patches, far more than Zhu's ~1k images")
    decay_epochs: int = opt(5, "lr constant, then linear decay to 0 over the last decay_epochs (Zhu et al.)")
    total_steps: int = opt(0, ">0: schedule length in optimizer steps instead of epochs (decay over the last half)",
                           cli=True)
    max_steps: int = opt(0, ">0: stop after this many optimizer steps, schedule unchanged (smoke tests, quick looks)",
                         cli=True)
    d_warmup_steps: int = opt(0, "CycleGAN: first steps train only the discriminators (fine-tuning from "
                              "--init-generator)")
    ld2fd_warmup_steps: int = opt(0, "CycleGAN: G (LD->FD) stays as it started for this many steps while F and the "
                                  "discriminators learn (G then first learns from an F that has)")
    noise_lr: float = opt(5e-3, "fd2ld: noise: Adam lr of the noise generator (1 121 parameters: levels, kernels, HU "
                          "dependence); 0 keeps it at its measured start (D_ld's loss then reports how close it is)")
    pool_size: int = opt(50, "image pool of generated images shown to the discriminators (Zhu et al.)")
    grad_clip: float = opt(0.0, "clip gradient norm at this value, or disable if == 0.0")

    # --- monitoring and checkpoints ---
    log_every: int = opt(10, "steps between metrics.csv rows / TensorBoard scalars")
    val_every: int = opt(200, "steps between validation passes (losses, noise estimate, preview PNG, TB images)",
                         cli=True)
    val_slices: int = opt(4, "val slices per dose used for validation (full slices, fixed set)", cli=True)
    checkpoint_every: int = opt(500, "steps between checkpoints (plus one at each epoch end and at the end)", cli=True)
    keep_checkpoints: int = opt(3, "keep the last K checkpoints")
    model_select: str = opt("last", "exported generator: last; val-pairs = best paired val gain (needs "
                            "val_pairs.csv); val-noise", cli=True)
    ema_decay: float = opt(0.0, "> 0: validate and export an exponential moving average of the LD->FD generator's "
                           "weights (avg = d avg + (1 - d) weights each step); 0: the generator itself")
    tensorboard: bool = opt(True, "write TensorBoard event files in RUN_DIR/tb", cli=True)

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise InputError("invalid training config: " + "; ".join(problems) + ".")

    def problems(self) -> list[str]:
        """Every inconsistency in the config (empty when valid)."""
        p: list[str] = []
        if self.precision not in PRECISIONS:
            p.append(f"precision must be one of {', '.join(PRECISIONS)}, found {self.precision!r}")
        if self.cache not in CACHE_MODES:
            p.append(f"cache must be one of {', '.join(CACHE_MODES)}, found {self.cache!r}")
        if self.d_norm not in D_NORMS:
            p.append(f"d_norm must be one of {', '.join(D_NORMS)}, found {self.d_norm!r}")
        if self.d_condition not in D_CONDITIONS:
            p.append(f"d_condition must be one of {', '.join(D_CONDITIONS)}, found {self.d_condition!r}")
        if self.method not in METHODS:
            p.append(f"method must be one of {', '.join(METHODS)}, found {self.method!r}")
        if self.supervised_loss not in SUPERVISED_LOSSES:
            p.append(f"supervised_loss must be one of {', '.join(SUPERVISED_LOSSES)}, found {self.supervised_loss!r}")
        if self.model_select not in MODEL_SELECT:
            p.append(f"model_select must be one of {', '.join(MODEL_SELECT)}, found {self.model_select!r}")
        if self.fd2ld not in FD2LD:
            p.append(f"fd2ld must be one of {', '.join(FD2LD)}, found {self.fd2ld!r}")
        if self.noise_source not in NOISE_SOURCES:
            p.append(f"noise_source must be one of {', '.join(NOISE_SOURCES)}, found {self.noise_source!r}")
        elif self.noise_source == "ld-residual" and (self.fd2ld != "noise" or not self.init_generator):
            p.append("noise_source: ld-residual needs fd2ld: noise and --init-generator (the trained denoiser whose "
                     "residual LD - G0(LD) is the site's noise)")
        if self.noise_level not in NOISE_LEVELS:
            p.append(f"noise_level must be one of {', '.join(NOISE_LEVELS)}, found {self.noise_level!r}")
        if not 0.0 <= self.ema_decay < 1.0:
            p.append(f"ema_decay must be in [0, 1), found {self.ema_decay}")
        if self.noise_lr < 0 or self.lambda_adv_fd < 0:
            p.append(f"need noise_lr >= 0 and lambda_adv_fd >= 0, found {self.noise_lr} and {self.lambda_adv_fd}")
        if self.fd2ld == "noise" and (self.lambda_identity > 0 or self.lambda_identity_l1 > 0):
            p.append("fd2ld: noise has no identity terms (a noise generator does not map LD to itself): set "
                     "lambda_identity and lambda_identity_l1 to 0")
        if self.g_norm not in ("instance", "none"):
            p.append(f"g_norm must be instance or none, found {self.g_norm!r}")
        if self.upsample not in ("resize", "transpose"):
            p.append(f"upsample must be resize or transpose, found {self.upsample!r}")
        if self.patch_size < 16 or self.patch_size % 4:
            p.append(f"patch_size must be a multiple of 4 and >= 16, found {self.patch_size}")
        for name in ("patches_per_slice", "batch_size", "ngf", "ndf", "d_layers", "patch_tries", "epochs", "fidelity_pool",
                     "log_every", "val_every", "checkpoint_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                p.append(f"{name} must be >= 1, found {getattr(self, name)}")
        for name in ("threads", "n_blocks", "num_workers", "total_steps", "max_steps", "pool_size", "d_warmup_steps", "ld2fd_warmup_steps", "val_slices", "decay_epochs"):
            if getattr(self, name) < 0:
                p.append(f"{name} must be >= 0, found {getattr(self, name)}")
        if self.d_layers >= 1 and self.patch_size < 3 * 2**self.d_layers:
            p.append(f"patch_size must be >= {3 * 2**self.d_layers} for a {self.d_layers}-layer PatchGAN "
                     f"(its deepest features need > 1 pixel for instance norm), found {self.patch_size}")
        if self.lambda_fidelity_lf > 0 and self.fidelity_pool > self.patch_size:
            p.append(f"fidelity_pool ({self.fidelity_pool}) must be <= patch_size ({self.patch_size})")
        if self.batch_size % self.patches_per_slice:
            p.append(f"batch_size ({self.batch_size}) must be a multiple of patches_per_slice ({self.patches_per_slice})")
        if self.decay_epochs > self.epochs:
            p.append(f"decay_epochs ({self.decay_epochs}) must be <= epochs ({self.epochs})")
        if not self.hu_high > self.hu_low:
            p.append(f"hu_high must be > hu_low, found {self.hu_low}..{self.hu_high}")
        if not 0.0 <= self.min_tissue_fraction <= 1.0:
            p.append(f"min_tissue_fraction must be in [0, 1], found {self.min_tissue_fraction}")
        if self.lr <= 0 or not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            p.append(f"need lr > 0 and betas in [0, 1), found lr={self.lr}, betas=({self.beta1}, {self.beta2})")
        if self.init_identity and not self.residual:
            p.append("init_identity needs residual=True (a zeroed head makes a non-residual generator output 0)")
        return p

    # --- construction ---
    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> TrainConfig:
        """The preset ``name`` with ``overrides`` applied (field names as keyword arguments)."""
        if name not in PRESETS:
            raise InputError(f"unknown preset {name!r} (expected one of {', '.join(PRESETS)}).")
        values = {**PRESETS[name], "preset": name}
        return cls.from_dict({**values, **overrides})

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> TrainConfig:
        """Build from a plain dict, refusing unknown keys and wrong types (all problems in one message)."""
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        problems = [f"unknown field(s) {', '.join(unknown)}"] if unknown else []
        clean: dict[str, Any] = {}
        for key, val in values.items():
            if key not in known:
                continue
            try:
                clean[key] = _coerce(val, known[key].type, key)
            except ValueError as err:
                problems.append(str(err))
        if problems:
            raise InputError(f"{source}: " + "; ".join(problems) + ".")
        return cls(**clean)

    @classmethod
    def from_file(cls, path: Path, **overrides: Any) -> TrainConfig:
        """Read a YAML or JSON file of field values; ``preset:`` in it picks the base preset."""
        values = read_config_file(path)
        in_file = values.pop("preset", None)
        name = str(overrides.pop("preset", None) or in_file or "matlab")  # a --preset flag beats the file's preset
        base = {**PRESETS.get(name, {}), "preset": name} if name in PRESETS else None
        if base is None:
            raise InputError(f"{path}: unknown preset {name!r} (expected one of {', '.join(PRESETS)}).")
        return cls.from_dict({**base, **values, **overrides}, source=str(path))

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (checked like a new config)."""
        return self.from_dict({**asdict(self), **changes})

    # --- derived ---
    @property
    def hu_window(self) -> HUWindow:
        return HUWindow(self.hu_low, self.hu_high)

    @property
    def slices_per_batch(self) -> int:
        """Slices decoded per optimizer step and process (each gives ``patches_per_slice`` patches)."""
        return self.batch_size // self.patches_per_slice

    @property
    def generator_kwargs(self) -> dict[str, Any]:
        """``ResNetGenerator`` keyword arguments (stored in the model card)."""
        kwargs = {"in_channels": 1, "out_channels": 1, "ngf": self.ngf, "n_blocks": self.n_blocks,
                  "upsample": self.upsample, "residual": self.residual}
        if self.g_norm != "instance":  # cards of earlier models have no "norm": they keep loading unchanged
            kwargs["norm"] = self.g_norm
        return kwargs

    def asdict(self) -> dict[str, Any]:
        return asdict(self)


CLI_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(TrainConfig) if f.metadata["cli"])
"""Fields that are ``ldct-monai train`` flags (``max_steps`` -> ``--max-steps``), in declaration order."""


def field_help(name: str) -> str:
    """The help text of field ``name`` (the reason for its default)."""
    return TrainConfig.__dataclass_fields__[name].metadata["help"]


# Fields that may change when a run is resumed: they do not change what the next step computes.
RESUMABLE_CHANGES = frozenset({
    "max_steps", "device", "num_workers", "log_every", "val_every", "val_slices",
    "checkpoint_every", "keep_checkpoints", "tensorboard", "cache", "cache_dir", "manifest", "out", "compile", "threads",
    "resume", "overwrite",
})

PRESETS: dict[str, dict[str, Any]] = {
    # The MathWorks "Unsupervised Medical Image Denoising Using CycleGAN" set-up: 128 px, 16 patches per
    # slice, minibatch 32, 6 residual blocks, 64 filters. A GPU configuration.
    "matlab": {},
    # Same model on a GPU with the fast path: bf16 autocast, NHWC, compiled, more loader workers.
    "gpu": {"precision": "bf16", "channels_last": True, "compile": True, "num_workers": 8},
    # Learns in ~3-4 minutes on 2 CPU cores (measured; docs/training.md): a 16-filter, 3-block residual
    # generator that starts as the identity, 64 px patches, 4 patches from each of 2 slices, and batch-norm
    # discriminators (with instance norm they could not tell LD from FD noise within 150 steps).
    # Chest, abdomen and head together (their noise levels overlap) learn only when the discriminators see
    # each patch in its body part's reading window, know the body part, and each step holds one body part
    # (docs/training.md, "Several body parts"). Validation on 6 slices per dose covers C, L and N.
    "cpu-small": {
        "patch_size": 64, "patches_per_slice": 4, "batch_size": 8, "ngf": 16, "n_blocks": 3, "ndf": 16,
        "d_norm": "batch", "d_window": True, "d_condition": "body-part", "body_part_batches": True,
        "num_workers": 0, "total_steps": 400, "log_every": 10, "val_every": 50, "checkpoint_every": 100,
        "val_slices": 6,
    },
    # Adapts the shipped denoiser to unpaired data of a new scanner or dose on 2 CPU cores: the CycleGAN's
    # LD -> FD generator starts from the shipped default model (same architecture: 24 filters, 4 blocks, no
    # norm); the FD -> LD one is a noise generator (fd2ld: noise) set to the noise the training slices' LD
    # has beyond their FD. It stays there (noise_lr 0): refining it against D_ld lost 0.1 dB on val of a
    # 5-10 % dose phantom domain and 0.3 dB on the demo's heads. Its level follows each FD image's own noise
    # (noise_level: image). The noise F adds is the site's own (noise_source: ld-residual): LD - G0(LD) of the
    # step's LD patches, G0 the frozen shipped model, scaled to the added noise level (by the residual's own
    # level: G0 leaves part of the noise). Validation and export use a moving average of G (ema_decay 0.98).
    # On sharper-kernel real anatomy that beat the start on test (+0.14 dB windowed, +0.26 full; chest +0.18,
    # abdomen +0.18, phantom heads +0.01 windowed), and the val curve rose smoothly, never below the start;
    # F's own coloured noise tied the start (-0.05 / +0.06). G learns from the backward cycle alone
    # (lambda_adv_fd 0: an adversarial G matches full-dose noise and loses PSNR), after 100 steps in which
    # it stays the shipped model. On that domain: val gain +5.56 -> +7.43 dB (docs/training.md, "Adapting
    # the shipped model").
    "cpu-finetune": {
        "init_generator": "builtin", "ngf": 24, "n_blocks": 4, "g_norm": "none", "grad_clip": 1.0,
        "fd2ld": "noise", "noise_level": "image", "noise_source": "ld-residual", "lambda_adv_fd": 0.0, "lambda_cycle": 1.0, "lambda_identity": 0.0,
        "noise_lr": 0.0,
        "patch_size": 64, "patches_per_slice": 8, "batch_size": 16, "ndf": 16,
        "d_norm": "batch", "d_window": True, "d_condition": "body-part", "body_part_batches": True,
        "lr": 1e-4, "d_warmup_steps": 25, "ld2fd_warmup_steps": 100, "model_select": "val-pairs", "ema_decay": 0.98,
        "channels_last": True, "num_workers": 0, "total_steps": 400, "log_every": 10, "val_every": 25,
        "checkpoint_every": 200, "val_slices": 6,
    },
    # Adapts the shipped denoiser to a new scanner, kernel or dose from that site's own full-dose series:
    # supervised fine-tuning on pairs simulated from them (synth --from-tree FD_SERIES, build-manifest --paired).
    # On a 5-10 % dose phantom domain: val gain +5.56 -> +7.97 dB in 400 steps (86 s on 2 CPU cores), where
    # the unpaired cpu-finetune CycleGAN lost PSNR (docs/training.md, "Adapting the shipped model").
    "cpu-adapt": {
        "method": "supervised", "init_generator": "builtin", "supervised_loss": "l1", "ngf": 24, "n_blocks": 4,
        "g_norm": "none", "init_identity": False, "grad_clip": 1.0, "patch_size": 64, "patches_per_slice": 8,
        "batch_size": 16, "lr": 1e-4, "beta1": 0.9, "total_steps": 400, "model_select": "val-pairs",
        "channels_last": True, "num_workers": 0, "log_every": 10, "val_every": 50, "checkpoint_every": 200, "val_slices": 6,
    },
}


def read_config_file(path: Path) -> dict[str, Any]:
    """A YAML (.yaml/.yml) or JSON (.json) mapping of field names to values."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: config file not found.")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".json":
            values = json.loads(text)
        else:
            import yaml

            values = yaml.safe_load(text)
    except ValueError as err:  # json.JSONDecodeError and yaml.YAMLError are ValueError / YAMLError
        raise InputError(f"{path}: not valid {path.suffix[1:].upper() or 'YAML'} ({err}).") from err
    except Exception as err:  # yaml.YAMLError does not derive from ValueError
        raise InputError(f"{path}: not valid YAML ({str(err).splitlines()[0]}).") from err
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise InputError(f"{path}: expected a mapping of config fields, found {type(values).__name__}.")
    return dict(values)


def _coerce(value: Any, type_name: Any, key: str) -> Any:
    """Check/convert a value to the field's annotated type ("int", "float", "bool", "str")."""
    t = type_name if isinstance(type_name, str) else getattr(type_name, "__name__", str(type_name))
    if t == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ValueError(f"{key} must be true or false, found {value!r}")
    if t == "int":
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())
                                           or (isinstance(value, str) and value.strip().lstrip("-").isdigit())):
            raise ValueError(f"{key} must be an integer, found {value!r}")
        return int(value)
    if t == "float":
        try:
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{key} must be a number, found {value!r}") from None
    if t == "str":
        if value is None:
            return ""
        return str(value)
    return value


def config_diff(old: TrainConfig, new: TrainConfig) -> dict[str, tuple[Any, Any]]:
    """Fields whose values differ: name -> (old, new)."""
    a, b = asdict(old), asdict(new)
    return {k: (a[k], b[k]) for k in a if a[k] != b[k]}


__all__ = ["TrainConfig", "PRESETS", "CLI_FIELDS", "field_help", "opt", "RESUMABLE_CHANGES", "CACHE_MODES", "D_CONDITIONS", "MODEL_SELECT", "config_diff", "read_config_file"]

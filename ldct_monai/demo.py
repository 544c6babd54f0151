"""``ldct-monai demo``: the whole pipeline on built-in synthetic data, sized for a laptop CPU.

synth -> build-manifest --paired -> train (cpu-finetune: the unpaired CycleGAN starting from the shipped
denoiser, as a user adapts it to their scanner) -> evaluate (the demo's model beside the shipped one and
the classical filters) -> denoise one test series to DICOM, then a short table of what the run measured.
Every stage is the same library call its own command makes.

The exported model is the generator of the validation pass with the best paired gain on the simulated
val twins (``model_select="val-pairs"``), step 0 (the shipped model itself) included, so the demo's model is
never worse on val than the shipped one.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ldct_monai.errors import InputError, OutputExistsError
from ldct_monai.io_utils import atomic_write_text
from ldct_monai.progress import console
from ldct_monai.runtime import native_bf16

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoConfig:
    """Sizes of the demo run; the defaults finish in well under 10 minutes on 2 CPU cores."""

    patients: int = 5  # per body part: enough that train, val and test each get patients of C, L and N
    slices: int = 6  # per series; the model is 2-D, so more slices only add time
    size: int = 256  # px; 512 is the clinical matrix but quadruples every stage's time
    seed: int = 0  # one seed for data, splits and training: a demo run is reproducible
    steps: int | None = 200  # optimizer steps (the first quarter keeps G at the shipped model); None = the preset's own
    preset: str = "cpu-finetune"  # training preset (ldct_monai.train_config.PRESETS): CycleGAN from the shipped model
    device: str = "auto"  # cuda when present: the demo uses a GPU automatically
    precision: str = "auto"  # training precision; auto = bf16 where it runs natively (CUDA, AVX-512-BF16/AMX CPUs), else fp32
    model_select: str = "val-pairs"  # the best paired val gain (step 0, the shipped model, included)
    eval_slices: int | None = None  # test pairs evaluated; None = all
    baselines: tuple[str, ...] = ("gaussian", "nlm")  # classical filters reported beside the model
    reference: str | None = "builtin"  # the shipped model, scored beside the demo's model
    quick: bool = False  # reduced run (CI, smoke tests): tiny model and patches; its numbers mean little

    @classmethod
    def make_quick(cls, seed: int = 0) -> DemoConfig:
        """A reduced run for CI and smoke tests: tiny images, a few steps."""
        return cls(patients=3, slices=3, size=64, seed=seed, steps=6, quick=True, reference=None)

    def train_overrides(self) -> dict:
        """Training fields the demo sets beyond the preset."""
        extra: dict = {"seed": self.seed, "device": self.device,
                       "precision": resolve_precision(self.precision, self.device) if not self.quick else "fp32",
                       "model_select": self.model_select}
        if self.steps is not None:  # eight validation points on the curve, whatever the length; warm-ups in proportion
            extra.update(total_steps=self.steps, val_every=max(1, self.steps // 8), checkpoint_every=max(1, self.steps // 2),
                         d_warmup_steps=self.steps // 16, ld2fd_warmup_steps=self.steps // 4)
        if self.quick:  # a tiny generator from scratch: the shipped model's architecture would not fit
            extra.update(patch_size=32, ngf=4, n_blocks=1, ndf=4, val_every=max(1, self.steps), checkpoint_every=max(1, self.steps),
                         init_generator="", noise_source="generator", g_norm="instance", d_warmup_steps=0, ld2fd_warmup_steps=0, lr=2e-4,
                         lambda_cycle=10.0)
        return extra


def resolve_precision(precision: str, device: str = "auto") -> str:
    """``auto`` -> ``bf16`` where :func:`native_bf16`, else ``fp32``; other values pass through."""
    if precision != "auto":
        return precision
    return "bf16" if native_bf16(device) else "fp32"


def run_demo(out: Path, config: DemoConfig = DemoConfig(), overwrite: bool = False, progress: bool = True) -> dict:
    """Run the pipeline into ``out`` and return a summary (paths, timings, the evaluation summary).

    ``out`` is a workspace (data/, manifests/, run/, report/, denoised/): each stage writes its own
    folder atomically, and an existing non-empty ``out`` is refused unless ``overwrite``.

    Raises:
        OutputExistsError: ``out`` exists, is not empty, and ``overwrite`` is False.
    """
    from ldct_monai.denoise import denoise_series
    from ldct_monai.engine import train
    from ldct_monai.evaluate import EvalConfig, evaluate
    from ldct_monai.manifest import load_split
    from ldct_monai.manifest_builder import ManifestConfig, build_manifest
    from ldct_monai.synth import SynthConfig, synth_tree
    from ldct_monai.train_config import TrainConfig

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: demo output path exists and is not a directory.")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise OutputExistsError(f"{out}: demo output folder exists and is not empty (use --overwrite to replace it).")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {k: out / k for k in ("data", "manifests", "run", "report", "denoised")}
    timings: dict[str, float] = {}
    t_all = time.perf_counter()

    def stage(name: str, title: str):
        console.rule(f"[bold]{title}")
        return time.perf_counter()

    t = stage("synth", f"1/5 synth: {config.patients} patients x C/L/N, {config.slices} slices, {config.size} px")
    synth_tree(paths["data"], SynthConfig(patients=config.patients, slices=config.slices, size=config.size, seed=config.seed),
               progress=progress)
    timings["synth"] = time.perf_counter() - t

    t = stage("manifest", "2/5 build-manifest")
    # --paired: val twins score the unpaired fine-tuning (model_select val-pairs); training itself stays unpaired
    build_manifest(paths["data"], paths["manifests"], ManifestConfig(seed=config.seed, paired=True), progress=progress)
    timings["build_manifest"] = time.perf_counter() - t

    overrides = config.train_overrides()
    t = stage("train", f"3/5 train ({config.preset}, {config.steps or 'preset'} steps, device {config.device}, "
                       f"{overrides['precision']})")
    tcfg = TrainConfig.from_preset(
        config.preset,
        manifest=str(paths["manifests"]),
        out=str(paths["run"]),
        **overrides,
    )
    run_dir = train(tcfg)
    timings["train"] = time.perf_counter() - t

    t = stage("evaluate", "4/5 evaluate on the paired test split")
    ecfg = EvalConfig(device=config.device, baselines=config.baselines, max_slices=config.eval_slices,
                      reference=config.reference)
    summary = evaluate(paths["manifests"], run_dir, paths["report"], ecfg, progress=progress)
    timings["evaluate"] = time.perf_counter() - t

    t = stage("denoise", "5/5 denoise one low-dose test series to DICOM")
    pairs = load_split(paths["manifests"], "test_pairs")
    if pairs.empty:
        raise InputError(f"{paths['manifests']}: the demo's test split is empty; use more --patients.")
    first = pairs.sort_values(["patient_id", "z"]).iloc[0]
    series_dir = Path(first["ld_path"]).parent
    dn = denoise_series(series_dir, paths["denoised"] / str(first["patient_id"]), run_dir, device=config.device, progress=progress)
    timings["denoise"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t_all

    result = {
        "config": asdict(config),
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "paths": {
            "data": str(paths["data"]),
            "manifest": str(paths["manifests"]),
            "model": str(run_dir / "model"),
            "report": str(paths["report"]),
            "summary_md": str(paths["report"] / "summary.md"),
            "figures": [str(f) for f in sorted((paths["report"]).rglob("*.png"))],
            "training_previews": [str(f) for f in sorted(Path(run_dir).rglob("*.png"))][:6],
            "denoised_series": str(dn.get("out_dir", paths["denoised"] / str(first["patient_id"]))),
            "denoised_source": str(series_dir),
        },
        "evaluation": summary,
    }
    import json

    atomic_write_text(out / "demo.json", json.dumps(result, indent=2, default=str) + "\n")
    return result

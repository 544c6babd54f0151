"""`ldct-monai train`: every option is a field of ``TrainConfig`` (one-to-one), plus --config FILE.

The options are generated from the dataclass, so the CLI and the config can never drift apart: field
``max_steps`` is ``--max-steps``, booleans are ``--flag/--no-flag``, and each option's help is the
field's comment in ``ldct_monai/train_config.py``. Options left out keep the value of the layer below
(dataclass default < --preset < --config FILE < flags; with --resume the run's saved config.json).

Multi-GPU / multi-node: ``torchrun --nproc-per-node=N -m ldct_monai.cli train ...`` (DDP, rank 0 writes).
"""

from __future__ import annotations

import inspect
import logging
import re
from dataclasses import fields
from pathlib import Path
from typing import Any, Optional

import typer

from ldct_monai import train_config as tc
from ldct_monai.progress import console

log = logging.getLogger(__name__)

_TYPES = {"int": int, "float": float, "str": str, "bool": bool}
_FIRST = ("manifest", "out", "preset", "max_steps", "seed", "device", "precision", "resume", "overwrite")


def _field_help() -> dict[str, str]:
    """Field name -> its trailing comment in train_config.py (the reason for the default)."""
    src = inspect.getsource(tc.TrainConfig)
    return {m.group(1): m.group(2).strip() for m in re.finditer(r"^\s+(\w+): \w+ = .*?  # (.*)$", src, re.M)}


def _run(config_file: Path | None, **values: Any) -> None:
    """Build the config from the layers and train."""
    import json
    import os

    from ldct_monai.engine import train as run_training

    given = {k: v for k, v in values.items() if v is not None}
    if given.get("resume"):
        out = given.get("out")
        saved = Path(out or ".") / "config.json"
        if not out or not saved.is_file():
            raise tc.InputError(f"--resume needs --out RUN_DIR of an earlier run (no {saved}).")
        base = json.loads(saved.read_text())
        base["max_steps"] = 0  # --resume runs to the end of the schedule unless --max-steps is given again
        cfg = tc.TrainConfig.from_dict({**base, **given}, source=str(saved))
    elif config_file is not None:
        cfg = tc.TrainConfig.from_file(config_file, **given)
    else:
        preset = given.pop("preset", None)
        if preset is None:
            import torch

            preset = "matlab" if torch.cuda.is_available() else "cpu-small"
            log.info("Preset %s (no --preset given; %s).", preset,
                     "a GPU is present" if preset == "matlab" else "no GPU: the small CPU model; --preset matlab for the reference")
        cfg = tc.TrainConfig.from_preset(preset, **given)
    rank0 = os.environ.get("RANK", "0") == "0"
    if rank0:
        console.print(f"[bold]train[/] preset {cfg.preset}: {cfg.patch_size}px patches, batch {cfg.batch_size}, "
                      f"ngf {cfg.ngf}, {cfg.n_blocks} blocks, {cfg.precision}, device {cfg.device} -> {cfg.out}",
                      highlight=False)
    run_dir = run_training(cfg)
    if rank0:
        console.print(f"[green]done[/]: model in {run_dir / 'model'}; curves {run_dir / 'loss_curves.png'}; "
                      f"previews in {run_dir / 'previews'}", highlight=False)


def _build_command():
    helps = _field_help()
    params = [inspect.Parameter("config_file", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[Path],
                                default=typer.Option(None, "--config", help="YAML or JSON file of config fields "
                                                     "(may set 'preset'); flags given on the command line win."))]
    ordered = sorted(fields(tc.TrainConfig), key=lambda f: (_FIRST.index(f.name) if f.name in _FIRST else 99))
    for f in ordered:
        typ = _TYPES[f.type if isinstance(f.type, str) else f.type.__name__]
        flag = "--" + f.name.replace("_", "-")
        decls = [f"{flag}/--no-{f.name.replace('_', '-')}"] if typ is bool else [flag]
        if f.name == "preset":
            helptext = f"Preset: {', '.join(tc.PRESETS)} (default: matlab with a GPU, cpu-small without)."
        elif f.name in ("manifest", "out"):
            helptext = helps.get(f.name, "")
        else:
            helptext = f"{helps.get(f.name, '')} [default: {f.default!r}, or the preset's]"
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, annotation=Optional[typ],
                                        default=typer.Option(None, *decls, help=helptext, show_default=False)))

    def train(**kwargs: Any) -> None:
        """Train the CycleGAN (LD <-> FD) on a manifest and export the LD->FD generator to RUN_DIR/model."""
        config_file = kwargs.pop("config_file", None)
        _run(config_file, **kwargs)

    train.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    return train


train = _build_command()

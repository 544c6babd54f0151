"""`ldct-monai models`: the denoisers shipped in the package, their cards, and converting old model folders."""

from __future__ import annotations

from pathlib import Path

import typer

USAGE = "ldct-monai models [NAME] | ldct-monai models convert OLD_FOLDER NEW_FOLDER"


def models(
    words: list[str] | None = typer.Argument(
        None, metavar="[NAME | convert OLD NEW]",
        help="NAME: show that shipped model's card (docs/README.md). convert OLD NEW: make a MONAI bundle NEW of a "
             "model folder written before bundles (generator.pt + model.json); the weights are copied unchanged."),
    overwrite: bool = typer.Option(False, "--overwrite", help="convert: replace NEW if it is ldct-monai output."),
) -> None:
    """List the shipped models (MONAI bundles; the default of denoise / evaluate and of train --init-generator builtin)."""
    from ldct_monai.errors import InputError

    words = list(words or [])
    if words and words[0] == "convert":
        if len(words) != 3:
            raise InputError(f"models convert needs OLD and NEW folders, found {len(words) - 1} argument(s); usage: {USAGE}.")
        _convert(Path(words[1]), Path(words[2]), overwrite)
    elif len(words) > 1:
        raise InputError(f"models takes one model name, found {len(words)} arguments; usage: {USAGE}.")
    elif words:
        _show(words[0])
    else:
        _list()


def _convert(old: Path, new: Path, overwrite: bool) -> None:
    from ldct_monai.modelio import convert_model, load_model
    from ldct_monai.progress import console

    out = convert_model(old, new, overwrite=overwrite)
    m = load_model(out)
    console.print(f"Wrote the MONAI bundle {out} (card {m.card_hash}; weights unchanged, sha256 "
                  f"{m.card['weights']['sha256'][:16]}...). Use it with --model {out}.", highlight=False)


def _show(name: str) -> None:
    from ldct_monai.bundle import METADATA, README
    from ldct_monai.models import builtin_model_dir
    from ldct_monai.progress import console

    path = builtin_model_dir(name)
    readme = path / README
    console.print(readme.read_text() if readme.is_file() else (path / METADATA).read_text(), highlight=False)


def _list() -> None:
    from rich.table import Table

    from ldct_monai.modelio import read_card
    from ldct_monai.models import BUILTIN, builtin_model_dir, shipped_models
    from ldct_monai.progress import console

    table = Table(title="Shipped models (MONAI bundles in ldct_monai/models/)")
    table.add_column("name", no_wrap=True)
    for col in ("default", "trained on", "HU window", "measured"):
        table.add_column(col)
    for model in shipped_models():
        card = read_card(builtin_model_dir(model))
        hu = card.get("hu_window", {})
        table.add_row(model, "yes" if model == BUILTIN else "", str(card.get("training_data", {}).get("summary", "")),
                      f"[{hu.get('low')}, {hu.get('high')}]", str(card.get("quality", {}).get("summary", "")))
    console.print(table)
    console.print("Whole card: ldct-monai models NAME. Model folders from before bundles: ldct-monai models convert "
                  "OLD NEW.", highlight=False)
    if not shipped_models():
        console.print("No model is shipped in this installation.")

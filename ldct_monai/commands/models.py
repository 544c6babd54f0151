"""`ldct-monai models`: the denoisers shipped in the package and their cards."""

from __future__ import annotations

import json

import typer


def models(
    name: str | None = typer.Argument(None, help="Show this model's whole card (README) instead of the list."),
) -> None:
    """List the shipped models (the default of denoise / evaluate, and of train --init-generator builtin)."""
    from rich.table import Table

    from ldct_monai.models import BUILTIN, builtin_model_dir, shipped_models
    from ldct_monai.progress import console

    if name is not None:
        path = builtin_model_dir(name)
        readme = path / "README.md"
        console.print(readme.read_text() if readme.is_file() else (path / "model.json").read_text(), highlight=False)
        return
    table = Table(title="Shipped models (ldct_monai/models/)")
    table.add_column("name", no_wrap=True)
    for col in ("default", "trained on", "HU window", "measured"):
        table.add_column(col)
    for model in shipped_models():
        card = json.loads((builtin_model_dir(model) / "model.json").read_text())
        hu = card.get("hu_window", {})
        table.add_row(model, "yes" if model == BUILTIN else "", str(card.get("training_data", {}).get("summary", "")),
                      f"[{hu.get('low')}, {hu.get('high')}]", str(card.get("quality", {}).get("summary", "")))
    console.print(table)
    console.print("Whole card: ldct-monai models NAME.", highlight=False)
    if not shipped_models():
        console.print("No model is shipped in this installation.")

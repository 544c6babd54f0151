"""Models as MONAI bundles: the layout every model folder of ldct-monai has.

A bundle (MONAI Bundle specification) is a folder, or a zip of one, holding::

    configs/metadata.json   MONAI metadata (schema-valid) + our model card under "ldct_monai"
    configs/inference.json  network_def, pre-/post-processing, inferer and a runnable workflow
    models/model.pt         the generator's state_dict (torch.load(..., weights_only=True))
    docs/README.md          the card for people
    LICENSE                 Apache-2.0 (the licence of ldct-monai), with a note on the training data

Modules:

* :mod:`ldct_monai.bundle.configs`: writes ``metadata.json`` / ``inference.json`` / ``LICENSE`` and
  validates metadata against the vendored schema (no network).
* :mod:`ldct_monai.bundle.trust`: what a config may name before ldct-monai touches it.
* :mod:`ldct_monai.bundle.files`: reads a bundle's files from a folder, a run folder or a zip.
* :mod:`ldct_monai.bundle.workflow`: the components ``inference.json`` instantiates when a MONAI user
  runs ``python -m monai.bundle run``.

Loading and exporting models (:func:`ldct_monai.modelio.load_model`, :func:`ldct_monai.modelio.export_model`)
build on these. The user guide is ``docs/bundles.md``.
"""

from __future__ import annotations

from pathlib import Path

METADATA = "configs/metadata.json"
INFERENCE = "configs/inference.json"
WEIGHTS = "models/model.pt"
README = "docs/README.md"
LICENSE = "LICENSE"

SCHEMA_URL = "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json"
SCHEMA_PATH = Path(__file__).parent / "schema" / "meta_schema_20240725.json"  # vendored: see schema/SOURCE.md
SCHEMA_MD5 = "76e1add273836515d0bbb3bc71962474"  # of SCHEMA_PATH; `verify_metadata --hash_val` checks it
APACHE_TEXT = Path(__file__).parent / "APACHE-2.0.txt"

CARD_KEY = "ldct_monai"  # metadata.json key holding our model card (architecture, HU window, provenance)
CARD_FORMAT = 2  # 1 = the pre-bundle model.json; 2 = the card inside a bundle's metadata.json

__all__ = [
    "APACHE_TEXT", "CARD_FORMAT", "CARD_KEY", "INFERENCE", "LICENSE", "METADATA", "README", "SCHEMA_MD5",
    "SCHEMA_PATH", "SCHEMA_URL", "WEIGHTS",
]

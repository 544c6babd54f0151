"""The project's own exceptions.

The CLI turns every :class:`LdctError` into a one-line message and exit code 1, so raise these (never
``assert``) for problems with a user's input, naming the file and what was expected.
"""

from __future__ import annotations


class LdctError(Exception):
    """Base class: a problem the user can fix (bad input, existing output, missing model ...)."""


class InputError(LdctError):
    """Input data (a DICOM file, series, manifest, model, config) is missing or not as expected."""


class OutputExistsError(LdctError):
    """The output location exists and ``--overwrite`` was not given."""


class TrainingDiverged(LdctError):
    """A loss became NaN or infinite during training."""

"""A bundle's files, read from a bundle folder, a run folder (``RUN_DIR/model``) or a zip of a bundle.

A zip is read in memory, member by member: nothing is extracted, so member names can never write
outside a folder. The zip holds the bundle at its root or inside one top folder (``NAME/configs/...``,
what zipping the bundle folder gives).
"""

from __future__ import annotations

import zipfile
from pathlib import Path, PurePosixPath

from ldct_monai.bundle import METADATA
from ldct_monai.errors import InputError

MAX_MEMBER_BYTES = 2 << 30  # a zip member larger than this (uncompressed) is refused, not read into memory
RUN_MODEL_DIR = "model"  # the bundle inside a training run folder


class BundleFiles:
    """Read-only access to the files of one bundle.

    Args:
        path: the bundle folder or the zip file.
        zip_prefix: inside a zip, the folder holding ``configs/`` ("" for the root, or "NAME/").
    """

    def __init__(self, path: Path, zip_prefix: str | None = None) -> None:
        self.path = Path(path)
        self.zip_prefix = zip_prefix

    @property
    def is_zip(self) -> bool:
        return self.zip_prefix is not None

    def label(self, rel: str) -> str:
        """How to name the file ``rel`` in messages (``/a/b.zip:NAME/configs/metadata.json``)."""
        return f"{self.path}:{self.zip_prefix}{rel}" if self.is_zip else str(self.path / rel)

    def exists(self, rel: str) -> bool:
        if not self.is_zip:
            return (self.path / rel).is_file()
        with zipfile.ZipFile(self.path) as zf:
            return f"{self.zip_prefix}{rel}" in zf.namelist()

    def read(self, rel: str) -> bytes:
        """The bytes of ``rel`` (a path inside the bundle, e.g. ``configs/metadata.json``).

        Raises:
            InputError: missing, unreadable, or (in a zip) too large.
        """
        if not self.is_zip:
            try:
                return (self.path / rel).read_bytes()
            except OSError as err:
                raise InputError(f"{self.label(rel)}: cannot read it ({err.strerror or err}).") from err
        try:
            with zipfile.ZipFile(self.path) as zf:
                info = zf.getinfo(f"{self.zip_prefix}{rel}")
                if info.file_size > MAX_MEMBER_BYTES:
                    raise InputError(f"{self.label(rel)}: {info.file_size} bytes uncompressed, more than the "
                                     f"{MAX_MEMBER_BYTES} a bundle file may have.")
                return zf.read(info)
        except KeyError as err:
            raise InputError(f"{self.label(rel)}: missing from the zip.") from err
        except (zipfile.BadZipFile, OSError) as err:
            raise InputError(f"{self.label(rel)}: cannot read it from the zip ({err}).") from err


def find_bundle(path: Path) -> BundleFiles | None:
    """The bundle at ``path`` (a bundle folder, a run folder holding ``model/``, or a zip), or None.

    Raises:
        InputError: a zip that is broken, holds no bundle, or holds several.
    """
    path = Path(path)
    if path.is_dir():
        for folder in (path, path / RUN_MODEL_DIR):
            if (folder / METADATA).is_file():
                return BundleFiles(folder)
        return None
    if path.is_file() and zipfile.is_zipfile(path):
        return BundleFiles(path, _zip_prefix(path))
    return None


def _zip_prefix(path: Path) -> str:
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError) as err:
        raise InputError(f"{path}: not a readable zip ({err}).") from err
    prefixes = sorted({n[: -len(METADATA)] for n in names if n == METADATA or n.endswith("/" + METADATA)})
    prefixes = [p for p in prefixes if p == "" or (len(PurePosixPath(p).parts) == 1 and p.endswith("/"))]
    if len(prefixes) != 1:
        found = "none" if not prefixes else ", ".join(repr(p) for p in prefixes)
        raise InputError(f"{path}: a model zip must hold one bundle ({METADATA} at its root or in one top "
                         f"folder); found {found}.")
    prefix = prefixes[0]
    if any(PurePosixPath(n).is_absolute() or ".." in PurePosixPath(n).parts for n in names if n.startswith(prefix)):
        raise InputError(f"{path}: a member name is absolute or contains '..'; refusing the zip.")
    return prefix

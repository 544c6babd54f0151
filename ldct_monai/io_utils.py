"""Atomic output: write to a temporary place beside the target, then rename.

Every command that writes output uses these, so an interrupted run never leaves a half-written file or
folder where a user or a viewer would pick it up, and existing output is never replaced without
``overwrite``. The rules for OUT_DIR (see ``docs/errors.md``):

- a symbolic link is followed: the output goes to the link's target (the link keeps pointing there);
  the temporary folder is a sibling of the target, so it is on the target's filesystem and the final
  rename never crosses filesystems (no EXDEV). A dangling link's target is created only when the
  target's parent folder exists (a missing parent is often an unmounted drive);
- OUT_DIR must not be the current folder or contain it (``.``, ``..``): the folder a shell is in
  cannot be replaced;
- a mount point, or an existing empty folder whose parent is not writable, is filled in place: the
  temporary folder is inside it and its entries are moved up at the end;
- ``overwrite`` replaces only a folder that is recognisably ldct-monai output (:func:`foreign_files`);
  anything else is refused with a list of what would have been deleted;
- a full disk ends in a one-line :class:`InputError`, the temporary folder removed;
- temporary folders of runs that were killed (``.NAME.tmp-*``, ``.NAME.old-*`` beside OUT_DIR) are
  removed when their process is gone, else mentioned in a warning.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

from ldct_monai.errors import InputError, OutputExistsError

log = logging.getLogger(__name__)

XATTR = "user.ldct_monai.output"  # set on every folder atomic_output_dir makes: "this is our output"
OWNER_FILE = ".ldct-monai-owner"  # pid@host of the run writing a temporary folder (removed before the rename)
SIGNATURES = (b"ldct-monai", b"ldct_monai", b"LDCT_MONAI")  # written into every DICOM and JSON file we make
OUR_SUFFIXES = frozenset({".dcm", ".csv", ".json", ".md", ".png", ".pt", ".safetensors", ".npy", ".yaml", ".log"})
SIGNATURE_BYTES = 1 << 16  # a DICOM header names us in its file meta or DerivationDescription, well inside 64 KiB
INPLACE_PREFIX = ".ldct-monai."  # temporary folders inside a mount point filled in place
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def resolve_output(out_dir: Path) -> Path:
    """The absolute folder output will really be written to: symbolic links followed, ``.`` resolved.

    Raises:
        InputError: a symbolic-link loop; a dangling link whose target's parent does not exist.
    """
    out_dir = Path(out_dir)
    try:
        os.stat(out_dir)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise InputError(f"{out_dir}: OUT_DIR is a loop of symbolic links.") from err
    target = Path(os.path.realpath(out_dir))
    if out_dir.is_symlink() and not target.exists() and not target.parent.is_dir():
        raise InputError(
            f"{out_dir}: OUT_DIR is a symbolic link to {target}, which does not exist, nor does its folder "
            f"{target.parent} (an unmounted drive?); create it or remove the link."
        )
    return target


def check_output_dir(out_dir: Path, overwrite: bool, signature: Callable[[Path], bool] | None = None) -> Path:
    """Check ``out_dir`` can receive output; return the real folder it will be written to.

    Refuses an existing non-empty ``out_dir`` unless ``overwrite``, and with ``overwrite`` a folder that is
    not recognisably ldct-monai output (``signature``: more files to accept as ours, see
    :func:`foreign_files`). Creates the parent folder (never through a dangling link whose target's parent
    is missing). Mentions or removes temporary folders left by killed runs.

    Raises:
        OutputExistsError: ``out_dir`` exists, is not empty, and ``overwrite`` is False.
        InputError: ``out_dir`` is a file, the current folder (or holds it), a symbolic-link loop, holds files
            ldct-monai did not write (with ``overwrite``), or its parent cannot be created or written.
    """
    out_dir = Path(out_dir)
    target = resolve_output(out_dir)
    shown = out_dir if str(out_dir) == str(target) else f"{out_dir} (-> {target})"
    if target.exists() and not target.is_dir():
        raise InputError(f"{shown}: output path exists and is not a directory.")
    cwd = Path(os.path.realpath(os.getcwd()))
    if cwd == target or cwd.is_relative_to(target):
        raise InputError(f"{shown}: OUT_DIR is the current folder or holds it; name a new folder (e.g. ./out).")
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"{parent}: cannot create the output's parent directory ({err.strerror}).") from err
    clean_stale_temps(target)
    if target.is_dir():
        entries = [p for p in target.iterdir() if not _is_our_temp(p.name, INPLACE_PREFIX)]
        if entries and not overwrite:
            raise OutputExistsError(f"{shown}: output directory exists and is not empty (use --overwrite to replace it).")
        if entries:
            refuse_foreign(target, shown, signature)
    if not os.access(parent, os.W_OK | os.X_OK) and not _in_place(target):
        raise InputError(f"{parent}: output directory is not writable.")
    if _in_place(target) and not os.access(target, os.W_OK | os.X_OK):
        raise InputError(f"{target}: output directory is not writable.")
    return target


def _in_place(target: Path) -> bool:
    """Fill ``target`` from inside: it is a mount point, or an existing folder in an unwritable parent."""
    if not target.is_dir():
        return False
    return os.path.ismount(target) or not os.access(target.parent, os.W_OK | os.X_OK)


# --------------------------------------------------------------------------------------------------
# Is this our output?


def _has_signature(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(SIGNATURE_BYTES)
    except OSError:
        return False
    return any(s in head for s in SIGNATURES)


def _has_marker(folder: Path) -> bool:
    try:
        return bool(os.getxattr(folder, XATTR))
    except (OSError, AttributeError):  # no xattr support (filesystem or platform): judge by content
        return False


def _mark(folder: Path) -> None:
    from ldct_monai import __version__

    with contextlib.suppress(OSError, AttributeError):
        os.setxattr(folder, XATTR, f"ldct-monai {__version__}".encode())


def foreign_files(folder: Path, signature: Callable[[Path], bool] | None = None, limit: int = 10) -> tuple[list[Path], int]:
    """Files under ``folder`` that ldct-monai did not write, as (first ``limit`` of them, how many).

    A folder made by :func:`atomic_output_dir` (extended attribute :data:`XATTR`) is ours as a whole.
    Otherwise a file counts as ours when it names ldct-monai in its first 64 KiB (every DICOM file,
    ``splits.json``, ``summary.json``, ``model.json`` we write does), or when it has one of our suffixes
    (:data:`OUR_SUFFIXES`) in a folder holding at least one such signed file; hidden temporary files of
    ours always count. A ``.dcm`` file must be signed: a folder of source DICOM is never ours.

    Args:
        folder: the folder to judge.
        signature: more files to accept as signed (e.g. a training run's ``config.json``).
        limit: how many foreign files to return.
    """
    if _has_marker(folder):
        return [], 0
    key = _folder_key(folder)
    if key in _accepted:
        return [], 0
    signed = False
    unsigned: list[Path] = []
    foreign: list[Path] = []
    n_foreign = 0
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for name in sorted(filenames):
            p = Path(dirpath) / name
            if _is_temp_name(name) or name == OWNER_FILE:
                continue
            if _has_signature(p) or (signature is not None and signature(p)):
                signed = True
            elif p.suffix.lower() in OUR_SUFFIXES - {".dcm"} or name.startswith("events.out.tfevents."):
                unsigned.append(p)
            else:
                n_foreign += 1
                if len(foreign) < limit:
                    foreign.append(p)
    if not signed:
        n_foreign += len(unsigned)
        foreign = sorted(foreign + unsigned)[:limit]
    if not n_foreign and key is not None:
        _accepted.add(key)  # check_output_dir, then atomic_output_dir: walk a big tree once
    return foreign, n_foreign


_accepted: set[tuple[str, int]] = set()
_warned: set[str] = set()


def _folder_key(folder: Path) -> tuple[str, int] | None:
    try:
        return str(folder), os.stat(folder).st_mtime_ns
    except OSError:
        return None


def refuse_foreign(folder: Path, shown: str | Path | None = None, signature: Callable[[Path], bool] | None = None) -> None:
    """Raise unless every file under ``folder`` is ldct-monai output (see :func:`foreign_files`).

    Raises:
        InputError: naming how many files would have been deleted and the first three.
    """
    foreign, n = foreign_files(folder, signature)
    if n:
        examples = ", ".join(str(p.relative_to(folder)) for p in foreign[:3]) + (", ..." if n > 3 else "")
        raise InputError(
            f"{shown or folder}: --overwrite replaces only ldct-monai output, and this folder holds {n} file(s) "
            f"ldct-monai did not write ({examples}); delete them yourself or pick another OUT_DIR."
        )


# --------------------------------------------------------------------------------------------------
# Temporary folders of killed runs


def _is_temp_name(name: str) -> bool:
    return name.startswith(".") and (".tmp-" in name or ".old-" in name)


def _is_our_temp(name: str, prefix: str) -> bool:
    """``name`` is a temporary folder ``PREFIX.tmp-*`` / ``PREFIX.old-*`` (prefix ends with the name's dot)."""
    return name.startswith(prefix + "tmp-") or name.startswith(prefix + "old-")


def _owner_alive(folder: Path) -> bool | None:
    """True/False when ``folder``'s owner file names a process of this host; None when unknown."""
    try:
        pid_s, host = (folder / OWNER_FILE).read_text().strip().split("@", 1)
        pid = int(pid_s)
    except (OSError, ValueError):
        return None
    if host != socket.gethostname():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_temps(target: Path) -> list[Path]:
    """Remove temporary folders of ``target`` left by killed runs; warn about those that may be alive.

    Looks for ``.NAME.tmp-*`` and ``.NAME.old-*`` beside ``target`` and ``.ldct-monai.tmp-*`` inside it.
    A folder whose owner process (``OWNER_FILE``) is gone is removed, except an ``.old-`` folder holding
    the previous output while ``target`` is missing (a run killed between its two renames): that one is
    mentioned, never deleted. Returns the folders removed.
    """
    candidates: list[Path] = []
    for where, prefix in ((target.parent, f".{target.name}."), (target, INPLACE_PREFIX)):
        with contextlib.suppress(OSError):
            candidates += [p for p in where.iterdir() if _is_our_temp(p.name, prefix) and p.is_dir()]
    removed = []
    for p in sorted(candidates):
        alive = _owner_alive(p)
        if str(p) in _warned:
            continue
        if ".old-" in p.name and (p / "x").exists() and not target.exists():
            _warned.add(str(p))
            log.warning("%s holds the previous output of %s (a run was killed while replacing it); move %s back "
                        "or delete it.", p, target, p / "x")
        elif alive is False:
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
            log.info("Removed %s, the temporary folder of a killed run.", p)
        else:
            _warned.add(str(p))
            log.warning("%s: temporary folder of another run of this output (%s); delete it if no such run is going on.",
                        p, "still running" if alive else "owner unknown")
    return removed


def _claim(folder: Path) -> None:
    (folder / OWNER_FILE).write_text(f"{os.getpid()}@{socket.gethostname()}\n")


# --------------------------------------------------------------------------------------------------
# Writing


def disk_full(err: BaseException) -> OSError | None:
    """The OSError saying the disk (or quota) is full somewhere in ``err``'s chain, else None."""
    seen = 0
    e: BaseException | None = err
    while e is not None and seen < 10:
        if isinstance(e, OSError) and e.errno in DISK_FULL:
            return e
        e = e.__cause__ or e.__context__
        seen += 1
    return None


def _disk_full_error(where: Path, err: OSError) -> InputError:
    probe = where
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free / 2**20
        room = f"{free:.0f} MiB free"
    except OSError:
        room = "free space unknown"
    return InputError(f"{where}: no space left on the device while writing the output ({err.strerror}; {room}); "
                      "nothing was written.")


@contextlib.contextmanager
def atomic_output_dir(out_dir: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory that becomes ``out_dir`` when the block succeeds.

    The temporary directory is a hidden sibling of the real target (symbolic links followed; same
    filesystem, so the final rename is atomic). On error it is removed and ``out_dir`` is untouched; a
    full disk becomes an :class:`InputError`. With ``overwrite``, an existing ``out_dir`` (which must be
    ldct-monai output) is moved aside, replaced, then deleted. See the module docstring for the rules.

    Raises:
        InputError, OutputExistsError: see :func:`check_output_dir`; a full disk; the final rename failed.
    """
    target = check_output_dir(Path(out_dir), overwrite)
    in_place = _in_place(target)
    home = target if in_place else target.parent
    prefix = f"{INPLACE_PREFIX}tmp-" if in_place else f".{target.name}.tmp-"
    try:
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=home))
    except OSError as err:
        if err.errno in DISK_FULL:
            raise _disk_full_error(home, err) from err
        raise InputError(f"{home}: cannot create a temporary output folder ({err.strerror}).") from err
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700: outputs are for sharing (reports, PACS exports)
    _claim(tmp)
    try:
        yield tmp
        (tmp / OWNER_FILE).unlink(missing_ok=True)
        _mark(tmp)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        full = disk_full(err) if isinstance(err, Exception) else None
        if full is not None:
            raise _disk_full_error(target, full) from err
        raise
    try:
        if in_place:
            _move_in(tmp, target)
        else:
            _replace(tmp, target)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if err.errno in DISK_FULL:
            raise _disk_full_error(target, err) from err
        raise InputError(f"{target}: cannot move the finished output into place ({err.strerror}); nothing was written.") from err


def _replace(tmp: Path, target: Path) -> None:
    """Rename ``tmp`` to ``target``; an existing ``target`` is moved aside first and put back on failure."""
    old = None
    if os.path.lexists(target):
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        _claim(old)
        os.replace(target, old / "x")
    try:
        os.replace(tmp, target)
    except OSError:
        if old is not None and not os.path.lexists(target):
            os.replace(old / "x", target)
            shutil.rmtree(old, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _move_in(tmp: Path, target: Path) -> None:
    """In-place mode: move the old entries of ``target`` aside, then ``tmp``'s entries into ``target``."""
    old = Path(tempfile.mkdtemp(prefix=f"{INPLACE_PREFIX}old-", dir=target))
    _claim(old)
    for p in target.iterdir():
        if p not in (tmp, old) and not _is_our_temp(p.name, INPLACE_PREFIX):
            os.replace(p, old / p.name)
    for p in tmp.iterdir():
        os.replace(p, target / p.name)
    tmp.rmdir()
    shutil.rmtree(old, ignore_errors=True)
    _mark(target)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same directory, fsync, then rename.

    Raises:
        InputError: the disk (or quota) is full; the temporary file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(err, OSError) and err.errno in DISK_FULL:
            raise InputError(f"{path}: no space left on the device ({err.strerror}); the file was not written.") from err
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Text version of :func:`atomic_write_bytes` (UTF-8)."""
    atomic_write_bytes(path, text.encode("utf-8"))


class TreeListing(NamedTuple):
    """What :func:`list_tree` found: files and the symbolic links to folders it met (all relative to the root)."""

    files: list[str]  # regular files (and links to files), sorted, '/'-separated
    links_followed: list[str]  # links to folders that were searched
    links_skipped: list[str]  # links to folders already searched (loops, or a second way into one folder)


def list_tree(
    root: Path, exclude: Sequence[Path] = (), on_progress: Callable[[int], None] | None = None
) -> TreeListing:
    """Every regular file under ``root``, following symbolic links to folders, each real folder once.

    The real tree is listed first, then the folders that links lead to, so a file reachable both ways is
    listed under its real path; a link into a folder already searched (a loop such as ``series/up -> ..``)
    is not followed but reported in ``links_skipped``. Folders in ``exclude`` (e.g. a manifest written
    inside the data root) are not entered. ``on_progress`` gets the number of files found so far after
    each folder. Unreadable folders are passed over (their files could not be read either).
    """
    root_abs = os.path.abspath(root)
    excluded = set()
    for p in exclude:
        with contextlib.suppress(OSError):
            st = os.stat(p)
            excluded.add((st.st_dev, st.st_ino))
    visited: set[tuple[int, int]] = set()
    files: list[str] = []
    followed: list[str] = []
    skipped: list[str] = []
    links: list[tuple[str, str]] = []  # (relative path, path) of links to folders, followed after the real tree

    def walk(start: str, start_rel: str) -> None:
        stack = [(start, start_rel)]
        while stack:
            d, rel = stack.pop()
            try:
                st = os.stat(d)
                entries = sorted(os.scandir(d), key=lambda e: e.name)
            except OSError:
                continue
            key = (st.st_dev, st.st_ino)
            if key in visited or key in excluded:
                continue
            visited.add(key)
            subdirs = []
            for e in entries:
                erel = f"{rel}/{e.name}" if rel else e.name
                try:
                    if e.is_symlink():
                        if e.is_dir():
                            links.append((erel, e.path))
                        elif e.is_file():
                            files.append(erel)
                    elif e.is_dir(follow_symlinks=False):
                        subdirs.append((e.path, erel))
                    elif e.is_file(follow_symlinks=False):
                        files.append(erel)
                except OSError:
                    continue
            stack.extend(reversed(subdirs))
            if on_progress is not None:
                on_progress(len(files))

    walk(root_abs, "")
    while links:
        rel, path = links.pop(0)
        try:
            st = os.stat(path)
        except OSError:
            continue
        key = (st.st_dev, st.st_ino)
        if key in excluded:
            continue
        if key in visited:
            skipped.append(rel)
            continue
        followed.append(rel)
        walk(path, rel)
    files.sort()
    return TreeListing(files, followed, skipped)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()

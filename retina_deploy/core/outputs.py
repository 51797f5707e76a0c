"""What a command may write (torch-free): the one rule every writing verb applies before any work.

A command resolves all its outputs first and checks each here, before it loads a model, reads a
dataset or deletes anything:

- an output is never one of the command's inputs, never an existing file inside an input folder,
  never a folder holding an input, never under a file; its nearest existing folder is writable;
- an existing output file is replaced only when the command recognises it as its own (``ours``);
- a non-empty output folder is reused or replaced only when it carries the command's marker
  (``mark_folder``, a ``.retina-deploy-<command>`` file written first into every folder the command
  creates). ``--overwrite`` replaces what the same command wrote, never a folder it did not mark.

Every refusal is a ConfigError naming the flag and the path.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from retina_deploy.core.errors import ConfigError
from retina_deploy.core.fileio import write_json_atomic

PathLike = str | os.PathLike
Inputs = Sequence[PathLike | None]


def _is_within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _is_checkpoint_dir(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


def _check_writable(out: Path, flag: str, *, inside: bool = False) -> None:
    """The nearest existing ancestor of ``out`` (of a file inside it with ``inside``) is a folder this
    process may create files in."""
    parent = out.absolute() if inside else out.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"{flag} {out} is under {parent}, which is a file")
    try:  # a real file: os.access says yes to root on a read-only or virtual file system
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as e:
        raise ConfigError(f"{flag} {out}: cannot write in {parent} ({e.strerror or type(e).__name__})") from e


def check_output_file(
    out: PathLike,
    *,
    inputs: Inputs = (),
    flag: str = "OUT",
    ours: Callable[[Path], bool] | None = None,
    suffixes: Iterable[str] | None = None,
) -> Path:
    """Refuse an output file that is one of ``inputs``, an existing file in an input folder, a folder,
    a checkpoint's config.json / model.safetensors, or under a file or an unwritable folder.

    ours: when given, an existing ``out`` is replaced only if ``ours(out)`` (the command's own earlier
        output); when None the command may replace any file that is not an input.
    suffixes: the lower-case suffixes (".png", ...) the writer can produce; others are refused.
    Raises ConfigError naming ``flag`` and the path. Returns ``out`` as a Path.
    """
    out = Path(out)
    target = out.resolve()
    for given in inputs:
        if given is None:
            continue
        source = Path(given).resolve()
        if target == source or (source.is_dir() and _is_within(target, source) and target.exists()):
            raise ConfigError(f"{flag} {out} would overwrite the input {given}; choose another path")
    if out.is_dir():
        raise ConfigError(f"{flag} {out} is a folder; give a file name")
    if target.name in ("config.json", "model.safetensors") and _is_checkpoint_dir(target.parent):
        raise ConfigError(f"{flag} {out} is a file of the checkpoint {out.parent}; choose another path")
    if suffixes is not None:
        allowed = sorted(suffixes)
        if out.suffix.lower() not in allowed:
            kind = out.suffix or "suffix-less"
            raise ConfigError(f"{flag} {out}: cannot write a {kind} file; use one of {', '.join(allowed)}")
    if ours is not None and (out.exists() or out.is_symlink()) and not (out.is_file() and ours(out)):
        raise ConfigError(f"{flag} {out} exists and is not an earlier output of this command; choose another path")
    _check_writable(out, flag)
    return out


def check_distinct(outputs: Sequence[tuple[str, PathLike | None]]) -> None:
    """Refuse two outputs (flag, path) naming the same file."""
    seen: dict[Path, str] = {}
    for flag, path in outputs:
        if path is None:
            continue
        target = Path(path).resolve()
        if target in seen:
            raise ConfigError(f"{seen[target]} and {flag} name the same file {path}")
        seen[target] = flag


# ---------------------------------------------------------------------------------------------- folders


def marker_path(folder: PathLike, command: str) -> Path:
    return Path(folder) / f".retina-deploy-{command}"


def is_marked(folder: PathLike, command: str) -> bool:
    """Whether ``folder`` carries ``command``'s marker (was created by that command)."""
    return marker_path(folder, command).is_file()


def marked_files(folder: PathLike, command: str) -> set[str]:
    """The names (relative to ``folder``) that ``command``'s marker lists as written by it; empty if none."""
    try:
        listed = json.loads(marker_path(folder, command).read_text(encoding="utf-8")).get("files", [])
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        return set()
    return {name for name in listed if isinstance(name, str)} if isinstance(listed, list) else set()


def mark_folder(folder: PathLike, command: str, files: Iterable[str] = ()) -> None:
    """Create ``folder`` if needed and write ``command``'s marker into it, listing ``files`` it wrote there."""
    note = f"written by `retina-deploy {command}`, which may replace this folder or the files listed"
    write_json_atomic(marker_path(folder, command), {"note": note, "files": sorted(set(files))})


def check_output_dir(
    out: PathLike,
    *,
    inputs: Inputs = (),
    flag: str = "--out",
    command: str | None = None,
    overwrite: bool = False,
    reuse: bool = False,
    foreign_ok: bool = False,
) -> Path:
    """Refuse an output folder that is a file, holds (or is) an input, is under a file or an unwritable
    folder, or is non-empty and not allowed below.

    A non-empty folder carrying ``command``'s marker is allowed with ``reuse`` (the command adds to or
    resumes its earlier folder) or ``overwrite`` (it replaces it); one without the marker only with
    ``foreign_ok`` (the command writes files into it and removes nothing). Called before anything is
    written; raises ConfigError naming ``flag``. Returns ``out`` as a Path.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{flag} {out} exists and is not a folder")
    target = out.resolve()
    for given in inputs:
        if given is not None and _is_within(Path(given).resolve(), target):
            raise ConfigError(f"{flag} {out} holds the input {given}; choose another folder")
    _check_writable(out, flag, inside=True)
    if not out.is_dir() or not any(out.iterdir()):
        return out
    if command is not None and is_marked(out, command):
        if reuse or overwrite:
            return out
        raise ConfigError(f"{flag} {out} holds an earlier `{command}` output; pass --overwrite to replace it")
    if foreign_ok:
        return out
    if command is None:
        raise ConfigError(f"{flag} {out} is not empty; choose another folder (or --overwrite where offered)")
    raise ConfigError(f"{flag} {out} is not empty and was not written by `{command}`; choose another folder")


def check_replaceable(folder: Path, names: Iterable[str], command: str, flag: str = "--out") -> None:
    """Refuse when a file ``folder/name`` exists that ``command``'s marker does not list as its own."""
    ours = marked_files(folder, command)
    for name in names:
        path = folder / name
        if (path.exists() or path.is_symlink()) and name not in ours:
            raise ConfigError(
                f"{flag} {folder}: {path} exists and was not written by `{command}`; move it or choose another folder"
            )


def remove_marked_dir(folder: Path, command: str) -> None:
    """Delete ``folder``, which must carry ``command``'s marker (checked again: nothing else is deleted)."""
    if not is_marked(folder, command):
        raise ConfigError(f"{folder} was not written by `{command}`; it is not removed")
    shutil.rmtree(folder)

"""Atomic file writes (torch-free): a crash never leaves a half-written artifact under its final name."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_TMP_SUFFIX = ".tmp"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the destination folder; rename it onto ``path`` only on success.

    The temporary file lives next to the target so the final ``os.replace`` is atomic (same
    filesystem). It is created with the mode an ordinary ``open`` would give (0666 less the umask),
    so a replaced file is as readable as any other output. On any exception the temporary file is
    removed and the target is untouched; an OSError (a full disk, say) is raised again naming
    ``path``, never the temporary name. Temporary files of ``path`` left by a killed process are
    removed first (their name carries the writer's pid).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path)
        tmp_path = _create_temporary(path)
    except OSError as e:
        raise _naming(e, path) from e
    try:
        mode = tmp_path.stat().st_mode & 0o777  # 0666 less the umask: what the writer below may not keep
        yield tmp_path
        os.chmod(tmp_path, mode)
        os.replace(tmp_path, path)
    except OSError as e:
        raise _naming(e, path) from e
    finally:
        with contextlib.suppress(OSError):
            tmp_path.unlink()


def _create_temporary(path: Path) -> Path:
    while True:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{_TMP_SUFFIX}")
        try:
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            return tmp
        except FileExistsError:
            continue


def temporary_sibling_dir(path: str | os.PathLike) -> Path:
    """Create and return an empty folder ``.<name>.<pid>.<hex>.tmp`` next to ``path`` (to be renamed onto it)."""
    path = Path(path)
    while True:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{_TMP_SUFFIX}")
        try:
            tmp.mkdir()
            return tmp
        except FileExistsError:
            continue


def remove_stale_temporaries(path: str | os.PathLike) -> None:
    """Delete ``.<name>.<pid>.<hex>.tmp`` siblings of ``path`` (files or folders) whose writer no longer exists."""
    path = Path(path)
    prefix = f".{path.name}."
    try:
        siblings = list(os.scandir(path.parent))
    except OSError:
        return
    for entry in siblings:
        name = entry.name
        if not (name.startswith(prefix) and name.endswith(_TMP_SUFFIX)):
            continue
        pid, _, rest = name[len(prefix) : -len(_TMP_SUFFIX)].partition(".")
        if not (pid.isdigit() and len(rest) == 8) or _process_alive(int(pid)):
            continue
        with contextlib.suppress(OSError):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists but belongs to another user
        return True
    return True


def _naming(e: OSError, path: Path) -> OSError:
    """The same kind of OSError (ENOSPC, EACCES, ...) naming the user's ``path``."""
    if e.errno is None:
        return e
    return OSError(e.errno, e.strerror or os.strerror(e.errno), str(path))


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def read_format_json(path: Path, fmt: str, version: int, what: str, error: type[Exception]) -> dict[str, Any]:
    """The JSON object in ``path`` whose "format" is ``fmt`` and "format_version" ``version``; ``error``
    (naming the file and ``what`` it should be) for invalid JSON, another format or another version."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise error(f"{path}: not valid JSON ({e})") from e
    return check_format(raw, path, fmt, version, what, error)


def check_format(obj: Any, path: Path, fmt: str, version: int, what: str, error: type[Exception]) -> dict[str, Any]:
    """``obj`` when it is a dict whose "format" is ``fmt`` and "format_version" ``version``; ``error`` otherwise."""
    if not isinstance(obj, dict) or obj.get("format") != fmt:
        raise error(f"{path}: not {what} (format is not {fmt!r})")
    if obj.get("format_version") != version:
        raise error(f"{path}: format_version {obj.get('format_version')!r} is not {version}")
    return obj


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def replace_dir(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Rename the folder ``src`` onto ``dst``; a non-empty ``dst`` is moved aside first, then deleted.

    ``dst`` is never half-replaced: it is the old folder until the last rename, then the new one.
    """
    src, dst = Path(src), Path(dst)
    if dst.is_dir() and any(dst.iterdir()):
        trash = temporary_sibling_dir(dst)
        os.replace(dst, trash / dst.name)
        os.replace(src, dst)
        shutil.rmtree(trash)
    else:
        os.replace(src, dst)  # atomic; also replaces an empty folder

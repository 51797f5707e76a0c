"""Helpers of the bad-input suite: folder fingerprints, in-process CLI calls, the one-line error check."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from pathlib import Path

from retina_deploy.cli.main import main

SMALL = 4 << 20  # files up to this size are hashed; larger ones are compared by inode, size and mtime


def fingerprint(root: Path) -> dict[str, tuple]:
    """{relative path: (inode, size, mtime_ns, sha256 or None)} of every file under ``root``.

    A file replaced by rename gets a new inode; one rewritten in place a new mtime (and hash).
    """
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = Path(dirpath) / name
            st = path.stat()
            digest = hashlib.sha256(path.read_bytes()).hexdigest() if st.st_size <= SMALL else None
            out[str(path.relative_to(root))] = (st.st_ino, st.st_size, st.st_mtime_ns, digest)
    return out


def changed_files(before: dict[str, tuple], after: dict[str, tuple]) -> list[str]:
    """Files of ``before`` that are gone or differ in ``after`` (new files are allowed)."""
    return sorted(k for k, v in before.items() if after.get(k) != v)


def temporaries(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.tmp"))


def run_cli(capsys, argv: list[str]) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of ``retina-deploy ARGV`` run in this process; an argument-parser
    error exits (SystemExit) and its status is returned like any other."""
    capsys.readouterr()
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:
        rc = e.code
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def assert_one_line_error(rc: int, err: str, names: tuple[str, ...] = (), status: int = 1) -> str:
    """Exit ``status``, exactly one line on stderr, no traceback, naming each of ``names``; returns the line."""
    lines = err.strip().splitlines()
    assert rc == status, f"exit status {rc}, stderr: {err!r}"
    assert "Traceback" not in err, err
    assert len(lines) == 1, f"{len(lines)} lines on stderr: {err!r}"
    for name in names:
        assert name in lines[0], f"{name!r} not in {lines[0]!r}"
    return lines[0]


def check_refused_case(workspace: Path, capsys, case: tuple) -> None:
    """Run one case (id, setup, argv, names, absent): one line naming ``names``, exit 1, no file changed,
    no temporary left, none of ``absent`` created."""
    _, setup, argv, names, absent = case
    if setup is not None:
        setup(workspace)
    before = fingerprint(workspace)
    rc, _, err = run_cli(capsys, argv)
    assert_one_line_error(rc, err, names)
    assert changed_files(before, fingerprint(workspace)) == []
    assert temporaries(workspace) == []
    for path in absent:
        assert not (workspace / path).exists(), f"{path} was created"


def replace_file(path: Path, data: bytes | str) -> None:
    """Give ``path`` new contents without writing through a hard link to the session's file."""
    path = Path(path)
    path.unlink(missing_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)


def edit_json(path: Path, edit) -> None:
    """Apply ``edit(dict)`` to a JSON file (replacing it, never writing through a hard link)."""
    obj = json.loads(Path(path).read_text())
    edit(obj)
    replace_file(path, json.dumps(obj))


# -- shared by the bad-input suites ----------------------------------------------------------------

# a tiny train command over the workspace's data/ (the CPU recipe's architecture, one iteration)
DATA = ["--images", "data/images", "--annotations", "data/annotations.json"]
TRAIN = ["train", *DATA, "--backbone", "resnet18", "--backbone-norm", "bn", "--size", "128", "128"]
TRAIN += ["--fpn-channels", "64", "--head-norm", "groupnorm", "--iters", "1", "--batch-size", "4", "--workers", "0"]


class _Evil:
    """A pickle that runs a command when loaded: loading it must be refused, never executed."""

    def __reduce__(self):
        return (os.system, ("touch pwned",))


def evil_pickle(ws: Path) -> None:
    replace_file(ws / "evil.pth", pickle.dumps({"model": _Evil()}))

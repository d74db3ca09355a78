"""Atomic file writes: a reader (a rerun after kill -9, another worker) sees the old file or the new one,
never half of one.

Write to a temporary file of a unique name in the same folder, then ``os.replace`` it onto the target
(atomic on POSIX within a file system). The name is unique per writer so that two processes writing the
same file (search workers all write results.csv at their end) never write into one temporary file.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def os_reason(e: BaseException) -> str:
    """Why reading a file failed, for a message that names the file already: ``permission denied (check its
    permissions)``, not ``[Errno 13] Permission denied: '/a/b'``; other errors (a decoder's) as they say it."""
    if isinstance(e, OSError) and e.strerror:
        return e.strerror.lower() + (" (check its permissions)" if isinstance(e, PermissionError) else "")
    return str(e)


def why_not_a_file(path: str | Path) -> str | None:
    """Why ``path`` cannot be read as a file, for a message that names it (None when it is one): a folder
    is not "missing", and a relative path that is missing says which folder it was read from."""
    path = Path(path)
    if path.is_file():
        return None
    if path.is_dir():
        return "is a folder, not a file"
    return "does not exist" + ("" if path.expanduser().is_absolute() else f" (a relative path, read from {Path.cwd()})")


@contextmanager
def naming_the_file(path: str | Path) -> Iterator[None]:
    """An OSError raised while writing ``path`` that names no file (a full disk: ``[Errno 28] No space left on
    device`` from a write or an fsync) is raised again naming ``path``, so the user learns which file."""
    try:
        yield
    except OSError as e:
        if e.filename is not None or e.errno is None:
            raise
        raise OSError(e.errno, e.strerror, str(path)) from e


@contextmanager
def atomic_path(path: str | Path, fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write ``path``'s new content to; it replaces ``path`` when the block ends
    without an error (and is removed otherwise). ``fsync``: also survive a power cut, not only a kill."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        with naming_the_file(path):
            yield Path(tmp)
            if fsync:
                with open(tmp, "rb") as f:
                    os.fsync(f.fileno())
            os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual permissions
            os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def remove_leftover_temporaries(folder: str | Path) -> int:
    """Delete the checkpoint temporaries ``atomic_path`` left in ``folder`` when a kill -9 came mid-write (a partial
    checkpoint each, kept forever); call it only while holding the folder's writer lock. Returns how many."""
    n = 0
    for tmp in Path(folder).glob(".*.pt.*.tmp"):  # atomic_path's names for checkpoints: .<name>.<random>.tmp
        try:
            if tmp.is_file():
                tmp.unlink()
                n += 1
        except OSError:  # gone meanwhile, or not ours to delete: left as it was
            pass
    return n


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once, at import: os.umask can only be read by setting it


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | Path, obj, indent: int | None = 2, **kwargs) -> None:
    write_text_atomic(path, json.dumps(obj, indent=indent, **kwargs))


def file_stamp(path: str | Path | None) -> list | None:
    """``[path, size, modification time]`` of a file (None when there is none): what a kept result computed from
    it is keyed on, so that a file rewritten since is computed again."""
    if path is None or not Path(path).is_file():
        return None
    st = Path(path).stat()
    return [str(path), st.st_size, st.st_mtime_ns]


def nonfinite_to_null(obj):
    """``obj`` with every NaN / infinite float (an undefined statistic) as None: JSON's null. Python's json
    writes them as bare ``NaN`` / ``Infinity``, which strict parsers (JavaScript's, Go's, jq's --strict) refuse."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: nonfinite_to_null(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [nonfinite_to_null(v) for v in obj]
    return obj


def append_jsonl(path: str | Path, record: dict) -> None:
    """Append one JSON line. A line cut by a kill is ended first, so the new record stays whole on its own
    line (readers skip the cut one)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with naming_the_file(path), open(path, "a+b") as f:
        if f.tell() > 0:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                f.write(b"\n")
        f.write((json.dumps(record) + "\n").encode())


def trim_jsonl(path: str | Path, key: str, last: float) -> None:
    """Keep the records of a jsonl log whose ``key`` is at most ``last``: a run resumed from its checkpoint
    drops what it logged after that checkpoint before a kill (it logs those steps again). A line cut by the
    kill, or without ``key``, goes too."""
    path = Path(path)
    if not path.is_file():
        return

    def value(line: str) -> float:
        try:
            return float(json.loads(line)[key])
        except (ValueError, KeyError, TypeError):
            return float("inf")
    lines = path.read_text().splitlines()
    keep = [line for line in lines if value(line) <= last]
    if len(keep) != len(lines):
        write_text_atomic(path, "".join(line + "\n" for line in keep))


def relative_hint(path: str | Path) -> str:
    """For a missing path: where a relative one was looked for (they are taken from the current folder, not
    from the config's), else ''."""
    return "" if Path(path).is_absolute() else f" (a relative path, taken from the current folder {Path.cwd()})"

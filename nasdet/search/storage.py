"""Where a search study is stored: an Optuna journal file (the default; several local processes share it
safely) or a database URL (``postgresql://...``, for workers on several machines; SQLite is not safe with
several workers: Optuna's FAQ). A bad URL, a missing driver, an unreachable server and a damaged journal are
each one line naming the storage (a database password is never shown); a failed write names its file."""
from __future__ import annotations

import json
import os
import re
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock

from ..errors import ConfigError, DataError, EnvironmentProblem
from ..files import naming_the_file
from ..workdir import STUDY_FILE


def open_storage(storage: str | Path | None, search_dir: str | Path, heartbeat: int = 60):
    """``None``: a journal file ``search_dir/study.journal``; a URL (``postgresql://...``): that database,
    with a trial heartbeat every ``heartbeat`` seconds; any other string: a journal file at that path.
    (SQLite is not safe with several workers: Optuna's FAQ.)"""
    if storage is not None and "://" in str(storage):
        from optuna.storages import RDBStorage

        from sqlalchemy.exc import SQLAlchemyError

        url = check_storage_url(str(storage))
        with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna; study.optimize relies on them
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            from .study import retry_trial  # study imports this module

            try:
                return RDBStorage(url, heartbeat_interval=heartbeat, grace_period=2 * heartbeat,
                                  heartbeat_stale_trial_callback=retry_trial)
            except SQLAlchemyError as e:  # the server went away since the check
                raise EnvironmentProblem(f"storage {shown_storage(storage)}: {_database_failure(e, url)}") from None
    path = Path(storage) if storage is not None else Path(search_dir) / STUDY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    from optuna.storages import JournalStorage

    check_journal(path)
    return JournalStorage(_JournalFile(str(path), lock_obj=JournalLock(str(path))))


class JournalLock(JournalFileSymlinkLock):
    """Optuna's journal lock (a symlink ``<journal>.lock``, made for a write and removed after it), taken
    while holding an ``fcntl.flock`` on ``<journal>.flock``.

    A writer killed mid-write leaves the symlink behind, and Optuna's own lock then makes the next writer wait
    30 s before breaking it, whoever holds it (a resumed search stood still that long after a kill). The kernel
    drops a dead process's flock, so a symlink found while holding the flock was left by a writer that died
    (nasdet's writers all take the flock first) and is removed once it is ``FOREIGN_GRACE_S`` old: a foreign
    Optuna process writing the same journal takes no flock, and holds the symlink only for one append.
    Where the file system has no flock (some NFS mounts), it is Optuna's lock alone."""

    FOREIGN_GRACE_S = 2.0

    def __init__(self, filepath: str) -> None:
        super().__init__(filepath)
        self._flock_path = filepath + ".flock"
        self._flock = None

    def acquire(self) -> bool:
        import fcntl

        f = open(self._flock_path, "a")
        try:
            fcntl.flock(f, fcntl.LOCK_EX)
        except OSError:  # no flock here (ENOLCK, EOPNOTSUPP): Optuna's symlink alone
            f.close()
            return super().acquire()
        try:
            left = self._remove_if_left_by_a_dead_writer()
            super().acquire()
            if left:  # the dead writer may have been mid-append: the next record must not be glued onto its part
                cut_incomplete_last_record(Path(self._lock_target_file))
        except BaseException:
            f.close()
            raise
        self._flock = f
        return True

    def _remove_if_left_by_a_dead_writer(self) -> bool:
        refuse_other_lock(Path(self._lock_target_file))
        while True:
            try:
                made = os.lstat(self._lock_file).st_mtime
            except FileNotFoundError:
                return False
            young = self.FOREIGN_GRACE_S - (time.time() - made)
            if young <= 0:
                break
            time.sleep(min(young, self.FOREIGN_GRACE_S))  # maybe a foreign writer's, mid-append
            try:
                if os.lstat(self._lock_file).st_mtime == made:
                    break  # the same symlink, older than any append: left behind
            except FileNotFoundError:
                return False
        try:
            os.unlink(self._lock_file)
        except FileNotFoundError:
            return False
        warnings.warn(f"{self._lock_file}: removed the journal lock a killed process left behind (it no longer "
                      "held the lock's flock)", stacklevel=2)
        return True

    def release(self) -> None:
        try:
            super().release()
        finally:
            if self._flock is not None:
                self._flock.close()  # closing the file releases the flock
                self._flock = None


class _JournalFile(JournalFileBackend):
    """Optuna's journal file, whose write errors name it (a full disk's ENOSPC names no file)."""

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        with naming_the_file(self._file_path):
            super().append_logs(logs)


def check_storage_url(url: str) -> str:
    """The database URL to open (``postgresql://`` with the installed driver); a URL whose scheme SQLAlchemy
    does not know, whose driver is not installed, or whose database cannot be reached (a refused port, an
    unknown host, an SQLite file in a missing folder) is one clear error before Optuna (the password is not
    repeated)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    given, url = url, _with_installed_driver(url)
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError(f"storage {url!r} is neither a database URL (postgresql://user:password@host/db) nor a "
                          "journal file path") from None
    shown = shown_storage(given)  # as the user wrote it, without the password
    try:
        dialect = parsed.get_dialect()
    except ArgumentError:  # NoSuchModuleError: an unknown scheme
        raise ConfigError(f"storage {shown}: unknown database scheme {parsed.drivername!r}; use postgresql://, "
                          "mysql://, or a journal file path") from None
    try:
        dialect.import_dbapi()
    except ImportError as e:
        raise EnvironmentProblem(
            f"storage {shown}: the database driver, Python module {e.name or 'for ' + parsed.drivername!r}, is not "
            "installed (PostgreSQL: pip install 'psycopg[binary]', or psycopg2-binary with postgresql+psycopg2://)"
        ) from None
    _check_reachable(url, parsed, shown)
    return url


def sqlite_file(url: str) -> Path | None:
    """The file of an ``sqlite:///FILE`` storage URL (None for another database or an in-memory one)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        return None
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def _check_reachable(url: str, parsed, shown: str) -> None:
    from sqlalchemy import create_engine
    from sqlalchemy.exc import SQLAlchemyError

    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        folder = Path(parsed.database).parent
        if not folder.is_dir():
            raise ConfigError(f"storage {shown}: folder {folder.absolute()} of the SQLite file does not exist (create "
                              "it, or give another path)")
        if not Path(parsed.database).exists():  # connecting would create it, before the search knows it can run
            if not os.access(folder, os.W_OK | os.X_OK):
                raise EnvironmentProblem(f"storage {shown}: folder {folder.absolute()} of the SQLite file is not "
                                         "writable (check its permissions, or give another path)")
            return
    timeout = {"connect_timeout": 15} if parsed.get_backend_name() == "postgresql" \
        and "connect_timeout" not in parsed.query else {}
    engine = create_engine(url, connect_args=timeout)
    try:
        with engine.connect():
            pass
    except SQLAlchemyError as e:
        raise EnvironmentProblem(f"storage {shown}: {_database_failure(e, url)}") from None
    finally:
        engine.dispose()


def _database_failure(e: Exception, url: str) -> str:
    """``cannot connect to the database: <the driver's first line>``, with the URL's password masked."""
    from sqlalchemy.engine import make_url

    text = str(getattr(e, "orig", None) or e).strip()
    reason = text.splitlines()[0].strip() if text else type(e).__name__
    password = make_url(url).password
    if password:
        reason = reason.replace(str(password), "***")
    return f"cannot connect to the database: {reason}"


def shown_storage(storage: str | Path) -> str:
    """A storage as it may be printed: a database URL without its password."""
    if "://" not in str(storage):
        return str(storage)
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(str(storage)).render_as_string(hide_password=True)
    except ArgumentError:
        return "(an unparsable URL)"


def check_journal(path: Path) -> None:
    """Make a journal file Optuna reads right, or say which line is bad and what to do.

    A process killed in the middle of a write leaves an incomplete last line: Optuna skips it when
    reading but the next append would be glued onto it, losing that record and breaking the study.
    It is cut off here, under the journal's lock (writers hold it while appending, so a partial
    line seen under it is a dead write, never one in progress). A bad line with records after it
    (an edit, a disk fault) stops Optuna from reading the study: that is an error naming the line.
    """
    if not refuse_foreign_storage(path):
        return
    lock = JournalLock(str(path))
    lock.acquire()
    try:
        for number, line in enumerate(cut_incomplete_last_record(path).splitlines(), start=1):
            try:
                json.loads(line)
            except ValueError:
                raise DataError(
                    f"{path}, line {number}: not a study record ({line[:40].decode('utf-8', 'replace')!r}...): "
                    f"Optuna cannot read the study past it. Move the file aside to start the study afresh, or delete "
                    f"line {number} and the lines after it to keep the trials recorded before it") from None
    finally:
        lock.release()


# How every record of an Optuna journal starts (a JSON object whose first key is the op code).
JOURNAL_RECORD_START = re.compile(rb'\{\s*"op_code"\s*:')


def refuse_other_file(path: Path) -> None:
    """Refuse (ConfigError) a journal path naming a file that is not an Optuna journal (an annotations json, an
    SQLite database given without ``sqlite:///``): check_journal cuts a journal's last line and Optuna appends
    to it, so any other file would be damaged. Its first line tells: a journal's first record starts so."""
    with open(path, "rb") as f:
        head = f.read(64)
    if JOURNAL_RECORD_START.match(head) or b'{"op_code":'.startswith(head):  # (or a first record being written)
        return
    hint = ""
    if head.startswith(b"SQLite format 3"):
        hint = f" It is an SQLite database: give it as a URL, sqlite:///{path.absolute()}."
    raise ConfigError(f"search storage {path} is a file that is not an Optuna journal (it starts "
                      f"{head[:20].decode('utf-8', 'replace')!r}): nasdet appends to a journal and would damage "
                      f"it, so it is left as it is. Name a new file (or none: the search folder's "
                      f"{STUDY_FILE}).{hint}")


def refuse_foreign_storage(path: Path) -> bool:
    """Refuse (ConfigError) a journal path whose file, or ``.lock`` beside it, is someone else's (reads a few bytes,
    takes no lock, writes nothing: a launcher checks it before starting workers). True when a journal is there."""
    refuse_other_lock(path)
    if not path.is_file() or path.stat().st_size == 0:
        return False
    refuse_other_file(path)  # before the lock (a .flock beside it) and before any cut
    return True


def refuse_other_lock(path: Path) -> None:
    """Refuse (ConfigError) a ``<journal>.lock`` that is not Optuna's lock, a link (a ``poetry.lock`` beside a
    journal named ``poetry``): a lock left by a killed writer is removed, and that must never be someone's file.
    (The link's target is the journal as its writer named it, maybe relative to another folder: not compared.)"""
    lock = Path(str(path) + ".lock")
    if lock.is_symlink() or not lock.exists():
        return
    raise ConfigError(f"search storage {path}: {lock} exists and is not the journal's lock (Optuna's is a link "
                      f"to {path.name}); nasdet removes a lock a killed writer left, so it stops here. Name another "
                      "storage file, or move that file away")


def cut_incomplete_last_record(path: Path) -> bytes:
    """Cut off a last line without its newline (a write a killed process left unfinished) and say so;
    the caller holds the journal's lock. Returns the journal's complete records."""
    if not path.is_file():
        return b""
    data = path.read_bytes()
    complete = data.rfind(b"\n") + 1
    if complete < len(data):
        with open(path, "r+b") as f:
            f.truncate(complete)
        warnings.warn(f"{path}: removed an incomplete last record ({len(data) - complete} bytes, a write cut "
                      "off by a killed process); the records before it are kept", stacklevel=3)
    return data[:complete]


def _with_installed_driver(url: str) -> str:
    """``postgresql://`` names no driver, and SQLAlchemy 2.1 then wants psycopg 3; use psycopg2 (the
    ``psycopg2-binary`` wheel of the test extra) when only that one is installed."""
    import importlib.util

    if url.startswith("postgresql://") and importlib.util.find_spec("psycopg") is None \
            and importlib.util.find_spec("psycopg2") is not None:
        return "postgresql+psycopg2://" + url[len("postgresql://"):]
    return url

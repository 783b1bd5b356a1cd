"""Safe artifact I/O: atomic writers, owned output directories, a run-directory lock and the stage-done check.

Every file is written to a temp name in its folder and renamed into place; every output folder a command writes is
staged beside it and swapped in, and only replaces a folder that holds the same command's `OUTPUT_MARKER`, so a
mistyped `--out` can never delete a user's data. Content hashes, parquet metadata and the cache dir live here too.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

import polars as pl

from semid.errors import InputError
from semid.schema import META_KEY, OUTPUT_MARKER

MARKER_VERSION = 1
LOCK_FILE = ".lock"


def cache_dir(override: str | Path | None = None) -> Path:
    """Where fetched data and caches live: `override`, else $SEMID_CACHE, else the user's cache dir."""
    if override is not None:
        return Path(override).expanduser()
    env = os.environ.get("SEMID_CACHE")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("semid-ctr"))


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


# -- atomic files -------------------------------------------------------------------------------------------


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside `path`; when the block succeeds it is renamed onto `path`, else removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(text: str, path: str | Path) -> None:
    """Write `text` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def replaceable(path: str | Path, first_line: str) -> bool:
    """Whether a command that writes files starting with `first_line` may write `path`: nothing is there yet,
    or a file is that starts with it (an earlier output of the same command). A folder or any other file: no."""
    path = Path(path)
    if not path.exists():
        return True
    return path.is_file() and path.read_text(errors="replace").startswith(first_line)


def write_json(obj: Any, path: str | Path) -> None:
    """Write `obj` as indented, key-sorted JSON to `path` atomically."""
    write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n", path)


def write_parquet(df: pl.DataFrame, path: str | Path, meta: dict[str, Any] | None = None) -> None:
    """Write `df` to `path` atomically (temp name in the same directory, then rename), with `meta` as JSON."""
    with atomic_path(path) as tmp:
        df.write_parquet(tmp, metadata={META_KEY: json.dumps(meta or {}, sort_keys=True, default=str)})


def read_meta(path: str | Path) -> dict[str, Any]:
    """The JSON metadata document `write_parquet` stored in `path` ({} if there is none)."""
    raw = pl.read_parquet_metadata(path)
    return json.loads(raw[META_KEY]) if META_KEY in raw else {}


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def stage_done(marker: str | Path, fingerprint: str, *, key: str = "stage_hash") -> bool:
    """Whether a stage is up to date: its `marker` file (parquet metadata or JSON) records `fingerprint` under `key`.

    THE skip check of prepare, build and each fit. A missing marker means not done; an unreadable one (truncated,
    corrupt) is reported with a warning and also means not done, so the stage is simply redone.
    """
    marker = Path(marker)
    if not marker.is_file():
        return False
    try:
        meta = read_meta(marker) if marker.suffix == ".parquet" else json.loads(marker.read_text())
    except Exception as err:  # noqa: BLE001 -- any unreadable marker means "redo the stage", never a crash
        warn(f"{marker} is unreadable ({type(err).__name__}); redoing that stage")
        return False
    return isinstance(meta, dict) and meta.get(key) == fingerprint


# -- owned output directories -------------------------------------------------------------------------------


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def clean_stale_staging(final: str | Path) -> list[Path]:
    """Remove the staging / set-aside siblings of `final` (`.<name>.<pid>.*.staging`, `.<name>.old-<pid>`) that a
    killed run left behind (their pid is gone). Returns what was removed."""
    final = Path(final)
    if not final.parent.is_dir():
        return []
    pattern = re.compile(rf"^\.{re.escape(final.name)}\.(?:(\d+)\..*\.staging|[^.]+\.staging|old-(\d+))$")
    removed = []
    for sibling in final.parent.iterdir():
        match = pattern.match(sibling.name)
        if match is None or not sibling.is_dir() or sibling.is_symlink():
            continue
        pid = match.group(1) or match.group(2)
        if pid is not None and _pid_alive(int(pid)) and int(pid) != os.getpid():
            continue  # another live run is staging this folder right now
        shutil.rmtree(sibling, ignore_errors=True)
        removed.append(sibling)
    return removed


def read_marker(folder: str | Path) -> dict[str, Any] | None:
    """The OUTPUT_MARKER document of `folder`, None when there is none; InputError when it is unreadable."""
    marker = Path(folder) / OUTPUT_MARKER
    if not marker.is_file():
        return None
    try:
        doc = json.loads(marker.read_text())
    except (OSError, ValueError):
        doc = None
    if not isinstance(doc, dict):
        raise InputError(
            "the output marker is unreadable, so this folder cannot be proven to be an output of ours",
            file=marker,
            fix="pass a new or empty folder (nothing was changed)",
        )
    return doc


def check_output_dir(
    final: str | Path, command: str, *, option: str = "--out", legacy: Collection[str] = ()
) -> Path:
    """The resolved `final` if `command` may (re)write it, else InputError; nothing on disk is changed.

    Allowed: a path that does not exist yet, an empty folder, or a folder holding `command`'s OUTPUT_MARKER (or,
    for outputs written before the marker existed, only the file names in `legacy`). Refused: a regular file, the
    working directory or a folder containing it, the filesystem root, any other folder, a read-only parent.
    """
    given = Path(final).expanduser()
    path = given.resolve()
    fix = f"pass a new or empty folder as {option} (nothing was changed)"
    if path == Path(path.anchor) or path == Path.home().resolve():
        raise InputError(f"{option} {str(given)!r} would replace {path}", file=path, fix=fix)
    cwd = Path.cwd().resolve()
    if path == cwd or path in cwd.parents:
        raise InputError(
            f"{option} {str(given)!r} is the working directory (or contains it); an output folder is replaced "
            "as a whole",
            file=path,
            fix=fix,
        )
    if path.exists() or path.is_symlink():
        if not path.is_dir():
            raise InputError(f"{option} names a file, not a folder", file=path, fix=fix)
        marker = read_marker(path)
        if marker is not None:
            if marker.get("command") != command:
                raise InputError(
                    f"{option} holds the output of `{marker.get('command')}`, not of `{command}`",
                    file=path,
                    fix=fix,
                )
        else:
            entries = [entry.name for entry in path.iterdir()]
            if entries and not (legacy and set(entries) <= set(legacy)):
                raise InputError(
                    f"{option} is a folder that is not empty and was not written by `{command}` "
                    f"(it holds e.g. {sorted(entries)[:3]}); it would be replaced as a whole",
                    file=path,
                    fix=fix,
                )
    parent = path.parent
    existing = next(p for p in (parent, *parent.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(
            f"cannot write into {existing} (not a writable folder)",
            file=path,
            fix=f"choose {option} under a folder you can write to",
        )
    return path


@contextlib.contextmanager
def owned_output_dir(
    final: str | Path, command: str, *, option: str = "--out", legacy: Collection[str] = ()
) -> Iterator[Path]:
    """Yield a fresh staging folder beside `final`; on success it holds `command`'s OUTPUT_MARKER and replaces
    `final`, on error it is removed and `final` is untouched.

    `final` must pass `check_output_dir` (checked before and again just before the swap); stale staging folders
    of a killed earlier run are removed first. The old `final` is moved aside and deleted only once the new one
    is in place, so any failure leaves either the old folder or the new one.
    """
    path = check_output_dir(final, command, option=option, legacy=legacy)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        clean_stale_staging(path)
        tmp = Path(
            tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".staging", dir=path.parent)
        )
    except OSError as err:
        raise InputError(
            f"cannot create the output folder ({err.strerror})",
            file=path,
            fix=f"choose {option} under a folder you can write to",
        ) from None
    try:
        yield tmp
        write_json({"command": command, "version": MARKER_VERSION}, tmp / OUTPUT_MARKER)
        check_output_dir(path, command, option=option, legacy=legacy)  # nobody put anything there meanwhile
        _swap(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _swap(tmp: Path, final: Path) -> None:
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    try:
        os.replace(tmp, final)
    except BaseException:
        if old is not None:
            os.replace(old, final)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def staged_dir(final: str | Path, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a fresh temp directory beside `final`; on success it replaces `final`, on error it is removed.

    Prefer `owned_output_dir` for a folder a user names: this one replaces whatever `final` is.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final} exists; pass overwrite to replace it")
    clean_stale_staging(final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.{os.getpid()}.", suffix=".staging", dir=final.parent))
    try:
        yield tmp
        _swap(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# -- run-directory lock -------------------------------------------------------------------------------------


@contextlib.contextmanager
def dir_lock(folder: str | Path, *, what: str = "run") -> Iterator[Path]:
    """Hold `<folder>/.lock` (created with O_EXCL, holding our pid) for the block; released on exit or error.

    A second holder is refused with an InputError naming the holder's pid; a lock whose pid is gone (a killed
    run) is taken over.
    """
    lock = Path(folder) / LOCK_FILE
    lock.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                holder = int(lock.read_text().split()[0])
            except (OSError, ValueError, IndexError):
                holder = -1  # half-written or garbage: treat as stale
            if holder > 0 and _pid_alive(holder) and holder != os.getpid():
                raise InputError(
                    f"another {what} (pid {holder}) is using this folder",
                    file=lock,
                    fix=f"wait for pid {holder} to finish, or use another folder; if no such process runs, "
                    "delete the lock file",
                ) from None
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()
            continue
        with os.fdopen(fd, "w") as handle:
            handle.write(f"{os.getpid()}\n")
        break
    else:
        raise InputError(
            "could not take the lock", file=lock, fix="retry; if it persists delete the lock file"
        )
    try:
        yield lock
    finally:
        with contextlib.suppress(FileNotFoundError):
            if lock.read_text().split()[:1] == [str(os.getpid())]:
                lock.unlink()

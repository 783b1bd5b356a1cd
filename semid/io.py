"""Atomic artifact I/O: parquet with a JSON metadata document, staged directories, content hashes, cache dir."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl

from semid.schema import META_KEY


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


def write_parquet(df: pl.DataFrame, path: str | Path, meta: dict[str, Any] | None = None) -> None:
    """Write `df` to `path` atomically (temp name in the same directory, then rename), with `meta` as JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        metadata = {META_KEY: json.dumps(meta or {}, sort_keys=True, default=str)}
        df.write_parquet(tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def read_meta(path: str | Path) -> dict[str, Any]:
    """The JSON metadata document `write_parquet` stored in `path` ({} if there is none)."""
    raw = pl.read_parquet_metadata(path)
    return json.loads(raw[META_KEY]) if META_KEY in raw else {}


def write_json(obj: Any, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as handle:
        json.dump(obj, handle, indent=2, sort_keys=True, default=str)
        handle.write("\n")
    os.replace(tmp, path)


@contextlib.contextmanager
def staged_dir(final: str | Path, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a fresh temp directory beside `final`; on success it replaces `final`, on error it is removed.

    A previous `final` is moved aside first and only deleted once the new one is in place, so a failure at any
    point leaves either the old directory or the new one, never a half-written mix.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final} exists; pass overwrite to replace it")
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".staging", dir=final.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)

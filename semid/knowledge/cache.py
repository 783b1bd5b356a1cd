"""One SQLite file that remembers what an LLM said (text / JSON) and computed (vectors), keyed by everything that
changes the answer, committed per batch so a killed run resumes where it stopped.

Key = sha256(model fingerprint, task, prompt-template version, prompt, decoding params). Modes:
- read-write: hits are served, misses are computed and stored;
- read-only: nothing is computed or written; a miss is an InputError (for CI and for "re-run without a model");
- refresh: every item is recomputed and overwrites its entry.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np

from semid.errors import InputError
from semid.io import sha256_json

CacheMode = Literal["read-write", "read-only", "refresh"]
_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    key TEXT PRIMARY KEY,
    task TEXT NOT NULL,
    text TEXT,
    value TEXT,
    vector BLOB,
    dim INTEGER,
    valid INTEGER NOT NULL,
    created REAL NOT NULL
)
"""


class Entry(NamedTuple):
    """One cached answer: raw `text` (generation), `value` (the parsed JSON as text, structured generation),
    `vector` (float32, hidden states), `valid` (False when a structured answer did not parse against its schema)."""

    text: str | None = None
    value: str | None = None
    vector: np.ndarray | None = None
    valid: bool = True


def cache_key(
    *, fingerprint: str, task: str, template_version: str, prompt: str, params: dict[str, Any]
) -> str:
    """The one definition of what makes two LLM calls the same call."""
    return sha256_json(
        {
            "model": fingerprint,
            "task": task,
            "template": template_version,
            "prompt": prompt,
            "params": params,
        }
    )


class LLMCache:
    """A key -> Entry store in one SQLite file (WAL journal, one transaction per `put_many`)."""

    def __init__(self, path: str | Path, mode: CacheMode = "read-write") -> None:
        self.path = Path(path)
        self.mode: CacheMode = mode
        if mode == "read-only":
            if not self.path.is_file():
                raise InputError(
                    "the LLM cache does not exist and the cache mode is read-only",
                    file=self.path,
                    fix="run once with cache mode read-write to fill it, or point `cache` at the filled file",
                )
            self._db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path)
            # WAL + NORMAL: a committed batch survives a killed process; readers never block the writer.
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(_SCHEMA)
            self._db.commit()

    def get_many(self, keys: Sequence[str]) -> dict[str, Entry]:
        """The stored entries among `keys` (refresh mode: none, so everything is recomputed)."""
        if self.mode == "refresh" or not keys:
            return {}
        found: dict[str, Entry] = {}
        for start in range(0, len(keys), 500):  # SQLite caps the number of bound parameters
            chunk = list(keys[start : start + 500])
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(
                f"SELECT key, text, value, vector, dim, valid FROM entries WHERE key IN ({marks})", chunk
            )
            for key, text, value, blob, dim, valid in rows:
                vector = None if blob is None else np.frombuffer(blob, dtype=np.float32, count=dim).copy()
                found[key] = Entry(text=text, value=value, vector=vector, valid=bool(valid))
        return found

    def require(self, missing: Sequence[str], task: str) -> None:
        """In read-only mode a miss is an error, raised before any model is loaded."""
        if self.mode == "read-only" and missing:
            raise InputError(
                f"{len(missing)} {task!r} answers are not in the read-only LLM cache",
                file=self.path,
                fix="run once with cache mode read-write (this loads the model), or check that the model, "
                "prompt template version and decoding params match the run that filled the cache",
            )

    def put_many(self, task: str, items: Iterable[tuple[str, Entry]]) -> None:
        """Store one batch in one transaction, so a kill loses at most the batch in flight."""
        if self.mode == "read-only":
            raise InputError(
                "cannot write to a read-only LLM cache", file=self.path, fix="use cache mode read-write"
            )
        now = time.time()
        rows = [
            (
                key,
                task,
                e.text,
                e.value,
                None if e.vector is None else np.ascontiguousarray(e.vector, dtype=np.float32).tobytes(),
                None if e.vector is None else int(e.vector.shape[-1]),
                int(e.valid),
                now,
            )
            for key, e in items
        ]
        with self._db:
            self._db.executemany("INSERT OR REPLACE INTO entries VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM entries").fetchone()[0])

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> LLMCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

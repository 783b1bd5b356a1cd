"""Collaborative alignment: fine-tune the content encoder so that co-engaged items, and users and the item they
engage with next, are close (AKT-Rec aligns content with behaviour by supervised fine-tuning).

Objective: symmetric InfoNCE with in-batch negatives and temperature tau. For a batch of B pairs (a_i, p_i) with
aligned unit vectors z,

    L = 1/(2B) sum_i [ -log exp(z_ai.z_pi / tau) / sum_j exp(z_ai.z_pj / tau)
                       -log exp(z_ai.z_pi / tau) / sum_j exp(z_aj.z_pi / tau) ]

where a candidate j that is the same item as the positive (or as the query itself) is masked out of the sum, so
repeated items in a batch are not pushed apart.

- Item pairs: a user's positive (label == 1) train interactions, ordered by timestamp (ties by item_id), pair each
  positive with the next `window` positives of the same user (`co_engagement_pairs`). Pairs are drawn without
  replacement with weight (count_a * count_b) ** -popularity_power (count = positive train interactions), so head
  items do not dominate. Unique unordered pairs are split at random: `holdout` for validation (early stopping),
  `holdout` for the retrieval probe, the rest for training.
- Users: the user's text is their side features rendered as text plus the texts of their `user_history` positive
  train items before the last one (most recent first, `user_texts`); it is aligned (user head) with the embedding
  of that last positive train item -- the item they engage with next (item head). Same loss, same batch step.
- Parameter-efficient for CPUs: the encoder is frozen except its top `train_layers` transformer layers (a copy)
  and two projection heads (Linear D->D initialised to identity, output L2-normalised), so before training the
  aligned vectors equal the plain encoder's. The frozen lower layers run ONCE over all texts; their hidden states
  (pads dropped, packed) are cached in memory and training runs only the top layers + heads on them.
  This is implemented for BERT-style text encoders (model.embeddings + model.encoder.layer: BERT, RoBERTa,
  XLM-R, MiniLM).
- Heads only ("head" mode): with item images, with any encoder kind other than a BERT-style text encoder
  (clip, vlm, other text architectures), or with train_layers=0, no transformer layer is trained. Every item
  (text + image) and user (text, `user_max_length` tokens) is encoded once by the frozen encoder
  (`semid.encoder.encode`, so an embedding cache is reused), each vector becomes a one-token text of the same
  in-memory store, and the same loop trains only the two heads on them: same objectives, early stopping, probes.
  Images need an encoder that takes them (clip, vlm); a text encoder ignores them with a warning and keeps
  training its top layers.
- `load_aligned_encoder` rebuilds the aligned encoder from the saved state so `semid assign` can embed new items
  exactly as `align` embedded the known ones.
"""

from __future__ import annotations

import copy
import math
import os
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, NamedTuple

import lightning as L
import polars as pl
import torch
from lightning.pytorch.callbacks import EarlyStopping
from torch import Tensor, nn
from torch.utils.data import DataLoader

from semid.encoder import (
    ContentEncoder,
    EncoderConfig,
    check_inputs,
    encode,
    length_batches,
    pool,
    progress_bar,
)
from semid.errors import InputError
from semid.schema import ITEM, LABEL, TEXT, TIMESTAMP, USER

ANCHOR = "anchor_id"
POSITIVE = "positive_id"
NEXT_ITEM = "next_item_id"
STATE_FILE = "aligned_encoder.pt"
_LAYER_MODEL_TYPES = frozenset({"bert", "roberta", "xlm-roberta", "camembert", "electra"})
_NO_PROFILE = "user"


@dataclass
class AlignConfig:
    enabled: bool = True
    train_layers: int = 1
    """Top transformer layers fine-tuned (the rest frozen and cached). 1 keeps an epoch on ML-1M near a minute
    on 2 CPU cores; 0 trains the projection heads only, on frozen encoder vectors -- which is also what happens,
    whatever this says, when items have images or the encoder is not a BERT-style text model (clip, vlm)."""
    window: int = 5
    """Each positive is paired with the next `window` positives of the same user."""
    temperature: float = 0.05
    """InfoNCE temperature; 0.05 is the usual value for sentence-embedding contrastive tuning (SimCSE)."""
    max_pairs: int = 8_192
    """Training pairs drawn (popularity-damped) per run, reshuffled each epoch. The cost is tokens through the
    top layer, so this, not the data size, bounds the run time: 8k pairs is 32 steps per epoch (on ML-1M one
    layer fwd+bwd runs at ~3-9k tokens/s on 2 cores, ~15k tokens a step)."""
    batch_size: int = 256
    """Pairs per step, i.e. in-batch negatives."""
    users_per_step: int = 64
    """User examples per step (a fresh random subset of the train users each epoch). User texts are ~3x longer
    than item texts, so this bounds their share of the cost."""
    bf16: bool = True
    """Train the top layers under bf16 autocast (CPU): ~2x faster on AVX-512 BF16 CPUs. Output vectors are
    always computed in float32."""
    lr: float = 2e-4
    """AdamW; well below from-scratch rates because the top layer is pretrained."""
    weight_decay: float = 0.01
    max_epochs: int = 3
    patience: int = 1
    """Early stopping on the held-out alignment loss; the best state (including the untrained one) is kept."""
    user_history: int = 5
    """Positive items rendered into a user's text; 5 titles + profile fit in `user_max_length` tokens."""
    user_max_length: int = 64
    """Token cap of a user text (most recent items come first, so the oldest are cut)."""
    popularity_power: float = 0.5
    holdout: float = 0.1
    """Fraction of unique pairs (and of users) held out for validation, and again for the probe."""
    probe_k: int = 10
    seed: int = 0


class AlignResult(NamedTuple):
    item_emb: Tensor  # (N_i, D) float32, L2-normalised, aligned
    user_emb: Tensor  # (N_u, D)
    probe: dict[
        str, float
    ]  # recall@k before/after for items, next-item hit@k before/after for users, timings
    state_path: Path  # trainable state for load_aligned_encoder


# -- data: pairs, user texts, probes ------------------------------------------------------------------------


def _positives(train: pl.DataFrame) -> pl.LazyFrame:
    """Positive train interactions in each user's timeline order (timestamp, ties by item_id)."""
    return train.lazy().filter(pl.col(LABEL) == 1).select(USER, ITEM, TIMESTAMP).sort(USER, TIMESTAMP, ITEM)


def co_engagement_pairs(train: pl.DataFrame, window: int) -> pl.DataFrame:
    """(user_id, anchor_id, positive_id): each positive of a user paired with the user's next `window` positives
    (timeline order), self-pairs (the same item twice) dropped. One shifted copy per offset, no loop over users."""
    _require(train, [USER, ITEM, LABEL, TIMESTAMP])
    pos = _positives(train)
    shifted = [
        pos.select(
            USER,
            pl.col(ITEM).alias(ANCHOR),
            pl.when(pl.col(USER).shift(-d) == pl.col(USER)).then(pl.col(ITEM).shift(-d)).alias(POSITIVE),
        )
        for d in range(1, window + 1)
    ]
    schema = {USER: pl.Int32, ANCHOR: pl.Int32, POSITIVE: pl.Int32}
    if not shifted:
        return pl.DataFrame(schema=schema)
    pairs = pl.concat(shifted).filter(pl.col(POSITIVE).is_not_null() & (pl.col(ANCHOR) != pl.col(POSITIVE)))
    return pairs.collect().cast(schema)


def next_items(train: pl.DataFrame) -> pl.DataFrame:
    """(user_id, next_item_id): each user's last positive train item, the target their user text is aligned to."""
    _require(train, [USER, ITEM, LABEL, TIMESTAMP])
    out = _positives(train).group_by(USER).agg(pl.col(ITEM).last().alias(NEXT_ITEM)).sort(USER)
    return out.collect().cast({USER: pl.Int32, NEXT_ITEM: pl.Int32})


def user_texts(
    users: pl.DataFrame, items: pl.DataFrame, train: pl.DataFrame, n_recent: int
) -> tuple[list[str], pl.DataFrame]:
    """One text per user in user_id order -- "<profile text>. Recently liked: <item text> | <item text> ..." over
    the `n_recent` positive train items before the last one, most recent first -- and the (user_id,
    next_item_id) targets (that last positive item) for users with at least one positive. A user with no profile
    text and no history gets the placeholder "user"."""
    _require(users, [USER, TEXT], what="users")
    _require(items, [ITEM, TEXT], what="items")
    pos = _positives(train).with_columns(
        pl.int_range(pl.len()).over(USER).alias("_pos"), pl.len().over(USER).alias("_n")
    )
    history = (
        pos.filter((pl.col("_pos") < pl.col("_n") - 1) & (pl.col("_pos") >= pl.col("_n") - 1 - n_recent))
        .join(items.lazy().select(ITEM, pl.col(TEXT).alias("_item_text")), on=ITEM, how="left")
        .sort(USER, "_pos", descending=[False, True])
        .group_by(USER, maintain_order=True)
        .agg(pl.col("_item_text").str.join(" | ").alias("_history"))
    )
    profile = pl.col(TEXT).fill_null("").str.strip_chars()
    recent = pl.col("_history")
    text = (
        pl.when(recent.is_null() | (recent == ""))
        .then(profile)
        .when(profile == "")
        .then(pl.lit("Recently liked: ") + recent)
        .otherwise(profile + pl.lit(". Recently liked: ") + recent)
    )
    rendered = (
        users.lazy()
        .select(USER, TEXT)
        .sort(USER)
        .join(history, on=USER, how="left", maintain_order="left")
        .select(pl.when(text == "").then(pl.lit(_NO_PROFILE)).otherwise(text).alias(TEXT))
        .collect()
    )
    return rendered[TEXT].to_list(), next_items(train)


def retrieval_recall(emb: Tensor, pairs: pl.DataFrame, k: int = 10, *, chunk: int = 1024) -> float:
    """Mean over anchor items of |co-engaged items among the anchor's k nearest neighbours| / |co-engaged items|
    (cosine, the anchor itself excluded; pairs are taken in both directions, deduplicated). NaN without pairs."""
    both = (
        pl.concat(
            [
                pairs.select(ANCHOR, POSITIVE),
                pairs.select(pl.col(POSITIVE).alias(ANCHOR), pl.col(ANCHOR).alias(POSITIVE)),
            ]
        )
        .filter(pl.col(ANCHOR) != pl.col(POSITIVE))
        .unique()
    )
    if both.height == 0:
        return float("nan")
    n = emb.shape[0]
    anchor = both[ANCHOR].to_torch().long()
    keys = torch.sort(anchor * n + both[POSITIVE].to_torch().long()).values  # (P,) pair keys
    anchors, counts = torch.unique(anchor, return_counts=True)  # (A,)
    emb = nn.functional.normalize(emb.float(), dim=-1)
    k = min(k, n - 1)
    hits = []
    for rows in torch.split(anchors, chunk):
        sims = emb[rows] @ emb.T  # (c, N)
        sims[torch.arange(rows.shape[0]), rows] = -math.inf
        top = sims.topk(k, dim=1).indices  # (c, k)
        hits.append(torch.isin(rows[:, None] * n + top, keys).sum(dim=1))  # (c,)
    return float((torch.cat(hits) / counts).mean())


def next_item_hit_rate(user_emb: Tensor, item_emb: Tensor, targets: pl.DataFrame, k: int = 10) -> float:
    """Fraction of (user_id, next_item_id) targets whose item is among the user's k nearest items (cosine)."""
    if targets.height == 0:
        return float("nan")
    users = targets[USER].to_torch().long()
    wanted = targets[NEXT_ITEM].to_torch().long()
    u = nn.functional.normalize(user_emb[users].float(), dim=-1)  # (U, D)
    i = nn.functional.normalize(item_emb.float(), dim=-1)  # (N_i, D)
    hits = [
        (torch.topk(ub @ i.T, min(k, i.shape[0]), dim=1).indices == wb[:, None]).any(dim=1)  # (c,)
        for ub, wb in zip(torch.split(u, 1024), torch.split(wanted, 1024))
    ]
    return float(torch.cat(hits).float().mean())


def _require(df: pl.DataFrame, cols: list[str], *, what: str = "train") -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise InputError(
            f"the {what} frame lacks columns {missing}",
            file=f"{what}.parquet",
            column=missing[0],
            fix="pass a prepared dataset frame (see semid.schema)",
        )


def _weighted_sample(weights: Tensor, n: int, generator: torch.Generator) -> Tensor:
    """n indices drawn without replacement with probability proportional to weights (Efraimidis-Spirakis keys
    log(u) / w; works for any population size, unlike torch.multinomial's 2**24 limit)."""
    if n >= weights.shape[0]:
        return torch.randperm(weights.shape[0], generator=generator)
    keys = torch.rand(weights.shape[0], generator=generator, dtype=torch.float64).log() / weights.double()
    return torch.topk(keys, n).indices


class _Split(NamedTuple):
    train: pl.DataFrame
    val: pl.DataFrame
    probe: pl.DataFrame


def split_pairs(pairs: pl.DataFrame, holdout: float, generator: torch.Generator) -> _Split:
    """Split by unique unordered pair, so a probe pair is never trained on (from any user)."""
    lo = pl.min_horizontal(ANCHOR, POSITIVE).alias("_lo")
    hi = pl.max_horizontal(ANCHOR, POSITIVE).alias("_hi")
    keyed = pairs.with_columns(lo, hi)
    uniq = keyed.select("_lo", "_hi").unique().sort("_lo", "_hi")
    n_hold = int(round(holdout * uniq.height))
    rank_values = torch.randperm(uniq.height, generator=generator).numpy()
    rank = pl.col("_rank")
    part = pl.when(rank < n_hold).then(pl.lit("probe")).when(rank < 2 * n_hold).then(pl.lit("val"))
    uniq = uniq.with_columns(pl.Series("_rank", rank_values)).with_columns(
        part.otherwise(pl.lit("train")).alias("_part")
    )
    keyed = keyed.join(uniq, on=["_lo", "_hi"], how="left", maintain_order="left")
    pick = [
        keyed.filter(pl.col("_part") == p).select(USER, ANCHOR, POSITIVE) for p in ("train", "val", "probe")
    ]
    return _Split(*pick)


def split_users(targets: pl.DataFrame, holdout: float, generator: torch.Generator) -> _Split:
    n_hold = int(round(holdout * targets.height))
    rank = torch.randperm(targets.height, generator=generator).numpy()
    ranked = targets.with_columns(pl.Series("_rank", rank))
    return _Split(
        ranked.filter(pl.col("_rank") >= 2 * n_hold).drop("_rank"),
        ranked.filter((pl.col("_rank") >= n_hold) & (pl.col("_rank") < 2 * n_hold)).drop("_rank"),
        ranked.filter(pl.col("_rank") < n_hold).drop("_rank"),
    )


# -- model: frozen lower part, trainable top layers + heads ------------------------------------------------


def _attention_mask_4d(model: nn.Module, hidden: Tensor, mask: Tensor) -> Tensor | None:
    try:
        from transformers.masking_utils import create_bidirectional_mask
    except ImportError:  # transformers 4.x
        return model.get_extended_attention_mask(mask, mask.shape)
    return create_bidirectional_mask(config=model.config, inputs_embeds=hidden, attention_mask=mask)


def _run_layers(layers: nn.ModuleList, model: nn.Module, hidden: Tensor, mask: Tensor) -> Tensor:
    mask4d = _attention_mask_4d(model, hidden, mask)
    for layer in layers:
        out = layer(hidden, mask4d)
        hidden = out[0] if isinstance(out, tuple) else out  # (B, T, H); 4.x layers return tuples
    return hidden


def _identity_linear(dim: int) -> nn.Linear:
    head = nn.Linear(dim, dim)
    with torch.no_grad():
        head.weight.copy_(torch.eye(dim))
        head.bias.zero_()
    return head


class AlignedEncoder(nn.Module):
    """Frozen lower encoder -> trainable top layers (copies) -> pooling -> item / user heads, unit vectors.

    mode "layers": `lower` runs embeddings + all but the top `train_layers` layers of a BERT-style model and
    returns token states; mode "head" (train_layers=0 or any other model): `lower` returns the frozen pooled
    embedding of text + image as a one-token sequence.
    """

    def __init__(self, encoder: ContentEncoder, *, train_layers: int, user_max_length: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.user_max_length = user_max_length
        model = encoder.model
        splittable = (
            encoder.kind == "text"
            and getattr(model.config, "model_type", "") in _LAYER_MODEL_TYPES
            and hasattr(model, "embeddings")
            and hasattr(getattr(model, "encoder", None), "layer")
        )
        self.mode: Literal["layers", "head"] = "layers" if train_layers > 0 and splittable else "head"
        if self.mode == "layers":
            n = len(model.encoder.layer)
            self.split = n - min(train_layers, n)
            top = nn.ModuleList(copy.deepcopy(model.encoder.layer[i]) for i in range(self.split, n))
            dim = model.config.hidden_size
        else:
            self.split = 0
            top = nn.ModuleList()
            with torch.inference_mode():
                dim = encoder.embed_batch(["probe"]).shape[1]
        self.train_layers = len(top)
        self.trainable = nn.ModuleDict(
            {"top": top, "item_head": _identity_linear(dim), "user_head": _identity_linear(dim)}
        )
        self.trainable.requires_grad_(True)
        self.dim = dim

    def lower(
        self, texts: list[str], images: list[str | None] | None = None, *, max_length: int
    ) -> tuple[Tensor, Tensor]:
        """Frozen part: (hidden (B, T, H) with zeros at pads, mask (B, T) bool). Images: head mode only."""
        if self.mode == "head":
            emb = self.encoder.embed_batch(texts, images, max_length=max_length)  # (B, D)
            return emb[:, None, :], torch.ones(emb.shape[0], 1, dtype=torch.bool)
        if images is not None:
            raise ValueError("the layers mode embeds texts only; images need an encoder in head mode")
        model = self.encoder.model
        batch = self.encoder.tokenizer(
            texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        )
        mask = batch["attention_mask"]  # (B, T)
        hidden = model.embeddings(input_ids=batch["input_ids"], token_type_ids=batch.get("token_type_ids"))
        hidden = _run_layers(model.encoder.layer[: self.split], model, hidden, mask)  # (B, T, H)
        return hidden.masked_fill(~mask.bool()[..., None], 0.0), mask.bool()

    def upper(self, hidden: Tensor, mask: Tensor) -> Tensor:
        """Trainable layers + pooling: (B, T, H), (B, T) -> (B, D) unit vectors (the plain encoder's, untrained)."""
        if self.mode == "head":
            return hidden[:, 0]
        model = self.encoder.model
        hidden = _run_layers(self.trainable["top"], model, hidden, mask.long())  # (B, T, H)
        return nn.functional.normalize(pool(hidden, mask.long(), self.encoder.cfg.pooling).float(), dim=-1)

    def head(self, pooled: Tensor, side: Literal["item", "user"]) -> Tensor:
        return nn.functional.normalize(self.trainable[f"{side}_head"](pooled), dim=-1)  # (B, D)

    def _encode(
        self, texts: list[str], side: Literal["item", "user"], images: list[str | None] | None = None
    ) -> Tensor:
        check_inputs(texts, images)
        max_length = self.encoder.cfg.max_length if side == "item" else self.user_max_length
        out = torch.empty(len(texts), self.dim)
        with torch.inference_mode():
            for rows in length_batches(texts, self.encoder.cfg.batch_size):
                idx = rows.tolist()
                batch_images = None if images is None else [images[i] for i in idx]
                hidden, mask = self.lower([texts[i] for i in idx], batch_images, max_length=max_length)
                out[rows] = self.head(self.upper(hidden, mask), side)
        return out

    def encode_items(self, texts: list[str], images: list[str | None] | None = None) -> Tensor:
        """(N, D) aligned item vectors; identical to `align`'s item_emb for the same texts (+ images) and
        settings (up to float round-off where align read its vectors from an embedding cache). `images`: one
        path or None per item, for an encoder that takes images (see `usable_images`)."""
        self.eval()
        return self._encode(texts, "item", images)

    def encode_users(self, texts: list[str]) -> Tensor:
        self.eval()
        return self._encode(texts, "user")


# -- cached lower states ------------------------------------------------------------------------------------


class HiddenStore(NamedTuple):
    hidden: Tensor  # (total tokens, H) float32: lower-part states of every text, pads dropped, packed
    offsets: Tensor  # (N,) int64 first row of each text
    lengths: Tensor  # (N,) int64 tokens of each text


def build_store(
    aligned: AlignedEncoder, texts: list[str], max_length: int, *, progress: bool = True
) -> HiddenStore:
    """Run the frozen lower part once over `texts` in the same length-sorted batches `encode_items` uses (so the
    cached states are bit-identical to a fresh pass) and keep each text's real tokens, packed."""
    chunks, lengths, order = [], [], []
    batches = length_batches(texts, aligned.encoder.cfg.batch_size)
    with torch.inference_mode():
        for rows in progress_bar(batches, progress, f"cache lower layers ({len(texts)} texts)"):
            hidden, mask = aligned.lower([texts[i] for i in rows.tolist()], max_length=max_length)
            chunks.append(hidden[mask])  # (tokens, H)
            lengths.append(mask.sum(dim=1))
            order.append(rows)
    rows, lens_sorted = torch.cat(order), torch.cat(lengths)  # (N,), (N,)
    lens = torch.empty(len(texts), dtype=torch.long).index_copy(0, rows, lens_sorted)
    starts = torch.empty(len(texts), dtype=torch.long).index_copy(
        0, rows, lens_sorted.cumsum(0) - lens_sorted
    )
    return HiddenStore(torch.cat(chunks), starts, lens)


def vector_store(vectors: Tensor) -> HiddenStore:
    """Frozen pooled vectors (N, D) as a store of one-token texts: what head mode trains on."""
    n = vectors.shape[0]
    return HiddenStore(vectors.float(), torch.arange(n), torch.ones(n, dtype=torch.long))


def usable_images(encoder: ContentEncoder, images: list[str | None] | None) -> list[str | None] | None:
    """`images` when at least one is given and the encoder embeds images (clip, vlm); else None. A text
    encoder cannot see images: they are ignored with a warning rather than failing the run."""
    if images is None or all(p is None for p in images):
        return None
    if not encoder.accepts_images:
        n = sum(p is not None for p in images)
        warnings.warn(
            f"the {encoder.kind} encoder {encoder.path} takes no images: {n} item images are ignored "
            "(use a clip or vlm encoder to embed them)",
            stacklevel=2,
        )
        return None
    return list(images)


def concat_stores(first: HiddenStore, second: HiddenStore) -> HiddenStore:
    """Texts of `second` follow those of `first` (user ids are offset by the number of items)."""
    return HiddenStore(
        torch.cat([first.hidden, second.hidden]),
        torch.cat([first.offsets, second.offsets + first.hidden.shape[0]]),
        torch.cat([first.lengths, second.lengths]),
    )


def gather(store: HiddenStore, ids: Tensor) -> tuple[Tensor, Tensor]:
    """Padded states of texts `ids`: (B, T, H) with zeros at pads, mask (B, T) bool; T = longest of them."""
    lengths = store.lengths[ids]  # (B,)
    positions = torch.arange(int(lengths.max()))  # (T,)
    mask = positions[None, :] < lengths[:, None]  # (B, T)
    rows = torch.where(mask, store.offsets[ids, None] + positions[None, :], 0)  # (B, T)
    return store.hidden[rows].masked_fill(~mask[..., None], 0.0), mask  # (B, T, H)


def embed_from_store(
    aligned: AlignedEncoder,
    store: HiddenStore,
    batches: list[Tensor],
    offset: int,
    side: Literal["item", "user"],
) -> Tensor:
    """Aligned vectors of texts offset + rows for each batch of rows, in row order (eval, no grad)."""
    n = sum(int(b.shape[0]) for b in batches)
    out = torch.empty(n, aligned.dim)
    aligned.eval()
    with torch.inference_mode():
        for rows in batches:
            out[rows] = aligned.head(aligned.upper(*gather(store, rows + offset)), side)
    return out


# -- training -------------------------------------------------------------------------------------------------


def info_nce(za: Tensor, zp: Tensor, a_ids: Tensor, p_ids: Tensor, temperature: float) -> Tensor:
    """Symmetric InfoNCE over in-batch negatives; a candidate equal to the positive or to the query is masked."""
    logits = za @ zp.T / temperature  # (B, B)
    eye = torch.eye(logits.shape[0], dtype=torch.bool)
    # row i (query a_i) vs column j (candidate p_j)
    rows_mask = ((p_ids[None, :] == p_ids[:, None]) | (p_ids[None, :] == a_ids[:, None])) & ~eye
    # column j (query p_j) vs row i (candidate a_i), laid out transposed
    cols_mask = ((a_ids[None, :] == a_ids[:, None]) | (a_ids[None, :] == p_ids[:, None])) & ~eye
    target = torch.arange(logits.shape[0])
    forward = nn.functional.cross_entropy(logits.masked_fill(rows_mask, -math.inf), target)
    backward = nn.functional.cross_entropy(logits.T.masked_fill(cols_mask, -math.inf), target)
    return (forward + backward) / 2


class AlignModule(L.LightningModule):
    """Trains an AlignedEncoder's top layers + heads on cached lower states; keeps the best held-out state."""

    def __init__(
        self,
        aligned: AlignedEncoder,
        store: HiddenStore,
        *,
        n_items: int,
        cfg: AlignConfig,
        train_pairs: Tensor,
        val_pairs: Tensor,
        train_users: Tensor,
        val_users: Tensor,
        sub_batch: int = 128,
    ) -> None:
        super().__init__()
        self.aligned = aligned
        self.store = store
        self.n_items = n_items
        self.cfg = cfg
        self.train_pairs = train_pairs  # (P, 2) anchor, positive item ids
        self.val_pairs = val_pairs
        self.train_users = train_users  # (U, 2) user id, next item id
        self.val_users = val_users
        self.sub_batch = sub_batch
        self.best_loss = math.inf
        self.best_state: dict[str, Tensor] | None = None
        self.history: list[float] = []
        self._val_losses: list[float] = []

    # vectors of a set of texts: unique ids, length-sorted sub-batches (little padding), scattered back
    def _vectors(self, ids: Tensor, side: Literal["item", "user"]) -> Tensor:
        offset = 0 if side == "item" else self.n_items
        uniq, inverse = torch.unique(ids, return_inverse=True)  # (U,), (len(ids),)
        order = torch.argsort(self.store.lengths[uniq + offset], stable=True)
        parts, index = [], []
        for chunk in torch.split(order, self.sub_batch):
            parts.append(
                self.aligned.head(self.aligned.upper(*gather(self.store, uniq[chunk] + offset)), side)
            )
            index.append(chunk)
        z = torch.cat(parts)[torch.argsort(torch.cat(index))]  # (U, D) back in uniq order, differentiable
        return z[inverse]

    def _loss(self, pairs: Tensor, users: Tensor) -> Tensor:
        loss = torch.zeros(())
        autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.cfg.bf16 and self.training)
        if pairs.shape[0] > 1:
            with autocast:
                z = self._vectors(pairs.reshape(-1), "item").reshape(pairs.shape[0], 2, -1)  # (B, 2, D)
            z = z.float()
            loss = loss + info_nce(z[:, 0], z[:, 1], pairs[:, 0], pairs[:, 1], self.cfg.temperature)
        if users.shape[0] > 1:
            with autocast:
                zu = self._vectors(users[:, 0], "user")  # (b, D)
                zi = self._vectors(users[:, 1], "item")  # (b, D)
            loss = loss + info_nce(
                zu.float(), zi.float(), -1 - users[:, 0], users[:, 1], self.cfg.temperature
            )
        return loss

    def on_train_epoch_start(self) -> None:
        self.aligned.trainable.train()  # dropout in the trained layers; the frozen encoder stays in eval mode

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        loss = self._loss(*batch)
        self.log("train_loss", loss, prog_bar=True, batch_size=int(batch[0].shape[0]))
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        loss = self._loss(*batch)
        self._val_losses.append(float(loss))
        self.log("val_loss", loss, batch_size=int(batch[0].shape[0]), on_epoch=True)

    def on_validation_epoch_end(self) -> None:
        # own mean (equal-size batches): callback_metrics only holds this epoch's value after this hook
        loss = sum(self._val_losses) / max(1, len(self._val_losses))
        self._val_losses = []
        self.history.append(loss)
        if loss < self.best_loss:
            self.best_loss = loss
            self.best_state = {k: v.detach().clone() for k, v in self.aligned.trainable.state_dict().items()}

    def _batches(self, pairs: Tensor, users: Tensor, generator: torch.Generator | None) -> list:
        if generator is not None:
            pairs = pairs[torch.randperm(pairs.shape[0], generator=generator)]
            users = users[torch.randperm(users.shape[0], generator=generator)]
        steps = max(1, math.ceil(pairs.shape[0] / self.cfg.batch_size))
        users = users[: steps * self.cfg.users_per_step]
        return list(zip(torch.tensor_split(pairs, steps), torch.tensor_split(users, steps)))

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(self.cfg.seed + 1 + self.current_epoch)
        return DataLoader(self._batches(self.train_pairs, self.train_users, generator), batch_size=None)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self._batches(self.val_pairs, self.val_users, None), batch_size=None)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(
            self.aligned.trainable.parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay
        )


# -- the step -------------------------------------------------------------------------------------------------


def _pairs_tensor(df: pl.DataFrame, a: str, b: str) -> Tensor:
    return (
        torch.stack([df[a].to_torch().long(), df[b].to_torch().long()], dim=1)
        if df.height
        else torch.empty(0, 2, dtype=torch.long)
    )


def _sample_pairs(
    pairs: pl.DataFrame, counts: Tensor, n: int, power: float, generator: torch.Generator
) -> Tensor:
    t = _pairs_tensor(pairs, ANCHOR, POSITIVE)  # (P, 2)
    if t.shape[0] == 0:
        return t
    weights = (counts[t[:, 0]] * counts[t[:, 1]]).double().clamp_min(1.0) ** -power  # (P,)
    return t[_weighted_sample(weights, n, generator)]


def save_state(aligned: AlignedEncoder, path: Path) -> Path:
    payload = {
        "format": 1,
        "encoder": asdict(aligned.encoder.cfg),
        "kind": aligned.encoder.kind,
        "mode": aligned.mode,
        "train_layers": aligned.train_layers,
        "user_max_length": aligned.user_max_length,
        "state_dict": aligned.trainable.state_dict(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def load_aligned_encoder(enc_cfg: EncoderConfig, state_path: Path) -> AlignedEncoder:
    """The aligned encoder `align` saved: `.encode_items(texts)` / `.encode_users(texts)` give its vectors."""
    state_path = Path(state_path)
    if not state_path.is_file():
        raise InputError("no aligned encoder state here", file=state_path, fix="run the align step first")
    payload = torch.load(state_path, weights_only=True)
    saved = payload["encoder"]
    for key in ("pooling", "max_length", "normalize"):  # batch_size only moves float round-off
        if saved[key] != getattr(enc_cfg, key):
            raise InputError(
                f"encoder {key}={getattr(enc_cfg, key)!r} differs from the {saved[key]!r} the state was trained with",
                file=state_path,
                fix=f"set encoder {key} to {saved[key]!r}, or re-run align",
            )
    encoder = ContentEncoder(enc_cfg)
    aligned = AlignedEncoder(
        encoder, train_layers=payload["train_layers"], user_max_length=payload["user_max_length"]
    )
    if aligned.mode != payload["mode"]:
        raise InputError(
            f"the state was trained in mode {payload['mode']!r} but this encoder gives {aligned.mode!r}",
            file=state_path,
            fix="use the encoder model the state was trained with",
        )
    aligned.trainable.load_state_dict(payload["state_dict"])
    return aligned.eval()


def align(
    items_text: list[str],
    users_text: list[str],
    train: pl.DataFrame,
    enc_cfg: EncoderConfig,
    cfg: AlignConfig,
    *,
    work_dir: Path,
    images: list[str | None] | None = None,
    cache: Path | None = None,
    progress: bool = True,
) -> AlignResult:
    """Align the encoder with behaviour in `train` (see the module docstring) and embed all items and users.

    `items_text[i]` is item_id i, `users_text[u]` user_id u (from `user_texts`); user targets are recomputed
    from `train` with `next_items`. `images[i]` is item i's image path or None: with an image-capable encoder
    only the heads are trained, on frozen text + image vectors (head mode). `cache` is the embedding cache of
    `semid.encoder.encode`, used in head mode. `cfg.enabled=False` returns the plain encoder vectors, probes
    still computed.
    """
    started = time.perf_counter()
    items_text, users_text = list(items_text), list(users_text)
    check_inputs(items_text, images)
    check_inputs(users_text, None)
    _require(train, [USER, ITEM, LABEL, TIMESTAMP])
    n_items, n_users = len(items_text), len(users_text)
    if train.height and (int(train[ITEM].max()) >= n_items or int(train[USER].max()) >= n_users):
        raise InputError(
            f"ids exceed the {n_items} item / {n_users} user texts given",
            file="train.parquet",
            column=ITEM if int(train[ITEM].max()) >= n_items else USER,
            fix="pass one text per dense id (items.parquet / users.parquet in id order)",
        )
    L.seed_everything(cfg.seed, verbose=False)
    generator = torch.Generator().manual_seed(cfg.seed)

    pairs = split_pairs(co_engagement_pairs(train, cfg.window), cfg.holdout, generator)
    users = split_users(next_items(train), cfg.holdout, generator)
    counts = torch.bincount(
        train.filter(pl.col(LABEL) == 1)[ITEM].to_torch().long(), minlength=n_items
    )  # (N_i,) positive interactions
    train_pairs = _sample_pairs(pairs.train, counts, cfg.max_pairs, cfg.popularity_power, generator)
    n_val = max(1, int(cfg.max_pairs * cfg.holdout))
    val_pairs = _sample_pairs(pairs.val, counts, n_val, cfg.popularity_power, generator)

    content = ContentEncoder(enc_cfg)
    images = usable_images(content, images)
    aligned = AlignedEncoder(
        content,
        train_layers=cfg.train_layers if cfg.enabled and images is None else 0,
        user_max_length=cfg.user_max_length,
    )
    if aligned.mode == "head":  # frozen vectors, encoded once (and cached); training touches only the heads

        def frozen(texts: list[str], row_images: list[str | None] | None, max_length: int) -> HiddenStore:
            return vector_store(
                encode(
                    texts,
                    enc_cfg,
                    images=row_images,
                    cache=cache,
                    max_length=max_length,
                    encoder=content,
                    progress=progress,
                )
            )

        store = frozen(items_text, images, enc_cfg.max_length)
        if n_users:
            store = concat_stores(store, frozen(users_text, None, cfg.user_max_length))
    else:
        store = build_store(aligned, items_text, enc_cfg.max_length, progress=progress)
        if n_users:
            store = concat_stores(
                store, build_store(aligned, users_text, cfg.user_max_length, progress=progress)
            )
    item_batches = length_batches(items_text, enc_cfg.batch_size)
    user_batches = length_batches(users_text, enc_cfg.batch_size)
    cached_s = time.perf_counter() - started

    def embed() -> tuple[Tensor, Tensor]:
        return (
            embed_from_store(aligned, store, item_batches, 0, "item"),
            embed_from_store(aligned, store, user_batches, n_items, "user") if n_users else torch.empty(0, 0),
        )

    def probes(item_emb: Tensor, user_emb: Tensor, when: str) -> dict[str, float]:
        k = cfg.probe_k
        return {
            f"item_recall@{k}_{when}": retrieval_recall(item_emb, pairs.probe, k),
            f"user_hit@{k}_{when}": next_item_hit_rate(user_emb, item_emb, users.probe, k)
            if n_users
            else math.nan,
        }

    item_emb, user_emb = embed()
    probe = probes(item_emb, user_emb, "before")
    module = None
    if cfg.enabled and train_pairs.shape[0] > 1:
        module = AlignModule(
            aligned,
            store,
            n_items=n_items,
            cfg=cfg,
            train_pairs=train_pairs,
            val_pairs=val_pairs,
            train_users=_pairs_tensor(users.train, USER, NEXT_ITEM),
            val_users=_pairs_tensor(users.val, USER, NEXT_ITEM),
        )
        trainer = L.Trainer(
            accelerator="cpu",
            devices=1,
            max_epochs=cfg.max_epochs,
            callbacks=[EarlyStopping(monitor="val_loss", patience=cfg.patience, mode="min")],
            logger=False,
            enable_checkpointing=False,
            enable_model_summary=False,
            enable_progress_bar=progress,
            num_sanity_val_steps=0,
            reload_dataloaders_every_n_epochs=1,
            default_root_dir=work_dir,
        )
        trainer.validate(module, verbose=False)  # the untrained state is the first candidate for "best"
        trainer.fit(module)
        aligned.trainable.load_state_dict(module.best_state)
        item_emb, user_emb = embed()
    probe |= probes(item_emb, user_emb, "after")
    probe |= {
        "train_pairs": float(train_pairs.shape[0]),
        "probe_pairs": float(pairs.probe.height),
        "probe_users": float(users.probe.height),
        "trained_layers": float(aligned.train_layers if module is not None else 0),
        "items_with_images": float(sum(p is not None for p in images or [])),
        "epochs": float(len(module.history) - 1) if module is not None else 0.0,
        "val_loss_before": module.history[0] if module is not None else math.nan,
        "val_loss_best": module.best_loss if module is not None else math.nan,
        "seconds_cache": cached_s,
        "seconds_total": time.perf_counter() - started,
    }
    state_path = save_state(aligned, Path(work_dir) / STATE_FILE)
    return AlignResult(item_emb, user_emb, probe, state_path)

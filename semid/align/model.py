"""The aligned encoder: the frozen lower part of a ContentEncoder, trainable copies of its top layers and two
projection heads (item, user), the in-memory store of cached lower states it trains on, and the InfoNCE loss."""

from __future__ import annotations

import copy
import math
import warnings
from typing import Literal, NamedTuple

import torch
from torch import Tensor, nn

from semid.determinism import seeded
from semid.encoder import ContentEncoder, check_inputs, length_batches, progress_bar


def _identity_linear(dim: int) -> nn.Linear:
    head = nn.Linear(dim, dim)
    with torch.no_grad():
        head.weight.copy_(torch.eye(dim))
        head.bias.zero_()
    return head


class AlignedEncoder(nn.Module):
    """Frozen lower encoder -> trainable top layers (copies) -> pooling -> item / user heads, unit vectors.

    mode "layers": `lower` runs the embeddings + all but the top `train_layers` layers of a splittable encoder
    (`ContentEncoder.layers()`: BERT-style text models) and returns token states; mode "head" (train_layers=0 or
    any other model): `lower` returns the frozen pooled embedding of text + image as a one-token sequence.
    `threads`: the torch thread count `encode_items` / `encode_users` run on, the one the state was trained on
    (see semid.determinism).
    """

    def __init__(
        self, encoder: ContentEncoder, *, train_layers: int, user_max_length: int, threads: int | None = 1
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.user_max_length = user_max_length
        self.threads = threads
        stack = encoder.layers()
        self.mode: Literal["layers", "head"] = "layers" if train_layers > 0 and stack is not None else "head"
        if self.mode == "layers":
            n = len(stack)
            self.split = n - min(train_layers, n)
            # float32 copies even of a bfloat16 encoder (EncoderConfig.dtype): they are trained
            top = nn.ModuleList(copy.deepcopy(stack[i]).float() for i in range(self.split, n))
            dim = encoder.hidden_size
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
        return self.encoder.lower(texts, split=self.split, max_length=max_length)

    def upper(self, hidden: Tensor, mask: Tensor) -> Tensor:
        """Trainable layers + pooling: (B, T, H), (B, T) -> (B, D) unit vectors (the plain encoder's, untrained)."""
        if self.mode == "head":
            return hidden[:, 0]
        return self.encoder.upper(self.trainable["top"], hidden, mask)

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
        with seeded(0, self.threads):
            return self._encode(texts, "item", images)

    def encode_users(self, texts: list[str]) -> Tensor:
        self.eval()
        with seeded(0, self.threads):
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

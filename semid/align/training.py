"""Training of the alignment: the config, the Lightning module over cached lower states, the saved state, and
`align` -- pairs in, aligned item and user vectors (and probes) out. See the package docstring for the method."""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import lightning as L
import polars as pl
import torch
from lightning.pytorch.callbacks import EarlyStopping
from torch import Tensor, nn
from torch.utils.data import DataLoader

from semid.align.categories import FIX as CATEGORY_FIX
from semid.align.categories import category_loss, multi_hot, prior_head
from semid.align.model import (
    AlignedEncoder,
    HiddenStore,
    build_store,
    concat_stores,
    embed_from_store,
    gather,
    info_nce,
    usable_images,
    vector_store,
)
from semid.align.pairs import (
    NEXT_ITEM,
    co_engagement_pairs,
    next_items,
    pairs_tensor,
    require_columns,
    sample_pairs,
    split_pairs,
    split_users,
)
from semid.align.popularity import popularity_levels, with_popularity
from semid.align.probe import next_item_hit_rate, retrieval_recall
from semid.checkpoint import load_checkpoint, save_checkpoint
from semid.determinism import seeded
from semid.encoder import ContentEncoder, EncoderConfig, check_inputs, encode, length_batches
from semid.errors import InputError
from semid.schema import ALIGN_STATE_FILE, ITEM, ITEMS_FILE, LABEL, TIMESTAMP, USER

STATE_FILE = ALIGN_STATE_FILE  # the one name, from semid.schema


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
    bf16: bool = False
    """Train the top layers under bf16 autocast (CPU). Off by default: ~2x faster only on CPUs with AVX512-BF16 or
    AMX (`semid.knowledge.hf.cpu_has_fast_bf16`), and many times slower where bf16 is emulated (the 2-core CI
    machines). A config value rather than auto-detection, so the same config gives the same IDs on any machine.
    Output vectors are always computed in float32."""
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
    threads: int = 1
    """torch intra-op threads for the whole alignment (and for `semid assign` embedding new items with the saved
    state). Fixed, not the machine's count: float reductions split across threads change the vectors (~1e-4 for
    1 vs 2 threads), and then the IDs; the value is in the fingerprint. At a given count two builds on one machine
    are bit-identical, 2 threads included (`AlignModule._vectors` sums the gradients of repeated ids in a fixed
    order; before, two 2-thread ML-100K builds differed by up to 3e-7 in the vectors and 1.84% vs 2.08% in item
    collisions)."""
    user_category_weight: float = 0.0
    """Weight of the user category objective (semid.align.categories): a linear head on the user's aligned vector
    predicts the categories of the user's next item (BCE), added to the InfoNCE loss on train and validation.
    0 = off (no head at all). The head is used in training only; it is not saved."""
    category_column: str | None = None
    """The list[str] column of items.parquet holding each item's categories (ML-1M: genre); needed when
    user_category_weight > 0."""
    category_lr: float = 1e-2
    """AdamW rate of the category head: a fresh linear layer on unit vectors (a logistic regression), not a
    pretrained one. At `lr` (2e-4) its held-out BCE on ML-1M genres moved only 0.3082 -> 0.3071 in 3 epochs,
    so it stayed at the prior and passed no gradient to the encoder."""
    item_stats: bool = False
    """Append each item's train popularity as a word to the text the encoder sees (semid.align.popularity):
    " | popularity: new / low / medium / high". `semid assign` renders its new items "new" the same way."""


def fingerprint_settings(cfg: AlignConfig) -> dict[str, Any]:
    """The config as stage fingerprints hash it. The objectives added later (user categories, item stats) enter
    only when on, so a build made before they existed stays up to date; category_column and category_lr matter
    only with a category weight."""
    settings = asdict(cfg)
    if cfg.user_category_weight <= 0:
        for k in ("user_category_weight", "category_column", "category_lr"):
            del settings[k]
    if not cfg.item_stats:
        del settings["item_stats"]
    return settings


class AlignResult(NamedTuple):
    item_emb: Tensor  # (N_i, D) float32, L2-normalised, aligned
    user_emb: Tensor  # (N_u, D)
    probe: dict[
        str, float
    ]  # recall@k before/after for items, next-item hit@k before/after for users, timings
    state_path: Path  # trainable state for load_aligned_encoder


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
        categories: Tensor | None = None,
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
        # (N_i, C) multi-hot item categories: the user category objective is on (cfg.user_category_weight > 0)
        self.categories = categories
        self.category_head: nn.Linear | None = None
        if categories is not None:
            self.category_head = prior_head(aligned.dim, categories[train_users[:, 1]])
        self.sub_batch = sub_batch
        self.best_loss = math.inf
        self.best_state: dict[str, Tensor] | None = None
        self.history: list[float] = []
        self.category_history: list[float] = []  # held-out L_cat per validation (NaN when off)
        self.best_category = math.nan
        self._val_losses: list[float] = []
        self._val_categories: list[float] = []

    # vectors of a set of texts: unique ids, length-sorted sub-batches (little padding), scattered back.
    # Rows are picked with index_select, not `z[inverse]`: the backward of advanced indexing is
    # index_put_(accumulate=True), which on CPU adds the gradients of repeated ids with parallel float atomics
    # (pytorch#29705), in an order that changes run to run at > 1 thread (vectors 1e-7 apart, other IDs).
    # index_select's backward (index_add_) splits the work over columns and adds each column's rows in index
    # order -- the order a single thread uses, so threads-1 results are unchanged.
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
        z = torch.cat(parts).index_select(0, torch.argsort(torch.cat(index)))  # (U, D) back in uniq order
        return z.index_select(0, inverse)  # (len(ids), D)

    def _loss(self, pairs: Tensor, users: Tensor) -> tuple[Tensor, Tensor]:
        """(total loss, unweighted L_cat -- NaN when the category objective is off or the batch has no user)."""
        loss, category = torch.zeros(()), torch.full((), math.nan)
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
            if self.category_head is not None:  # the categories of the same target item
                category = category_loss(self.category_head, zu.float(), self.categories[users[:, 1]])
                loss = loss + self.cfg.user_category_weight * category
        return loss, category

    def on_train_epoch_start(self) -> None:
        self.aligned.trainable.train()  # dropout in the trained layers; the frozen encoder stays in eval mode

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        loss, category = self._loss(*batch)
        self.log("train_loss", loss, prog_bar=True, batch_size=int(batch[0].shape[0]))
        if self.category_head is not None:
            self.log("train_category", category, batch_size=int(batch[1].shape[0]))
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        loss, category = self._loss(*batch)
        self._val_losses.append(float(loss))
        self._val_categories.append(float(category))
        self.log("val_loss", loss, batch_size=int(batch[0].shape[0]), on_epoch=True)

    def on_validation_epoch_end(self) -> None:
        # own mean (equal-size batches): callback_metrics only holds this epoch's value after this hook
        loss = sum(self._val_losses) / max(1, len(self._val_losses))
        seen = [c for c in self._val_categories if not math.isnan(c)]
        category = sum(seen) / len(seen) if seen else math.nan
        self._val_losses, self._val_categories = [], []
        self.history.append(loss)
        self.category_history.append(category)
        if loss < self.best_loss:
            self.best_loss = loss
            self.best_category = category
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
        groups = [{"params": list(self.aligned.trainable.parameters())}]
        if self.category_head is not None:
            groups.append({"params": list(self.category_head.parameters()), "lr": self.cfg.category_lr})
        return torch.optim.AdamW(groups, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)


def save_state(aligned: AlignedEncoder, path: Path, *, meta: dict[str, Any] | None = None) -> Path:
    """Write what `load_aligned_encoder` needs (trainable weights, mode, settings) atomically; `meta`: JSON-ready
    facts of the build (see semid.ids.BUILD_FACTS)."""
    payload = {
        "format": 1,
        "encoder": asdict(aligned.encoder.cfg),
        "kind": aligned.encoder.kind,
        "mode": aligned.mode,
        "train_layers": aligned.train_layers,
        "user_max_length": aligned.user_max_length,
        "threads": aligned.threads,
        "meta": json.loads(json.dumps(meta or {}, sort_keys=True, default=str)),
        "state_dict": aligned.trainable.state_dict(),
    }
    return save_checkpoint(payload, path)


def load_aligned_encoder(enc_cfg: EncoderConfig, state_path: Path) -> AlignedEncoder:
    """The aligned encoder `align` saved: `.encode_items(texts)` / `.encode_users(texts)` give its vectors.

    Loaded with weights_only=True (semid.checkpoint): a pickle that would run code is refused with an InputError.
    """
    state_path = Path(state_path)
    fix = "rebuild the semantic IDs (semid build)"
    payload = load_checkpoint(state_path, what="aligned encoder state", fix=fix)
    if payload.get("format") != 1 or not isinstance(payload.get("encoder"), dict):
        raise InputError("not an aligned encoder state of this version", file=state_path, fix=fix)
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
        encoder,
        train_layers=payload["train_layers"],
        user_max_length=payload["user_max_length"],
        threads=payload.get("threads", 1),
    )
    if aligned.mode != payload["mode"]:
        raise InputError(
            f"the state was trained in mode {payload['mode']!r} but this encoder gives {aligned.mode!r}",
            file=state_path,
            fix="use the encoder model the state was trained with",
        )
    aligned.trainable.load_state_dict(payload["state_dict"])
    aligned.build_meta = dict(payload.get("meta", {}))
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
    item_categories: list[list[str]] | None = None,
) -> AlignResult:
    """Align the encoder with behaviour in `train` (see the module docstring) and embed all items and users.

    `items_text[i]` is item_id i, `users_text[u]` user_id u (from `user_texts`); user targets are recomputed
    from `train` with `next_items`. `images[i]` is item i's image path or None: with an image-capable encoder
    only the heads are trained, on frozen text + image vectors (head mode). `cache` is the embedding cache of
    `semid.encoder.encode`, used in head mode. `cfg.enabled=False` returns the plain encoder vectors, probes
    still computed. `item_categories[i]`: item i's categories (`semid.align.categories.item_categories`), needed
    when cfg.user_category_weight > 0. With cfg.item_stats every item text gets its train popularity word
    (`semid.align.popularity`) before it is encoded.
    """
    started = time.perf_counter()
    items_text, users_text = list(items_text), list(users_text)
    check_inputs(items_text, images)
    check_inputs(users_text, None)
    require_columns(train, [USER, ITEM, LABEL, TIMESTAMP])
    n_items, n_users = len(items_text), len(users_text)
    if train.height and (int(train[ITEM].max()) >= n_items or int(train[USER].max()) >= n_users):
        raise InputError(
            f"ids exceed the {n_items} item / {n_users} user texts given",
            file="train.parquet",
            column=ITEM if int(train[ITEM].max()) >= n_items else USER,
            fix="pass one text per dense id (items.parquet / users.parquet in id order)",
        )
    categories = None
    if cfg.user_category_weight > 0:
        if item_categories is None or len(item_categories) != n_items:
            got = "none" if item_categories is None else f"{len(item_categories)} rows"
            raise InputError(
                f"the user category objective needs the categories of all {n_items} items, got {got}",
                file=ITEMS_FILE,
                column=cfg.category_column,
                fix=CATEGORY_FIX,
            )
        categories = multi_hot(item_categories)[1]  # (N_i, C)
    # dropout draws from torch's global RNG: it is forked, seeded and restored afterwards (no reseeding)
    with seeded(cfg.seed, cfg.threads):
        generator = torch.Generator().manual_seed(cfg.seed)

        pairs = split_pairs(co_engagement_pairs(train, cfg.window), cfg.holdout, generator)
        users = split_users(next_items(train), cfg.holdout, generator)
        counts = torch.bincount(
            train.filter(pl.col(LABEL) == 1)[ITEM].to_torch().long(), minlength=n_items
        )  # (N_i,) positive interactions
        if cfg.item_stats:
            items_text = with_popularity(items_text, popularity_levels(counts))
        train_pairs = sample_pairs(pairs.train, counts, cfg.max_pairs, cfg.popularity_power, generator)
        n_val = max(1, int(cfg.max_pairs * cfg.holdout))
        val_pairs = sample_pairs(pairs.val, counts, n_val, cfg.popularity_power, generator)

        content = ContentEncoder(enc_cfg)
        images = usable_images(content, images)
        aligned = AlignedEncoder(
            content,
            train_layers=cfg.train_layers if cfg.enabled and images is None else 0,
            user_max_length=cfg.user_max_length,
            threads=cfg.threads,
        )
        if (
            aligned.mode == "head"
        ):  # frozen vectors, encoded once (and cached); training touches only the heads

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
                embed_from_store(aligned, store, user_batches, n_items, "user")
                if n_users
                else torch.empty(0, 0),
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
                train_users=pairs_tensor(users.train, USER, NEXT_ITEM),
                val_users=pairs_tensor(users.val, USER, NEXT_ITEM),
                categories=categories,
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
        if module is not None and categories is not None:  # absent when off: default probes stay as they were
            probe["val_category_before"] = module.category_history[0]
            probe["val_category_best"] = module.best_category
        state_path = save_state(aligned, Path(work_dir) / STATE_FILE)
        return AlignResult(item_emb, user_emb, probe, state_path)

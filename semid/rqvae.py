"""RQ-VAE that turns content vectors into hierarchical codes (TIGER, Rajput et al. 2023), on vector-quantize-pytorch.

MLP encoder -> `vector_quantize_pytorch.ResidualVQ` (k-means init, EMA codebooks, dead-code replacement) -> MLP
decoder, trained with Lightning on CPU. We never write a quantizer of our own: codes, code vectors and the
commitment loss come from `ResidualVQ`; this file only chooses its sizes, trains it and saves it.

Reproducible and thread-count invariant: `train_rqvae` runs in `semid.determinism.seeded(cfg.seed, num_threads)`
(torch's RNG forked and seeded for the initialisation and k-means, the caller's state restored; a fixed thread
count, 1 by default), so the same vectors and config give the same codes whatever torch.get_num_threads() is.
Checkpoints load with weights_only=True (semid.checkpoint).
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import lightning as L
import torch
from torch import Tensor, nn
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, TensorDataset
from vector_quantize_pytorch import ResidualVQ

from semid.checkpoint import load_checkpoint, save_checkpoint
from semid.determinism import seeded
from semid.errors import InputError

SAVE_FORMAT = 2

# -- the "auto" codebook rule ----------------------------------------------------------------------------
AUTO_CAPACITY = 512
"""auto aims for prod(sizes) >= 512 * N: a uniform spread would leave <= 1/(2*512) ~ 0.1% collisions, and the
real, clustered spread of ML-1M text embeddings stays under 1% (benchmarks/results/rqvae_sizes.md)."""
AUTO_MULTIPLE = 8
AUTO_MIN, AUTO_MAX = 2, 256
AUTO_MIN_PER_CODE = 8
"""auto never gives a level more codes than N / 8: a code needs a few vectors for k-means and EMA to keep it alive."""


@dataclass
class RQVAEConfig:
    """Everything that decides the codes: the architecture, the quantizer, the optimiser and the seed."""

    levels: int = 3
    codebook_size: int | list[int] | Literal["auto"] = "auto"
    """Codes per level: one size for every level, one per level, or "auto" (see `auto_codebook_sizes`)."""
    latent_dim: int = 32
    hidden_dims: list[int] = field(default_factory=lambda: [256, 128])
    commitment_weight: float = 0.25
    kmeans_init: bool = True
    kmeans_iters: int = 10
    threshold_ema_dead_code: int = 2
    """A code whose EMA cluster size drops below this is replaced by a vector of the current batch."""
    decay: float = 0.99
    lr: float = 1e-3
    batch_size: int = 256
    """Small batches mean more steps, and each step lets dead-code replacement revive unused codes: with 1024 on
    MovieLens-100K (1,682 items) level 0 used 32% of its codes, with 256 all of them (benchmarks/rqvae_sizes.py)."""
    max_epochs: int = 100
    min_level0_utilization: float = 0.5
    """The ID build refuses codes that use less than this fraction of level 0 (a collapsed codebook)."""
    seed: int = 0


class RQVAEOutput(NamedTuple):
    recon: Tensor  # (N, D)
    codes: Tensor  # (N, L) int64
    recon_loss: Tensor  # ()
    commit_loss: Tensor  # () zero in eval mode: ResidualVQ only computes it while training
    loss: Tensor  # ()


def auto_codebook_sizes(n: int, levels: int) -> list[int]:
    """The same size K for every level, the smallest multiple of 8 with K**levels >= 512 * n, within [2, 256].

    K is also capped at n // 8 so that every level-0 code can hold a few vectors. With three levels: ML-1M items
    (3,706) -> 128, users (6,040) -> 152, 100k items -> 376 capped to 256, and 256 from then on (16.7M tuples: for
    millions of entities add a level to keep collisions low -- the dedup suffix keeps IDs unique either way).
    """
    if n < 2:
        raise InputError(f"{n} vectors cannot be quantized", fix="give the RQ-VAE at least 2 vectors")
    k = math.ceil((AUTO_CAPACITY * n) ** (1.0 / levels) - 1e-9)
    k = AUTO_MULTIPLE * math.ceil(k / AUTO_MULTIPLE)
    k = min(k, AUTO_MAX, max(AUTO_MIN, n // AUTO_MIN_PER_CODE))
    return [max(k, AUTO_MIN)] * levels


def resolve_codebook_sizes(cfg: RQVAEConfig, n: int) -> list[int]:
    """Per-level codebook sizes for `n` vectors; InputError if a level asks for more codes than there are vectors."""
    if cfg.levels < 1:
        raise InputError(f"levels={cfg.levels}", column="levels", fix="use levels >= 1")
    if cfg.codebook_size == "auto":
        return auto_codebook_sizes(n, cfg.levels)
    if isinstance(cfg.codebook_size, int):
        sizes = [cfg.codebook_size] * cfg.levels
    else:
        sizes = [int(s) for s in cfg.codebook_size]
    if len(sizes) != cfg.levels:
        raise InputError(
            f"codebook_size lists {len(sizes)} sizes for {cfg.levels} levels",
            column="codebook_size",
            fix=f"give one size per level ({cfg.levels}), a single int, or 'auto'",
        )
    for level, size in enumerate(sizes):
        if size < 2 or size > n:
            raise InputError(
                f"level {level} has codebook_size {size} but there are {n} vectors to quantize"
                if size > n
                else f"level {level} has codebook_size {size}",
                column="codebook_size",
                fix=f"use a codebook_size between 2 and {n} (e.g. {auto_codebook_sizes(n, cfg.levels)[0]}), "
                "or codebook_size: auto",
            )
    return sizes


def _mlp(dims: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(d_in, d_out))
        if i < len(dims) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class RQVAE(nn.Module):
    """MLP encoder -> ResidualVQ -> MLP decoder (TIGER's RQ-VAE). Codes are (N, levels) int64."""

    def __init__(self, *, input_dim: int, codebook_sizes: list[int], cfg: RQVAEConfig):
        super().__init__()
        self.input_dim = input_dim
        self.codebook_sizes = list(codebook_sizes)
        self.cfg = cfg
        self.build_meta: dict[str, Any] = {"codebook_sizes": list(codebook_sizes)}
        self.fit_utilization: list[float] = []
        """Per-level code utilization at the end of training (what the progress bar showed last)."""
        """Facts of the build that trained it (set by `load_rqvae`), for semid.ids.check_same_build."""
        dims = [input_dim, *cfg.hidden_dims, cfg.latent_dim]
        self.encoder = _mlp(dims)
        self.decoder = _mlp(dims[::-1])
        # Content embeddings are anisotropic (all in a narrow cone): centring and scaling them first lets the MLP
        # and k-means see the differences between items instead of the shared direction.
        self.register_buffer("center", torch.zeros(input_dim))  # (D,)
        self.register_buffer("scale", torch.ones(()))
        self.rvq = ResidualVQ(
            dim=cfg.latent_dim,
            num_quantizers=len(codebook_sizes),
            codebook_size=tuple(codebook_sizes),
            commitment_weight=cfg.commitment_weight,
            kmeans_init=cfg.kmeans_init,
            kmeans_iters=cfg.kmeans_iters,
            threshold_ema_dead_code=cfg.threshold_ema_dead_code,
            decay=cfg.decay,
        )

    @property
    def levels(self) -> int:
        return len(self.codebook_sizes)

    @torch.no_grad()
    def fit_standardizer(self, x: Tensor) -> None:
        """Centre on the mean vector and scale so centred vectors have unit RMS norm (stored as buffers)."""
        self.center.copy_(x.mean(0))
        # in chunks: (x - center)^2 at full size would hold two more copies of a catalogue's vectors
        sq = sum(float((c - self.center).pow(2).sum(dtype=torch.float64)) for c in x.split(CHUNK_ROWS))
        self.scale.copy_(torch.tensor(sq / max(len(x), 1)).sqrt().clamp_min(1e-8))

    def standardize(self, x: Tensor) -> Tensor:
        return (x - self.center) / self.scale  # (N, D)

    def forward(self, x: Tensor) -> RQVAEOutput:
        xs = self.standardize(x)  # (N, D)
        z = self.encoder(xs)  # (N, latent)
        quantized, codes, commit = self.rvq(z)  # (N, latent), (N, L), (L,)
        recon_s = self.decoder(quantized)  # (N, D) in standardized units
        # squared error per vector (summed over features): its scale does not shrink with the input dimension
        recon_loss = (recon_s - xs).pow(2).sum(-1).mean()
        commit_loss = commit.sum()
        recon = recon_s * self.scale + self.center  # (N, D)
        return RQVAEOutput(recon, codes.long(), recon_loss, commit_loss, recon_loss + commit_loss)

    @torch.no_grad()
    def init_codebooks(self, x: Tensor) -> None:
        """k-means-initialise every level on `x` (level l on the residuals left by levels < l), no EMA update."""
        was_training = self.training
        self.train()  # ResidualVQ only runs its k-means init in training mode
        self.rvq(self.encoder(self.standardize(x)), freeze_codebook=True)
        self.train(was_training)

    @torch.no_grad()
    def encode(self, x: Tensor, *, batch_size: int = 65536) -> Tensor:
        """Codes (N, L) int64 of `x` (N, D): eval mode, nearest code per level, never updates the codebooks."""
        was_training = self.training
        self.eval()
        codes = [
            self.rvq(self.encoder(self.standardize(chunk)))[1] for chunk in x.split(batch_size)
        ]  # [(n, L)]
        self.train(was_training)
        return torch.cat(codes).long()  # (N, L)

    @torch.no_grad()
    def decode_codes(self, codes: Tensor) -> Tensor:
        """Reconstructions (N, D) from codes (N, L), through ResidualVQ.get_output_from_indices."""
        quantized = self.rvq.get_output_from_indices(codes.long())  # (N, latent)
        return self.decoder(quantized) * self.scale + self.center  # (N, D)


def code_utilization(codes: Tensor, codebook_sizes: list[int]) -> list[float]:
    """Per level: distinct codes used / codebook size, over codes (N, L) -- the `utilization` of semid.ids.health."""
    return [codes[:, level].unique().numel() / size for level, size in enumerate(codebook_sizes)]


class RQVAEModule(L.LightningModule):
    """Trains an RQVAE on (x,) batches; logs the losses and, per epoch, each level's code utilization.

    The utilization is that of the codes `encode(vectors)` gives at the end of the epoch (eval mode, all vectors):
    the quantity the ID build checks afterwards (semid.ids.health / check_health), not the codes of the training
    batches seen while the codebooks were still moving. `utilization` keeps the last epoch's values.
    """

    def __init__(self, model: RQVAE, *, lr: float, vectors: Tensor):
        super().__init__()
        self.model = model
        self.lr = lr
        self.vectors = vectors  # (N, D): every vector, for the end-of-epoch utilization
        self.utilization: list[float] = []

    def training_step(self, batch: tuple[Tensor], batch_idx: int) -> Tensor:
        (x,) = batch
        out = self.model(x)
        self.log_dict(
            {"loss": out.loss, "recon": out.recon_loss, "commit": out.commit_loss},
            prog_bar=True,
            batch_size=len(x),
        )
        return out.loss

    def on_train_epoch_end(self) -> None:
        """Log each level's code utilisation over a seeded sample of at most `KMEANS_INIT_MAX` vectors (encoding
        a 1M catalogue every epoch would cost a fifth of the training time); `on_train_end` measures all."""
        sample = self.vectors
        if len(sample) > KMEANS_INIT_MAX:
            pick = torch.randperm(len(sample), generator=torch.Generator().manual_seed(0))[:KMEANS_INIT_MAX]
            sample = sample[pick]
        util = code_utilization(self.model.encode(sample), self.model.codebook_sizes)
        self.log_dict({f"util_{level}": u for level, u in enumerate(util)}, prog_bar=True)

    def on_train_end(self) -> None:
        self.utilization = code_utilization(self.model.encode(self.vectors), self.model.codebook_sizes)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.model.parameters(), lr=self.lr)


KMEANS_INIT_MAX = 100_000
CHUNK_ROWS = 65_536  # rows per chunk of the whole-catalogue checks and statistics
"""k-means init runs on at most this many vectors (a seeded sample), which bounds its memory for large catalogues."""


def train_rqvae(
    vectors: Tensor, cfg: RQVAEConfig, *, progress_bar: bool = True, num_threads: int | None = 1
) -> RQVAE:
    """Train an RQ-VAE on `vectors` (N, D) on CPU; same cfg and vectors -> identical codes. Returns it in eval mode.

    Training runs on `num_threads` torch threads (restored afterwards; None keeps the current setting). One is the
    default because the model is tiny (batches of 1024 through a few hundred units): on a machine whose cores are
    shared, two OpenMP threads spin-waiting on each other made a 10-epoch ML-1M run 48 s instead of 2 s.
    """
    with seeded(cfg.seed, num_threads):  # torch's RNG forked + seeded (init, k-means), restored afterwards
        return _train(vectors, cfg, progress_bar=progress_bar)


def _train(vectors: Tensor, cfg: RQVAEConfig, *, progress_bar: bool) -> RQVAE:
    if vectors.ndim != 2:
        raise InputError(f"vectors have shape {tuple(vectors.shape)}", fix="pass a 2-d (N, D) tensor")
    x = vectors.detach().float().cpu().contiguous()  # (N, D)
    if not all(bool(torch.isfinite(c).all()) for c in x.split(CHUNK_ROWS)):  # chunks: no N x D mask
        raise InputError("vectors contain NaN or inf", fix="check the encoder output before building IDs")
    sizes = resolve_codebook_sizes(cfg, len(x))
    model = RQVAE(input_dim=x.shape[1], codebook_sizes=sizes, cfg=cfg)
    model.fit_standardizer(x)
    if cfg.kmeans_init:
        sample = torch.randperm(len(x))[:KMEANS_INIT_MAX]  # (min(N, cap),)
        model.init_codebooks(x[sample])
    # whole batches of indices: TensorDataset gathers x[batch] in one op, no per-row Python
    batches = BatchSampler(
        RandomSampler(x, generator=torch.Generator().manual_seed(cfg.seed)), cfg.batch_size, drop_last=False
    )
    loader = DataLoader(TensorDataset(x), sampler=batches, batch_size=None)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=cfg.max_epochs,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=progress_bar,
        num_sanity_val_steps=0,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*number of training batches.*")
        warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # raised inside Lightning itself
        module = RQVAEModule(model, lr=cfg.lr, vectors=x)
        trainer.fit(module, train_dataloaders=loader)
    model.fit_utilization = module.utilization
    return model.eval()


def save_rqvae(
    model: RQVAE, cfg: RQVAEConfig, path: str | Path, *, meta: dict[str, Any] | None = None
) -> None:
    """Write the state dict (codebooks, k-means `initted` flags and EMA buffers included) and the config, atomically.

    `meta`: JSON-ready facts of the build (stage_hash, data_hash, encoder: see semid.ids.BUILD_FACTS); `load_rqvae`
    gives them back as `model.build_meta` so `semid assign` can refuse an ID table of another build.
    """
    payload = {
        "meta": json.loads(json.dumps(meta or {}, sort_keys=True, default=str)),
        "format": SAVE_FORMAT,
        "config": asdict(cfg),
        "input_dim": model.input_dim,
        "codebook_sizes": model.codebook_sizes,
        "state_dict": model.state_dict(),
    }
    save_checkpoint(payload, path)


def load_rqvae(path: str | Path) -> RQVAE:
    """The RQVAE `save_rqvae` wrote, in eval mode; its `encode` gives the codes the saved model gave.

    Loaded with weights_only=True (semid.checkpoint): a pickle that would run code is refused with an InputError.
    """
    fix = "rebuild the semantic IDs (semid build)"
    payload = load_checkpoint(path, what="RQ-VAE checkpoint", fix=fix)
    if payload.get("format") != SAVE_FORMAT:
        raise InputError("not an RQ-VAE checkpoint of this version", file=path, fix=fix)
    cfg = RQVAEConfig(**payload["config"])
    model = RQVAE(input_dim=payload["input_dim"], codebook_sizes=payload["codebook_sizes"], cfg=cfg)
    # strict: a missing `initted` buffer would make the first forward re-run k-means and silently change every code
    model.load_state_dict(payload["state_dict"], strict=True)
    model.build_meta = {**payload.get("meta", {}), "codebook_sizes": list(model.codebook_sizes)}
    return model.eval()

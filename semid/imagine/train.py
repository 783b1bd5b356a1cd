"""Masked discrete-diffusion training of `SIDDiffusion` on users' train sequences (MDLM / LLaDA objective).

Per sequence a ratio t ~ U(min_ratio, 1) is drawn and each real slot is masked with probability t (at least one
per sequence); the loss is the cross-entropy of the masked slots' codes (all levels, teacher-forced prefixes),
weighted 1/t and normalised by the sequence's length, as in LLaDA's eq. 3 (`weighting="none"` drops the 1/t).
A plain loop: one seeded torch.Generator draws masks and batch order; the caller's global RNG is left untouched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from semid.determinism import seeded
from semid.imagine.model import ModelConfig, SIDDiffusion


@dataclass
class TrainConfig:
    epochs: int = 30
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.01
    weighting: Literal["mdlm", "none"] = "mdlm"
    """mdlm: each masked slot's CE weighted 1/t (the ELBO of MDLM / LLaDA); none: unweighted."""
    min_ratio: float = 0.05
    """Lower end of the masking ratio t; keeps the 1/t weight bounded."""
    seed: int = 0
    threads: int = 1
    """Intra-op threads while training (the model is tiny; more threads mostly spin on a shared CPU)."""


class TrainResult(NamedTuple):
    model: SIDDiffusion
    losses: list[float]  # mean training loss of each epoch


def mask_slots(pad: Tensor, ratio_low: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Masked slots (B, T) bool and the ratios t (B,): each real slot is masked with probability t; a sequence
    whose draw masked nothing gets one random real slot masked; pad slots are never masked."""
    b, t_len = pad.shape
    t = ratio_low + (1 - ratio_low) * torch.rand(b, generator=generator)  # (B,)
    masked = (torch.rand(b, t_len, generator=generator) < t[:, None]) & ~pad  # (B, T)
    empty = ~masked.any(1) & (~pad).any(1)  # (B,)
    pick = torch.rand(b, t_len, generator=generator).masked_fill(pad, -1.0).argmax(1)  # (B,)
    masked[empty, pick[empty]] = True
    return masked, t


def diffusion_loss(
    model: SIDDiffusion,
    codes: Tensor,
    pad: Tensor,
    masked: Tensor,
    t: Tensor,
    weighting: Literal["mdlm", "none"] = "mdlm",
) -> Tensor:
    """The masked-slot loss of one batch: codes (B, T, L), pad / masked (B, T), t (B,) -> scalar.

    Only masked slots contribute: sum over them of the CE of every level, times 1/t (mdlm), divided by the
    sequence's real length, averaged over sequences."""
    hidden = model.encode(codes, masked, pad)  # (B, T, d)
    target = codes[masked]  # (M, L)
    logits = model.level_logits(hidden[masked], target)  # [(M, K_l)]
    ce = sum(
        F.cross_entropy(lg, target[:, level], reduction="none") for level, lg in enumerate(logits)
    )  # (M,)
    weight = (1.0 / t if weighting == "mdlm" else torch.ones_like(t)) / (~pad).sum(1).clamp(min=1)  # (B,)
    rows = masked.nonzero()[:, 0]  # (M,) sequence of each masked slot, same order as codes[masked]
    return (ce * weight[rows]).sum() / codes.shape[0]


def fit(
    windows: Tensor, item_codes: Tensor, sizes: list[int], model_cfg: ModelConfig, cfg: TrainConfig
) -> TrainResult:
    """Train a fresh model on `windows` (W, T) item ids (-1 pad) whose codes are `item_codes` (N, L)."""
    with seeded(cfg.seed, cfg.threads):
        model = SIDDiffusion.from_config(model_cfg, sizes)
        generator = torch.Generator().manual_seed(cfg.seed)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        windows = windows[:, : model_cfg.max_len]
        losses = []
        model.train()
        for _ in range(cfg.epochs):
            total, batches = 0.0, 0
            for batch in torch.randperm(len(windows), generator=generator).split(cfg.batch_size):
                items = windows[batch]  # (B, T)
                pad = items < 0
                codes = item_codes[items.clamp(min=0)]  # (B, T, L)
                masked, t = mask_slots(pad, cfg.min_ratio, generator)
                loss = diffusion_loss(model, codes, pad, masked, t, cfg.weighting)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                total, batches = total + loss.item(), batches + 1
            losses.append(total / max(batches, 1))
        model.eval()
    return TrainResult(model, losses)

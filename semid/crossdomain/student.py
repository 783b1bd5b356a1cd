"""The RGCD-Rep student (arXiv 2606.04448): K learnable chorus tokens read an item's text inside the frozen text
encoder; stage 1 distils the teacher's facets into them, stage 2 splits them into a transferable part z_t and a
domain-residual part z_r with a cross-domain contrastive loss and a transferability routing loss.

- Chorus tokens: K vectors prepended to the token states after the embeddings and the first `inject_layer` layers
  (0 = the `inputs_embeds` of the whole stack), then the remaining layers run over [chorus; text] under the text's
  attention mask plus the chorus positions; their outputs are the chorus states (B, K, H). Built only from the
  public ContentEncoder methods `layers`, `lower`, `run_layers`; the encoder stays frozen, gradients reach the
  chorus tokens through it.
- Stage 1, embedding-level distillation (the encoder-only form of the paper's knowledge distillation): a linear
  head over the mean chorus state predicts the frozen encoder's embedding of the teacher's serialised facets
  ("Domain: ... Subject: ... Topic: ..."); loss 1 - cosine.
- Stage 2: two learnable queries attend over the chorus states (one multi-head attention) -> z_t, z_r (unit
  vectors). On a batch of pairs (s, t) with transferability w: InfoNCE (in-batch negatives, both directions) on the
  whole item vector [z_t; z_r]/sqrt(2), and the routing loss BCE(sigmoid((cos_t - cos_r) / tau), w), which moves a
  high-w pair's similarity into z_t and a low-w pair's into z_r. `use_routing=False` is the paper's ablation.
  Stage 1's distillation stays on as a regulariser (`distill_weight`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

from semid.determinism import seeded
from semid.encoder import ContentEncoder, progress_bar
from semid.errors import InputError


@dataclass(frozen=True)
class StudentConfig:
    chorus_tokens: int = 4
    """K learnable tokens prepended to every item text."""
    inject_layer: int = 0
    """Layers run before the chorus tokens join (0 = through inputs_embeds; more is cheaper, since those
    layers then run once without gradients, but the chorus tokens see fewer layers)."""
    dim: int = 64
    """Size of z_t and of z_r."""
    heads: int = 2
    """Attention heads of the query read-out (must divide the encoder's hidden size)."""
    max_length: int = 32
    """Text tokens per item (titles are short)."""
    temperature: float = 0.1
    """InfoNCE temperature."""
    route_temperature: float = 0.1
    """Scale of the similarity gap cos_t - cos_r in the routing loss."""
    use_routing: bool = True
    routing_weight: float = 1.0
    distill_weight: float = 0.1
    """Weight of the stage-1 distillation loss during stage 2."""
    stage1_epochs: int = 2
    stage2_epochs: int = 3
    batch_size: int = 32
    lr: float = 1e-3
    seed: int = 0
    threads: int | None = 1
    """torch intra-op threads while training (semid.determinism.seeded); None keeps the current setting."""


class StudentOutput(NamedTuple):
    chorus: Tensor  # (B, K, H)
    distill: Tensor  # (B, D_teacher) unit vectors
    z_t: Tensor  # (B, dim) unit vectors
    z_r: Tensor  # (B, dim) unit vectors


class Losses(NamedTuple):
    total: Tensor
    contrastive: Tensor
    routing: Tensor
    distill: Tensor


class ChorusStudent(nn.Module):
    """Chorus tokens + distillation head + transferable/residual query read-out over a frozen ContentEncoder."""

    def __init__(self, encoder: ContentEncoder, *, teacher_dim: int, cfg: StudentConfig) -> None:
        super().__init__()
        layers = encoder.layers()
        if layers is None:
            raise InputError(
                f"the RGCD student needs a BERT-style text encoder it can split; {encoder.path} is a "
                f"{encoder.kind} model of type {encoder.model.config.model_type!r}",
                fix="use the default encoder (all-MiniLM-L6-v2) or another BERT/RoBERTa-style folder",
            )
        hidden = encoder.hidden_size
        if not 0 <= cfg.inject_layer < len(layers) or cfg.chorus_tokens < 1 or hidden % cfg.heads:
            raise InputError(
                f"chorus_tokens={cfg.chorus_tokens}, inject_layer={cfg.inject_layer}, heads={cfg.heads} for an "
                f"encoder of {len(layers)} layers and width {hidden}",
                fix="use chorus_tokens >= 1, 0 <= inject_layer < layers, and heads dividing the width",
            )
        self.encoder = encoder  # frozen (ContentEncoder sets requires_grad False)
        self.cfg = cfg
        # small next to the unit-scale (LayerNorm'd) token states, so the chorus states start out reading the text:
        # with MiniLM, chorus states of 6 titles had pairwise cosines 0.40-0.65 at std 0.1, 0.72-0.85 at std 1
        self.chorus = nn.Parameter(torch.randn(cfg.chorus_tokens, hidden) * 0.1)  # (K, H)
        self.distill_head = nn.Linear(hidden, teacher_dim)
        self.queries = nn.Parameter(torch.randn(2, hidden) * hidden**-0.5)  # (2, H): transferable, residual
        self.read = nn.MultiheadAttention(hidden, cfg.heads, batch_first=True)
        self.proj_t = nn.Linear(hidden, cfg.dim)
        self.proj_r = nn.Linear(hidden, cfg.dim)

    def trainable(self) -> list[nn.Parameter]:
        return [p for name, p in self.named_parameters() if not name.startswith("encoder.")]

    def chorus_states(self, texts: list[str]) -> Tensor:
        """(B, K, H) outputs of the chorus tokens after the encoder layers from `inject_layer` on."""
        layers = self.encoder.layers()
        with torch.no_grad():  # nothing trainable before the injection point
            hidden, mask = self.encoder.lower(
                texts, split=self.cfg.inject_layer, max_length=self.cfg.max_length
            )
        batch = hidden.shape[0]
        chorus = self.chorus.unsqueeze(0).expand(batch, -1, -1)  # (B, K, H)
        hidden = torch.cat([chorus, hidden], dim=1)  # (B, K + T, H)
        mask = torch.cat([mask.new_ones(batch, self.cfg.chorus_tokens), mask], dim=1)  # (B, K + T)
        hidden = self.encoder.run_layers(layers[self.cfg.inject_layer :], hidden, mask.long())
        return hidden[:, : self.cfg.chorus_tokens]  # (B, K, H)

    def forward(self, texts: list[str]) -> StudentOutput:
        chorus = self.chorus_states(texts)  # (B, K, H)
        distill = nn.functional.normalize(self.distill_head(chorus.mean(dim=1)), dim=-1)  # (B, D_teacher)
        queries = self.queries.unsqueeze(0).expand(chorus.shape[0], -1, -1)  # (B, 2, H)
        read, _ = self.read(queries, chorus, chorus, need_weights=False)  # (B, 2, H)
        z_t = nn.functional.normalize(self.proj_t(read[:, 0]), dim=-1)  # (B, dim)
        z_r = nn.functional.normalize(self.proj_r(read[:, 1]), dim=-1)  # (B, dim)
        return StudentOutput(chorus=chorus, distill=distill, z_t=z_t, z_r=z_r)


# -- losses (pure functions) ------------------------------------------------------------------------------------


def distill_loss(pred: Tensor, target: Tensor) -> Tensor:
    """1 - cosine between the predicted and the teacher-facet embeddings, averaged: (B, D), (B, D) -> ()."""
    return (1.0 - (pred * nn.functional.normalize(target, dim=-1)).sum(-1)).mean()


def info_nce(a: Tensor, b: Tensor, temperature: float) -> Tensor:
    """Symmetric in-batch InfoNCE between unit vectors a (B, D) and b (B, D): row i of a matches row i of b."""
    logits = a @ b.T / temperature  # (B, B)
    labels = torch.arange(a.shape[0], device=a.device)
    return 0.5 * (nn.functional.cross_entropy(logits, labels) + nn.functional.cross_entropy(logits.T, labels))


def routing_loss(src: StudentOutput, tgt: StudentOutput, w: Tensor, temperature: float) -> Tensor:
    """BCE between sigmoid((cos_t - cos_r) / temperature) and the transferability w (B,): a pair with w = 1 should
    be similar in z_t rather than z_r, a pair with w = 0 the other way round."""
    cos_t = (src.z_t * tgt.z_t).sum(-1)  # (B,)
    cos_r = (src.z_r * tgt.z_r).sum(-1)  # (B,)
    return nn.functional.binary_cross_entropy_with_logits((cos_t - cos_r) / temperature, w.float())


def item_vector(out: StudentOutput) -> Tensor:
    """The whole item as one unit vector [z_t; z_r] / sqrt(2): (B, 2 * dim)."""
    return torch.cat([out.z_t, out.z_r], dim=-1) / math.sqrt(2.0)


def pair_losses(
    src: StudentOutput,
    tgt: StudentOutput,
    w: Tensor,
    cfg: StudentConfig,
    src_target: Tensor | None = None,
    tgt_target: Tensor | None = None,
) -> Losses:
    contrastive = info_nce(item_vector(src), item_vector(tgt), cfg.temperature)
    zero = contrastive.new_zeros(())
    routing = routing_loss(src, tgt, w, cfg.route_temperature) if cfg.use_routing else zero
    distill = zero
    if src_target is not None and tgt_target is not None:
        distill = 0.5 * (distill_loss(src.distill, src_target) + distill_loss(tgt.distill, tgt_target))
    total = contrastive + cfg.routing_weight * routing + cfg.distill_weight * distill
    return Losses(total=total, contrastive=contrastive, routing=routing, distill=distill)


# -- training -----------------------------------------------------------------------------------------------


class History(NamedTuple):
    stage1: list[float]
    """Mean distillation loss per stage-1 epoch."""
    stage2: list[dict[str, float]]
    """Mean losses per stage-2 epoch."""


def _batches(n: int, batch_size: int, generator: torch.Generator) -> list[Tensor]:
    return list(torch.split(torch.randperm(n, generator=generator), batch_size))


def train_student(
    student: ChorusStudent,
    texts: list[str],
    facet_targets: Tensor,
    pairs: Tensor,
    transfer: Tensor,
    *,
    progress: bool = False,
    on_step: Callable[[str, float], None] | None = None,
) -> History:
    """Stage 1 over the items, then stage 2 over the pairs.

    texts: N item texts; facet_targets: (N, D_teacher) encoder embeddings of their serialised facets; pairs:
    (P, 2) row indices into texts (source, target); transfer: (P,) teacher transferability in [0, 1]. Runs inside
    `seeded(cfg.seed, cfg.threads)`: the caller's RNG state is left as it was."""
    cfg = student.cfg
    if len(texts) != facet_targets.shape[0] or pairs.shape[0] != transfer.shape[0]:
        raise ValueError("texts/facet_targets or pairs/transfer lengths differ")
    with seeded(cfg.seed, cfg.threads):
        generator = torch.Generator().manual_seed(cfg.seed)
        student.train()
        student.encoder.eval()  # frozen: no dropout in the encoder
        stage1: list[float] = []
        opt = torch.optim.AdamW([student.chorus, *student.distill_head.parameters()], lr=cfg.lr)
        for epoch in range(cfg.stage1_epochs):
            total = 0.0
            batches = _batches(len(texts), cfg.batch_size, generator)
            for rows in progress_bar(batches, progress, f"rgcd stage 1 epoch {epoch}"):
                idx = rows.tolist()
                out = student([texts[i] for i in idx])
                loss = distill_loss(out.distill, facet_targets[rows])
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += loss.item() * len(idx)
                if on_step is not None:
                    on_step("stage1", loss.item())
            stage1.append(total / max(len(texts), 1))
        stage2: list[dict[str, float]] = []
        opt = torch.optim.AdamW(student.trainable(), lr=cfg.lr)
        for epoch in range(cfg.stage2_epochs):
            sums = dict.fromkeys(Losses._fields, 0.0)
            batches = [b for b in _batches(pairs.shape[0], cfg.batch_size, generator) if len(b) > 1]
            seen = 0
            for rows in progress_bar(batches, progress, f"rgcd stage 2 epoch {epoch}"):
                src_rows, tgt_rows = pairs[rows, 0], pairs[rows, 1]  # (b,), (b,)
                both = student([texts[i] for i in torch.cat([src_rows, tgt_rows]).tolist()])
                b = len(rows)
                src = StudentOutput(*(t[:b] for t in both))
                tgt = StudentOutput(*(t[b:] for t in both))
                losses = pair_losses(
                    src, tgt, transfer[rows], cfg, facet_targets[src_rows], facet_targets[tgt_rows]
                )
                opt.zero_grad()
                losses.total.backward()
                opt.step()
                for name, value in zip(Losses._fields, losses):
                    sums[name] += value.item() * b
                seen += b
                if on_step is not None:
                    on_step("stage2", losses.total.item())
            stage2.append({name: value / max(seen, 1) for name, value in sums.items()})
        student.eval()
    return History(stage1=stage1, stage2=stage2)


@torch.inference_mode()
def embed(
    student: ChorusStudent, texts: list[str], *, batch_size: int = 128, progress: bool = False
) -> StudentOutput:
    """z_t, z_r (and the other outputs) of every text, in input order, in eval mode."""
    student.eval()
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths batch together
    parts: list[StudentOutput] = []
    chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    for chunk in progress_bar(chunks, progress, f"rgcd embed {len(texts)}"):
        parts.append(student([texts[i] for i in chunk]))
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order, dtype=torch.long)] = torch.arange(len(order))
    return StudentOutput(*(torch.cat([getattr(p, f) for p in parts])[inverse] for f in StudentOutput._fields))

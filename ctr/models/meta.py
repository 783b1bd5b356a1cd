"""LLM4MSR hierarchical meta layers (Wang et al., CIKM'24) around any field-embedding backbone: knowledge vectors
(one per user, one per scenario) generate low-rank weights W = W0 + A(k) B(k) of small layers.

- user level, at the bottom: every input field embedding e_f (d) becomes e_f + e_f (W0 + A(k_u) B(k_u)), a
  personalised transform, before the backbone's head sees it;
- scenario level, in parallel: an MLP over the (transformed) flat fields whose layers use W0 + A(k_s) B(k_s);
  its output is added to the backbone's logit.
B(k)'s generator and the last layer's W0 start at zero, so at init the wrapped model gives exactly the backbone's
logits; training moves it away. Knowledge `source`: `llm` / `prompt_text` = frozen vectors from
`user_vectors.parquet` / `scenario_vectors.parquet` (semid.knowledge.msr); `learned` = trainable user / scenario
embeddings of the same size through the same path (the capacity control).

A backbone is usable when it follows `FieldNet` (`embed(batch) -> (B, F, d)`, `head(fields, batch) ->
ModelOutput`): STAR, DeepFM and every DeepFM subclass (DIN, POSO, SIDFeatures, ContentFeatures, AIRNet) do.
The scenario of a sample is `batch.scenario` (data option `scenarios`); their number is the DataSpec's.
Shapes: B = batch, F = fields, d = embedding dim, D = F * d, K = knowledge dim, h = meta_dim, r = rank, S = scenarios.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor, nn

from ctr.batch import Batch, DataSpec, ModelOutput
from ctr.layers import squared_norm
from ctr.scenario import n_scenarios, scenario_of
from semid.errors import InputError
from semid.knowledge import msr

KnowledgeSource = Literal["llm", "learned", "prompt_text"]


@runtime_checkable
class FieldNet(Protocol):
    def embed(self, batch: Batch) -> Tensor: ...  # (B, F, d) input field embeddings

    def head(self, fields: Tensor, batch: Batch) -> ModelOutput: ...  # fields (B, F, d) -> the output


def as_field_net(net: nn.Module) -> nn.Module:
    if isinstance(net, FieldNet):
        return net
    raise InputError(
        f"the backbone {type(net).__name__} does not expose its input fields (embed / head)",
        fix="use a backbone with embed(batch) and head(fields, batch) (STAR, DeepFM and its subclasses)",
    )


class Knowledge(nn.Module):
    """Rows of knowledge vectors -> (N_rows, h) meta codes: frozen standardised vectors (llm, prompt_text) or a
    trainable table of the same size (learned), then one trainable projection."""

    def __init__(
        self,
        vectors: np.ndarray | None,
        n: int,
        dim: int,
        meta_dim: int,
        *,
        learned: bool,
        components: int | None = None,
    ):
        super().__init__()
        self.table: nn.Embedding | None = None
        self.explained: float | None = None  # the variance share the kept components hold (frozen, reduced)
        if components is not None and not 1 <= components <= dim:
            raise InputError(
                f"components={components} for {dim}-d vectors", fix=f"set components in 1..{dim}"
            )
        if learned:
            dim = dim if components is None else components
            self.table = nn.Embedding(n, dim)  # N(0, 1) rows: the scale of the standardised vectors
            self.register_buffer("frozen", torch.zeros(0, dim))
        else:
            v = torch.from_numpy(np.asarray(vectors, dtype=np.float32))  # (n, K)
            # standardised once per row (hidden states have a few huge dimensions), stored with the checkpoint
            v = (v - v.mean(1, keepdim=True)) / v.std(1, keepdim=True).clamp_min(1e-6)
            if components is not None:
                v, self.explained = principal_components(v, components)
            self.register_buffer("frozen", v)
            dim = v.shape[1]
        self.proj = nn.Linear(dim, meta_dim)
        self.act = nn.Tanh()

    def forward(self, rows: Tensor | None = None) -> Tensor:
        """rows (R,) -> (R, h); None = every row. Each step projects every row of the batch: the projection trains,
        so no projected table can be cached, and torch.unique saves nothing when almost every user of a batch is
        distinct (950 of 1024 in the benchmark)."""
        if self.table is not None:
            k = self.table.weight if rows is None else self.table(rows)  # (R, K)
        else:
            # index_select, not frozen[rows]: the same rows, a quarter of the time on CPU (advanced indexing)
            k = self.frozen if rows is None else self.frozen.index_select(0, rows)  # (R, K)
        return self.act(self.proj(k))  # (R, h)


def principal_components(v: Tensor, k: int) -> tuple[Tensor, float]:
    """v (n, K) -> its scores on the top k principal directions, each scaled to unit variance (n, k), and the share
    of v's variance those directions hold. A fixed map computed once from the frozen table (covariance
    eigendecomposition in float64); the trainable projection then reads k numbers per row instead of K: the gather
    and the projection cost k / K of the full width. k in 1..K (Knowledge checks it)."""
    x = v.double()
    x = x - x.mean(0, keepdim=True)
    cov = x.T @ x / max(x.shape[0] - 1, 1)  # (K, K)
    values, vectors = torch.linalg.eigh(cov)  # ascending
    values, vectors = values.flip(0)[:k].clamp_min(1e-12), vectors.flip(1)[:, :k]
    scores = (x @ vectors) / values.sqrt()  # (n, k), whitened
    return scores.float(), float(values.sum() / cov.trace().clamp_min(1e-12))


class MetaLinear(nn.Module):
    """y = x W0 + b0 + (x A(z)) B(z), A(z): (in, r), B(z): (r, out) generated from a meta code z (h).

    `zero=True` starts W0 and b0 at zero too (the last layer of a parallel tower: output exactly 0 at init).
    Codes are given per sample (z (B, h), x (B, ..., in)) or per group with each sample's group index
    (z (G, h), group (B,), x (B, in)).
    Neither path builds a per-sample (in, out) matrix: x goes through A then B (rank r is small). The grouped path
    multiplies x by every group's A in one matmul and keeps each sample's own group with a 0/1 mask before one
    matmul by the stacked B's: no per-sample gather of B (whose backward is a slow scatter) and no batched matmul
    of B tiny matrices (one CPU thread, batch 1024, 128 -> 64 layer, forward + backward: 4.8 -> 1.7 ms).
    Measured and kept out (one CPU thread, batch 1024; numbers in benchmarks/results/msr_overhead.md): per-sample
    broadcast multiply + sum instead of bmm (4x slower: inner dims of r = 4 or d = 16 do not vectorise), einsum
    (the same bmm), a batch-last layout (its transposes cost what it saves), expanding x A(z) into shared matmuls
    over (z, 1) (17x larger intermediates: 3-7x slower), one matmul for both generators, and x [W0 | A] as one
    matmul in the grouped path (no gain, within noise).
    """

    def __init__(self, in_dim: int, out_dim: int, meta_dim: int, rank: int, *, zero: bool = False):
        super().__init__()
        base = nn.Linear(in_dim, out_dim)
        self.weight = nn.Parameter(base.weight.detach().t().clone() * (0.0 if zero else 1.0))  # (in, out)
        self.bias = nn.Parameter(base.bias.detach().clone() * (0.0 if zero else 1.0))  # (out,)
        self.gen_a = nn.Linear(meta_dim, in_dim * rank)
        self.gen_b = nn.Linear(meta_dim, rank * out_dim)
        nn.init.zeros_(self.gen_b.weight)  # B(z) = 0: W = W0 at init; gen_b gets gradients through A(z)
        nn.init.zeros_(self.gen_b.bias)
        self.in_dim, self.out_dim, self.rank = in_dim, out_dim, rank

    def forward(self, x: Tensor, z: Tensor, group: Tensor | None = None) -> Tensor:
        if group is None:
            return self._per_sample(x, z)
        return self._per_group(x, z, group)

    def _per_sample(self, x: Tensor, z: Tensor) -> Tensor:
        """x (B, ..., in), z (B, h): one code per sample, shared by its middle positions (fields)."""
        a = self.gen_a(z).view(-1, self.in_dim, self.rank)  # (B, in, r)
        b = self.gen_b(z).view(-1, self.rank, self.out_dim)  # (B, r, out)
        x3 = x.reshape(x.shape[0], -1, self.in_dim)  # (B, N, in): N = the middle positions, 1 when none
        base = torch.addmm(self.bias, x3.reshape(-1, self.in_dim), self.weight)  # (B*N, out)
        y = torch.baddbmm(base.view(x3.shape[0], -1, self.out_dim), torch.bmm(x3, a), b)  # (B, N, out)
        return y.view(*x.shape[:-1], self.out_dim)  # (B, ..., out)

    def _per_group(self, x: Tensor, z: Tensor, group: Tensor) -> Tensor:
        """x (B, in), z (G, h), group (B,): G (scenarios) is small."""
        g = z.shape[0]
        a = self.gen_a(z).view(g, self.in_dim, self.rank)  # (G, in, r)
        a = a.permute(1, 0, 2).reshape(self.in_dim, g * self.rank)  # (in, G*r): column g*r + k = A_g[:, k]
        b = self.gen_b(z).view(g * self.rank, self.out_dim)  # (G, r, out) -> (G*r, out): row g*r + k = B_g[k]
        codes = torch.arange(g, device=x.device).repeat_interleave(self.rank)  # (G*r,) the group of a column
        own = (group.unsqueeze(1) == codes).to(x.dtype)  # (B, G*r): 1 on the sample's own group's columns
        xa = (x @ a) * own  # (B, G*r): x A_g for every group, the other groups' zeroed
        return torch.addmm(torch.addmm(self.bias, x, self.weight), xa, b)  # (B, out) = x W0 + b0 + x A_s B_s


class MetaLayers(nn.Module):
    """Args:
    backbone: builds the wrapped network from the DataSpec (`{class_path: ctr.models.star.STAR, ...}` in YAML).
    source: where the knowledge comes from: llm | prompt_text (frozen vectors from the files) | learned.
    user_vectors, scenario_vectors: `user_vectors.parquet` / `scenario_vectors.parquet` (semid.knowledge.msr).
    use_user_level, use_scenario_level: switch each meta level (both off = the backbone alone).
    knowledge_dim: K of the learned tables; None = the dimension of the vector files (the same capacity).
    user_components: keep only the top principal components of the frozen user vectors, whitened (None = all K
        dimensions); a learned user table gets this width too. Cuts the user level's gather and projection
        (the largest part of its cost per step on CPU) by K / components; `benchmarks/msr_overhead.py` measures it.
    meta_dim: h, the meta code every generator reads; rank: r of A(k) B(k).
    scenario_dims: hidden layers of the scenario-level tower (its output layer has one unit).
    """

    def __init__(
        self,
        spec: DataSpec,
        *,
        backbone: Callable[[DataSpec], nn.Module],
        source: KnowledgeSource = "llm",
        user_vectors: str | None = None,
        scenario_vectors: str | None = None,
        use_user_level: bool = True,
        use_scenario_level: bool = True,
        knowledge_dim: int | None = None,
        user_components: int | None = None,
        meta_dim: int = 16,
        rank: int = 4,
        scenario_dims: Sequence[int] = (64,),
    ):
        super().__init__()
        if source not in ("llm", "learned", "prompt_text"):
            raise InputError(f"source={source!r}", fix="set source to llm, learned or prompt_text")
        self.backbone = as_field_net(backbone(spec))
        self.use_user_level, self.use_scenario_level = use_user_level, use_scenario_level
        with torch.no_grad():  # field count and width, from a one-row probe
            f, d = _field_shape(self.backbone, spec)
        learned = source == "learned"
        self.user_knowledge: Knowledge | None = None
        self.scenario_knowledge: Knowledge | None = None
        if use_user_level:
            vectors, dim = _vectors(user_vectors, "user", spec.n_users, learned, knowledge_dim)
            self.user_knowledge = Knowledge(
                vectors, spec.n_users, dim, meta_dim, learned=learned, components=user_components
            )
            self.user_layer = MetaLinear(d, d, meta_dim, rank, zero=True)  # e + e (W0 + A B), W0 from 0
        if use_scenario_level:
            n_s = n_scenarios(spec, type(self).__name__)
            vectors, dim = _vectors(scenario_vectors, "scenario", n_s, learned, knowledge_dim)
            self.scenario_knowledge = Knowledge(vectors, n_s, dim, meta_dim, learned=learned)
            dims = [f * d, *scenario_dims]
            self.tower = nn.ModuleList(MetaLinear(i, o, meta_dim, rank) for i, o in zip(dims, dims[1:]))
            self.tower_out = MetaLinear(dims[-1], 1, meta_dim, rank, zero=True)
            self.act = nn.ReLU()

    def forward(self, batch: Batch) -> ModelOutput:
        e = self.backbone.embed(batch)  # (B, F, d)
        fields = e
        if self.user_knowledge is not None:
            z = self.user_knowledge(batch.user)  # (B, h)
            fields = e + self.user_layer(e, z)  # (B, F, d): one generated (d, d) transform per user
        out = self.backbone.head(fields, batch)
        logit, aux = out.logit, dict(out.aux)
        if self.scenario_knowledge is not None:
            s = scenario_of(batch)  # (B,)
            z = self.scenario_knowledge()  # (S, h)
            h = fields.flatten(1)  # (B, D)
            for layer in self.tower:
                h = self.act(layer(h, z, s))  # (B, hidden)
            meta = self.tower_out(h, z, s).squeeze(-1)  # (B,)
            logit = logit + meta
            aux["meta_logit_abs"] = meta.detach().abs().mean()
        return ModelOutput(logit, out.aux_loss, aux, squared_norm(e))


def _field_shape(net: nn.Module, spec: DataSpec) -> tuple[int, int]:
    """(F, d) of the backbone's fields, from a one-row dummy batch (padding ids, zero counts)."""
    z = torch.zeros(1, dtype=torch.long)
    batch = Batch(
        user=z,
        item=z,
        label=torch.zeros(1),
        user_sid=torch.zeros(1, len(spec.user_sid_sizes), dtype=torch.long),
        item_sid=torch.zeros(1, len(spec.item_sid_sizes), dtype=torch.long),
        user_count=torch.zeros(1),
        item_count=torch.zeros(1),
        user_feats=torch.zeros(1, len(spec.user_feature_vocab), 1, dtype=torch.long),
        item_feats=torch.zeros(1, len(spec.item_feature_vocab), 1, dtype=torch.long),
        hist_item=torch.zeros(1, spec.history_len, dtype=torch.long),
        hist_item_sid=torch.zeros(1, spec.history_len, len(spec.item_sid_sizes), dtype=torch.long),
        hist_item_count=torch.zeros(1, spec.history_len),
        user_bucket=z,
        item_bucket=z,
        user_content=torch.zeros(1, spec.user_content_dim),
        item_content=torch.zeros(1, spec.item_content_dim),
        scenario=z if spec.n_scenarios else torch.zeros(0, dtype=torch.long),
    )
    was = net.training
    net.eval()
    shape = net.embed(batch).shape
    net.train(was)
    return int(shape[1]), int(shape[2])


def _vectors(
    path: str | None, kind: Literal["user", "scenario"], n: int, learned: bool, knowledge_dim: int | None
) -> tuple[np.ndarray | None, int]:
    """The frozen vectors (None when learned) and K."""
    if learned:
        if knowledge_dim is not None:
            return None, knowledge_dim
        if path is None:
            raise InputError(
                f"source learned needs knowledge_dim or {kind}_vectors (whose width it copies)",
                fix=f"set knowledge_dim, or {kind}_vectors to the LLM arm's file",
            )
        return None, int(msr.read_vectors(path, kind=kind, n=n)[1]["dim"])
    if path is None:
        raise InputError(
            f"the {kind}-level meta layer needs {kind}_vectors",
            fix=f"set {kind}_vectors to <run>/{msr.USER_VECTORS_FILE if kind == 'user' else msr.SCENARIO_VECTORS_FILE}"
            f", set source: learned, or use_{kind}_level: false",
        )
    vectors, _ = msr.read_vectors(path, kind=kind, n=n)
    return vectors, vectors.shape[1]

"""STAR (Sheng et al., CIKM'21, "One Model to Serve All"): a star-topology FCN whose every layer multiplies the
shared weights element-wise by the sample's scenario weights, partitioned normalisation, and an auxiliary network
on the scenario indicator; the standard multi-scenario baseline.

logit = FCN_s(PN_s(flat(e))) + Aux([emb(s), flat(e)]), where for scenario s each layer is
W_s = W_shared * W_s', b_s = b_shared + b_s' (W_s' starts at ones, b_s' at zeros: every scenario starts shared).

The network exposes `embed(batch) -> (B, F, d)` and `head(fields, batch) -> ModelOutput` (the `FieldNet`
protocol of ctr/models/meta.py), so the user-level meta layer can transform its input fields.
Shapes: B = batch, F = fields, d = embedding dim, S = scenarios, D = F * d.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ctr.batch import Batch, DataSpec, ModelOutput
from ctr.layers import MLP, Dropout, FieldEmbedding, squared_norm
from ctr.scenario import n_scenarios, scenario_of


class PartitionedNorm(nn.Module):
    """z' = (g * g_s) (z - mean_s) / sqrt(var_s + eps) + (b + b_s).

    Training normalises each scenario's rows with that scenario's statistics in the batch (STAR trains on
    single-scenario batches; with mixed batches this keeps the scenarios apart) and updates its running
    statistics; evaluation uses the scenario's running statistics.
    """

    def __init__(self, dim: int, n_scenarios: int, *, momentum: float = 0.1, eps: float = 1e-5):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))
        self.beta = nn.Parameter(torch.zeros(dim))
        self.gamma_s = nn.Parameter(torch.ones(n_scenarios, dim))
        self.beta_s = nn.Parameter(torch.zeros(n_scenarios, dim))
        self.register_buffer("running_mean", torch.zeros(n_scenarios, dim))
        self.register_buffer("running_var", torch.ones(n_scenarios, dim))
        self.momentum, self.eps, self.n_scenarios = momentum, eps, n_scenarios

    def forward(self, z: Tensor, s: Tensor) -> Tensor:
        if self.training:
            count = torch.zeros(self.n_scenarios, 1, device=z.device, dtype=z.dtype)
            count = count.index_add(0, s, torch.ones_like(z[:, :1]))  # (S, 1)
            mean = torch.zeros_like(self.running_mean).index_add(0, s, z) / count.clamp_min(1)  # (S, D)
            sq = torch.zeros_like(self.running_var).index_add(0, s, (z - mean[s]).pow(2))  # (S, D)
            var = sq / count.clamp_min(1)  # (S, D) biased, as BatchNorm normalises
            with torch.no_grad():
                seen = count > 1  # (S, 1): scenarios with statistics in this batch
                unbiased = sq / (count - 1).clamp_min(1)
                m = self.momentum
                self.running_mean.copy_(
                    torch.where(seen, (1 - m) * self.running_mean + m * mean, self.running_mean)
                )
                self.running_var.copy_(
                    torch.where(seen, (1 - m) * self.running_var + m * unbiased, self.running_var)
                )
        else:
            mean, var = self.running_mean, self.running_var
        normed = (z - mean[s]) * torch.rsqrt(var[s] + self.eps)  # (B, D)
        return normed * (self.gamma * self.gamma_s[s]) + (self.beta + self.beta_s[s])  # (B, D)


class StarLinear(nn.Module):
    """y = x (W * W_s) + (b + b_s) with the sample's scenario s: (B, in) -> (B, out)."""

    def __init__(self, in_dim: int, out_dim: int, n_scenarios: int):
        super().__init__()
        shared = nn.Linear(in_dim, out_dim)  # torch's init for the shared weights
        self.weight = nn.Parameter(shared.weight.detach().t().clone())  # (in, out)
        self.bias = nn.Parameter(shared.bias.detach().clone())  # (out,)
        self.weight_s = nn.Parameter(torch.ones(n_scenarios, in_dim, out_dim))
        self.bias_s = nn.Parameter(torch.zeros(n_scenarios, out_dim))

    def forward(self, x: Tensor, s: Tensor) -> Tensor:
        w = self.weight * self.weight_s  # (S, in, out)
        y = torch.einsum("bi,sio->bso", x, w)  # (B, S, out): every scenario's output, S is small
        y = y.gather(1, s.view(-1, 1, 1).expand(-1, 1, y.shape[-1])).squeeze(1)  # (B, out)
        return y + self.bias + self.bias_s[s]


class STAR(nn.Module):
    """The scenario of a sample is `batch.scenario` (data option `scenarios`); their number is the DataSpec's.

    Args:
    embed_dim, mlp_dims, dropout: the field embeddings and the star FCN's hidden layers.
    aux_dims: hidden layers of the auxiliary network (scenario embedding + fields -> one logit).
    """

    def __init__(
        self,
        spec: DataSpec,
        *,
        embed_dim: int = 16,
        mlp_dims: Sequence[int] = (256, 128),
        aux_dims: Sequence[int] = (64,),
        dropout: float = 0.1,
    ):
        super().__init__()
        self.spec = spec
        n_s = n_scenarios(spec, type(self).__name__)
        self.fields = FieldEmbedding(spec, embed_dim)
        dim = self.fields.n_fields * embed_dim
        self.norm = PartitionedNorm(dim, n_s)
        self.layers = nn.ModuleList()
        for hidden in mlp_dims:
            self.layers.append(StarLinear(dim, hidden, n_s))
            dim = hidden
        self.out = StarLinear(dim, 1, n_s)
        self.act = nn.ReLU()
        self.dropout = Dropout(dropout)
        self.scenario_embed = nn.Embedding(n_s, embed_dim)
        self.aux = MLP(embed_dim + self.fields.n_fields * embed_dim, aux_dims, dropout=dropout, out_dim=1)

    def embed(self, batch: Batch) -> Tensor:
        return self.fields(batch)  # (B, F, d)

    def head(self, fields: Tensor, batch: Batch) -> ModelOutput:
        s = scenario_of(batch)  # (B,)
        flat = fields.flatten(1)  # (B, F, d) -> (B, D)
        h = self.norm(flat, s)  # (B, D)
        for layer in self.layers:
            h = self.dropout(self.act(layer(h, s)))  # (B, hidden)
        star = self.out(h, s).squeeze(-1)  # (B,)
        aux = self.aux(torch.cat([self.scenario_embed(s), flat], 1)).squeeze(-1)  # (B, d + D) -> (B,)
        logit = star + aux  # (B,)
        return ModelOutput(logit, logit.new_zeros(()), {}, squared_norm(fields))

    def forward(self, batch: Batch) -> ModelOutput:
        return self.head(self.embed(batch), batch)

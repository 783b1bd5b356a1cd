"""AKT-Rec v2: cluster-guided adaptive embeddings, an instance and a cluster view of the history, and asymmetric
head -> tail transfer (Alibaba, arXiv 2605.23310), plus the changes our ML-1M diagnosis calls for (issue 14).

The paper's text is not reachable here; its formulas come from third-party notes. Read top to bottom; B = batch,
H = history length, d = `embed_dim`, k = `cluster_depth`. Per id space (users, items), for an id e with SID
codes c_1..c_L and train count n_e:

  activity      a_e = log(1 + n_e) / log(1 + n_max)                                                  in [0, 1]
  cluster       c_e = sum_{l<=k} E_l[c_1..c_l]            k = 1: the first-level SID, as in the paper     (B, d)
  individual    v_e = E[e] + sum_{l>k} E_l[c_1..c_l]      deep prefixes are per-id in practice [ours]     (B, d)
                v_e = 0 where n_e = 0 (no trained row), or f(x_e) with the content tower [ours]
  gate          e   = c_e + gamma(a_e) v_e,  gamma = 2 sigmoid(w . [a, 1{a=0}] + b), w = b = 0
                      (gate_mode="residual" [ours]: starts as the SIDFeatures sum)
                e   = g v_e + (1 - g) c_e,   g = sigmoid(6 a - 3 + MLP([a, v, c]))   (gate_mode="convex", paper)
  orthogonality L_orth = mean_e cos^2(c_e, v_e) over users and items with a trained individual row

  history content [ours, optional] e_item += K x_item and e_h += K x_h for every history item h, one linear map
                K (no bias) of the frozen aligned content vectors: a tail or cold history item, whose ID rows have
                seen few or no clicks, then still says what it is to both views below (history_content).
                Off by default: validation rejects it on Amazon Kitchen and ties it on ML-1M, although Amazon's
                test tail-item GAUC rises +0.24 to +0.41 (benchmarks/results/akt_history_content.md).

  instance view s_I = DIN attention of e_item over the history's adaptive embeddings                     (B, d)
                s_I = mean_{h real} e_h   (instance_pool="mean" [ours]: DeepFM's / SIDFeatures' history field)
  cluster view  S   = {h in history : c_1..c_k(h) = c_1..c_k(item)}   (SIM hard search)
                s_C = mean_{h in S} e_h  (or attention over S; a learned vector z where S is empty)     (B, d)
  view fusion   beta = sigmoid(w . [a_u, a_i, a_u a_i] + b)  (1/2 at init);  s = beta s_I + (1 - beta) s_C
  prediction    fields = [e_user, e_item, user features, item features, s]                          (B, F, d)
                (content_fields [ours]: + W_u x_user + b_u, W_i x_item + b_i, the frozen aligned content
                vectors projected to d, as ContentFeatures feeds them)
                logit = b0 + FM(fields) + MLP(flatten(fields))
                (first_order [ours]: + DeepFM's first-order term, a learned bias per user id, item id and
                feature token and the history's mean item bias; an id presented cold drops its bias)

  transfer      per side, over the unique ids of the batch grouped by their level-1..k cluster:
                c_head,k / c_tail,k = mean of e over the head / non-head ids of cluster k (clusters with both)
                L_trans = lambda_h2t InfoNCE(c_tail, sg(c_head)) + lambda_t2h InfoNCE(c_head, sg(c_tail))
                The first term pulls tail ids (and the cluster rows they share with the head, the only part a
                cold id has) towards their cluster's head centroid: it is the head -> tail direction and gets
                the larger weight. With lambda_t2h = 0 no head row receives any gradient from L_trans.
                "head" = the data's head bucket, or n_e >= `head_min_count` when set.
                Off by default (use_transfer = False) [ours]: at its tuned weights (lambda_h2t = 0.01,
                lambda_t2h = 0.001; at 0.1 / 0.01 it cost 0.7-0.8 pt validation GAUC, benchmarks/results/
                akt_ml1m_transfer.md) removing it raised test GAUC by 0.28 pt on ML-1M and 0.18 pt on Amazon
                Kitchen (3 seeds each, CIs above 0) and validation on both (benchmarks/results/akt_ablations.md).
                Tuning may turn it on (ctr.tune).
  cold path     [ours, DropoutNet] in training, each sample's user and item independently, with probability
                p_cold, is presented as cold: n_e := 0 (so v_e := 0, a_e := 0, bucket := cold), which trains the
                gate, the fusion and the cluster rows for the cold case that no train row otherwise shows.
  content tower [ours, optional, Meta-Embedding / CVAR style] f(x_item) = MLP(item content vector) predicts
                sg(v_item) on head items, L_content = mean ||f(x) - sg(v)||^2, and stands in for v_item where
                n_item = 0 for the target item (a cold history item keeps v = 0; history_content gives it K x_h).
                Needs content vectors in the Batch (DataSpec.item_content_dim > 0).

  new ids       [ours] `admit`: before a new item's first trained update (ctr.warmup) its row is set so that
                v_item = f(x_item) (or 0), the value it had while cold.

  loss = BCE + lambda_orth L_orth + L_trans,item + L_trans,user + lambda_content L_content  (+ L2 from CTRTask)

Deviations from the paper, each switchable: the residual gate (gate_mode), deep prefixes in the individual part
(deep_prefixes), zeroed individual rows and cold-path dropout (p_cold), the content tower (content_tower), the
content vectors as input fields (content_fields: the paper feeds content only through the semantic IDs), the content
vectors added to the target's and the history items' embeddings (history_content; needs data.history_content), no
transfer loss (use_transfer). The paper's ablations: use_cluster, use_individual, use_instance_view, use_cluster_view,
use_gate, lambda_orth = 0, and its transfer loss turned on (use_transfer), with lambda_t2h = lambda_h2t (no
asymmetry); ours: use_view_gate (beta fixed at 1/2), p_cold = 0, instance_pool = "mean", first_order.

Logged in ModelOutput.aux: gate means per bucket ("gate/item_tail", "gate/user_cold", ...; buckets as presented,
so dropped samples count as cold), the instance-view weight beta per item and user bucket ("views/instance_item_
tail", ...), the share of samples whose cluster set is non-empty ("views/cluster_hit"), and every loss term.
A plain nn.Module built from the DataSpec; `ctr.module.CTRTask` trains it.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor, nn

from ctr.batch import Batch, DataSpec, ModelOutput
from ctr.layers import (
    HEAD_BUCKET,
    MLP,
    AdaptiveEmbedding,
    ClusterGuidedEmbedding,
    ClusterView,
    FeatureBags,
    FieldEmbedding,
    FMInteraction,
    TargetAttention,
    ViewFusion,
    activity,
    asymmetric_transfer,
    cluster_key,
    first_occurrence,
    masked_mean,
    orthogonality,
    squared_norm,
)
from semid.errors import InputError
from semid.schema import BUCKETS

COLD_BUCKET = BUCKETS.index("cold")


def bucket_means(values: Tensor, bucket: Tensor, prefix: str) -> dict[str, Tensor]:
    """Mean of values (B,) per activity bucket (NaN for an empty bucket), as named scalars."""
    values = values.detach().float().reshape(-1)  # (B,)
    sums = values.new_zeros(len(BUCKETS)).index_add_(0, bucket, values)  # (4,)
    counts = values.new_zeros(len(BUCKETS)).index_add_(0, bucket, torch.ones_like(values))  # (4,)
    means = sums / counts  # (4,), NaN where empty
    return {f"{prefix}{name}": means[i] for i, name in enumerate(BUCKETS)}


class AKT(nn.Module):
    def __init__(
        self,
        spec: DataSpec,
        *,
        cluster_depth: int = 1,
        lambda_orth: float = 0.01,
        use_instance_view: bool = True,
        use_cluster_view: bool = True,
        use_view_gate: bool = True,
        instance_pool: Literal["attention", "mean"] = "attention",
        first_order: bool = False,
        cluster_pool: Literal["mean", "attention"] = "mean",
        attention_dims: tuple[int, ...] = (32,),
        use_transfer: bool = False,
        lambda_h2t: float = 0.01,
        lambda_t2h: float = 0.001,
        tau: float = 0.2,
        head_min_count: float | None = None,
        p_cold: float = 0.1,
        content_tower: bool = False,
        content_fields: bool = False,
        content_dims: tuple[int, ...] = (64,),
        history_content: bool = False,
        lambda_content: float = 0.1,
        max_prefix_rows: int = 1 << 20,
        embed_dim: int = 16,
        mlp_dims: tuple[int, ...] = (256, 128),
        dropout: float = 0.1,
        batch_norm: bool = False,
        **embedding: Any,
    ):
        """`embedding`: the options of the two `ctr.layers.ClusterGuidedEmbedding`s (deep_prefixes, use_cluster,
        use_individual, use_gate, gate_mode); `batch_norm`: BatchNorm after every hidden layer of the prediction MLP,
        as DeepFM's option (torch-rechub's MLP); the rest is described in the module docstring."""
        super().__init__()
        if not 0.0 <= p_cold < 1.0:
            raise InputError(
                f"p_cold={p_cold} is not a probability in [0, 1)", fix="set model.net.p_cold in [0, 1)"
            )
        if content_tower and spec.item_content_dim <= 0:
            raise InputError(
                "content_tower=True needs the items' content vectors and the data loaded none",
                fix="load content vectors in the data config, or set model.net.content_tower: false",
            )
        if content_fields and spec.user_content_dim <= 0 and spec.item_content_dim <= 0:
            raise InputError(
                "content_fields=True needs content vectors and the data loaded none",
                fix="load content vectors in the data config, or set model.net.content_fields: false",
            )
        levels = min(len(spec.user_sid_sizes), len(spec.item_sid_sizes))
        if not 1 <= cluster_depth <= levels:
            raise InputError(
                f"cluster_depth={cluster_depth} is outside 1..{levels} (the semantic-ID levels of the data)",
                fix=f"set model.net.cluster_depth between 1 and {levels} (the paper uses 1)",
            )
        self.spec, d = spec, embed_dim
        self.k = cluster_depth

        def id_embedding(
            side: str, n: int, sid_sizes: tuple[int, ...], count_max: float
        ) -> ClusterGuidedEmbedding:
            return ClusterGuidedEmbedding(
                n, sid_sizes, d, count_max=count_max, cluster_depth=cluster_depth, max_rows=max_prefix_rows,
                side=side, **embedding,
            )  # fmt: skip

        self.user_emb = id_embedding("user", spec.n_users, spec.user_sid_sizes, spec.user_count_max)
        self.item_emb = id_embedding("item", spec.n_items, spec.item_sid_sizes, spec.item_count_max)
        self.user_feats = FeatureBags(spec.user_feature_vocab, d)
        self.item_feats = FeatureBags(spec.item_feature_vocab, d)

        if instance_pool not in ("attention", "mean"):
            raise InputError(
                f"instance_pool={instance_pool!r} is not one of 'attention', 'mean'",
                fix="set model.net.instance_pool to attention (the paper's) or mean",
            )
        self.use_instance_view = use_instance_view
        self.instance = (
            TargetAttention(d, hidden=attention_dims)
            if use_instance_view and instance_pool == "attention"
            else None
        )  # None with instance_pool="mean": the masked mean has no parameters
        self.cluster_view = (
            ClusterView(d, depth=cluster_depth, pool=cluster_pool, attention_dims=attention_dims)
            if use_cluster_view
            else None
        )
        self.fusion = ViewFusion() if use_view_gate and use_instance_view and use_cluster_view else None
        has_history = use_instance_view or use_cluster_view
        self.user_proj = (
            nn.Linear(spec.user_content_dim, d) if content_fields and spec.user_content_dim > 0 else None
        )
        self.item_proj = (
            nn.Linear(spec.item_content_dim, d) if content_fields and spec.item_content_dim > 0 else None
        )
        n_content = int(self.user_proj is not None) + int(self.item_proj is not None)
        n_fields = (
            2 + len(spec.user_feature_vocab) + len(spec.item_feature_vocab) + int(has_history) + n_content
        )
        self.fm = FMInteraction()
        self.mlp = MLP(n_fields * d, mlp_dims, dropout=dropout, out_dim=1, batch_norm=batch_norm)
        self.bias = nn.Parameter(torch.zeros(()))
        self.first_order = FieldEmbedding(spec, 1) if first_order else None

        self.use_orth = lambda_orth > 0 and self.item_emb.use_cluster and self.item_emb.use_individual
        self.lambda_orth = lambda_orth
        self.use_transfer = use_transfer
        self.lambda_h2t, self.lambda_t2h, self.tau = lambda_h2t, lambda_t2h, tau
        self.head_min_count = head_min_count
        self.p_cold = p_cold
        self.content = MLP(spec.item_content_dim, content_dims, out_dim=d) if content_tower else None
        if history_content and not spec.history_content:
            raise InputError(
                "history_content=True needs the history items' content vectors and the batches carry none",
                fix="set data.history_content: true (with data.item_content), or model.net.history_content: false",
            )
        self.content_key = nn.Linear(spec.item_content_dim, d, bias=False) if history_content else None
        self.lambda_content = lambda_content

    # -- cold path -----------------------------------------------------------------------------------------
    def present(self, count: Tensor, bucket: Tensor) -> tuple[Tensor, Tensor]:
        """Training only: each warm sample shown as cold with probability p_cold (count 0, bucket cold)."""
        if not self.training or self.p_cold == 0:
            return count, bucket
        drop = (torch.rand(count.shape, device=count.device) < self.p_cold) & (count > 0)  # (B,)
        return torch.where(drop, 0.0, count), torch.where(drop, COLD_BUCKET, bucket)

    # -- asymmetric transfer -------------------------------------------------------------------------------
    def transfer(
        self,
        ids: Tensor,
        out: AdaptiveEmbedding,
        codes: Tensor,
        sizes: tuple[int, ...],
        count: Tensor,
        bucket: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """L_trans of one side over its unique (id, presented-cold) pairs; returns (loss, h2t)."""
        key = ids * 2 + (count == 0).long()  # (B,) a dropped sample is another point than the warm id
        _, pos = first_occurrence(key)  # (N,) one sample of each
        is_head = (
            bucket[pos] == HEAD_BUCKET if self.head_min_count is None else count[pos] >= self.head_min_count
        )
        res = asymmetric_transfer(
            out.e[pos],
            cluster_key(codes[pos], sizes, self.k),
            is_head,
            lambda_h2t=self.lambda_h2t,
            lambda_t2h=self.lambda_t2h,
            tau=self.tau,
        )
        return res.loss, res.h2t

    # -- new ids -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def admit(self, batch: Batch) -> None:
        """Warm start [ours, Meta-Embedding's use of its generator]: the batch's target items are new ids about to
        get their first trained rows (`ctr.warmup`). Each one's individual part is set to what it was while cold,
        f(x_item) with the content tower, else 0, so the first reveal continues from the cold prediction instead
        of the row's random init (which no train row ever moved). With first_order, its bias starts at 0."""
        value = (
            self.content(batch.item_content)
            if self.content is not None
            else torch.zeros(batch.item.shape[0], self.item_emb.dim, device=batch.item.device)
        )  # (B, d)
        self.item_emb.admit(batch.item + 1, batch.item_sid, value)
        if self.first_order is not None:
            self.first_order.item.weight[batch.item + 1] = 0.0  # the bias it had while cold (dropped)

    # -- content tower -------------------------------------------------------------------------------------
    def fallback(self, content: Tensor, count: Tensor, bucket: Tensor) -> Tensor | None:
        """f(x_item) (B, d) on the rows that use it, 0 on the others; None without the content tower.

        f(x) stands in for v where the presented count is 0 and, in training, is fitted to v on the head rows
        (L_content); every other row would only be multiplied by 0. So the tower runs on those rows alone, which
        gives the same values and gradients as running it on the whole batch: in training the head and the
        presented-cold rows (about half of benchmarks/akt_profile.py's batches), in evaluation the cold items'.
        """
        if self.content is None:
            return None
        need = count == 0  # (B,) v := f(x)
        if self.training:
            need |= bucket == HEAD_BUCKET  # (B,) L_content's rows (a superset: dropped head rows are cold)
        rows = need.nonzero().squeeze(1)  # (N,)
        # always run (also on N = 0 rows): the tower's parameters then get zero gradients, not None, exactly
        # as from the whole batch, so the optimiser's step (momentum, weight decay) is unchanged
        f = self.content(content.index_select(0, rows))  # (N, D_i) -> (N, d)
        return f.new_zeros(content.shape[0], f.shape[-1]).index_copy(0, rows, f)  # (B, d)

    # -- forward -------------------------------------------------------------------------------------------
    def forward(self, batch: Batch) -> ModelOutput:
        spec = self.spec
        user_count, user_bucket = self.present(batch.user_count, batch.user_bucket)  # (B,), (B,)
        item_count, item_bucket = self.present(batch.item_count, batch.item_bucket)  # (B,), (B,)
        fallback = self.fallback(batch.item_content, item_count, batch.item_bucket)  # (B, d) or None
        user = self.user_emb(batch.user + 1, batch.user_sid, user_count)  # e, v, c: (B, d)
        # the targets' e, v, c (B, d) and the history's e (B, H, d): one lookup over the targets and the
        # history's distinct items
        item, hist = self.item_emb.with_history(
            batch.item + 1, batch.item_sid, item_count,
            batch.hist_item, batch.hist_item_sid, batch.hist_item_count, fallback=fallback,
        )  # fmt: skip
        item_e = item.e  # (B, d)
        if self.content_key is not None:
            if batch.hist_content_index.shape != batch.hist_item.shape:
                raise InputError(
                    "AKT(history_content=True) got a batch without the history items' content vectors",
                    fix="serve them: data.history_content: true (CTRDataModule), or history_content=True where"
                    " batches are built by hand",
                )
            item_e = item_e + self.content_key(batch.item_content)  # (B, d)
            keys = self.content_key(batch.hist_content)  # (U, D_i) -> (U, d), once per distinct history item
            hist = hist + keys.index_select(0, batch.hist_content_index.reshape(-1)).view_as(
                hist
            )  # (B, H, d)
        user_feats = self.user_feats(batch.user_feats)  # (B, F_u, d)
        item_feats = self.item_feats(batch.item_feats)  # (B, F_i, d)
        a_user = activity(user_count, spec.user_count_max)  # (B,)
        a_item = activity(item_count, spec.item_count_max)  # (B,)
        aux: dict[str, Tensor] = {}

        # two views of the history
        mask = batch.hist_item > 0  # (B, H)
        views = []
        if self.use_instance_view:
            views.append(
                self.instance(hist, item_e, mask) if self.instance is not None else masked_mean(hist, mask)
            )  # (B, d)
        if self.cluster_view is not None:
            s_c, same = self.cluster_view(hist, batch.hist_item_sid, mask, item_e, batch.item_sid)  # (B, d)
            views.append(s_c)
            aux["views/cluster_hit"] = same.any(1).float().mean()
        if self.fusion is not None:
            s, beta = self.fusion(a_user, a_item, views[0], views[1])  # (B, d), (B,)
            aux |= bucket_means(beta, item_bucket, "views/instance_item_")
            aux |= bucket_means(beta, user_bucket, "views/instance_user_")
            views = [s]
        elif len(views) == 2:
            views = [0.5 * (views[0] + views[1])]  # use_view_gate=False: the views weighted equally

        content = []
        if self.user_proj is not None:
            content.append(self.user_proj(batch.user_content)[:, None])  # (B, D_u) -> (B, 1, d)
        if self.item_proj is not None:
            content.append(self.item_proj(batch.item_content)[:, None])  # (B, D_i) -> (B, 1, d)
        fields = torch.cat(
            [
                torch.stack([user.e, item_e], 1),
                user_feats,
                item_feats,
                *(v[:, None] for v in views),
                *content,
            ],
            1,
        )  # (B, F, d)
        logit = self.bias + self.fm(fields) + self.mlp(fields.flatten(1)).squeeze(-1)  # (B, F, d) -> (B,)
        if self.first_order is not None:
            first = self.first_order(batch).squeeze(-1)  # (B, F1): user, item, features..., history mean
            warm = torch.stack([user_count > 0, item_count > 0], 1).to(first.dtype)  # (B, 2)
            logit = logit + (first[:, :2] * warm).sum(1) + first[:, 2:].sum(1)  # (B,)

        if item.gate is not None:
            aux |= bucket_means(item.gate.mean(-1), item_bucket, "gate/item_")
            aux |= bucket_means(user.gate.mean(-1), user_bucket, "gate/user_")

        aux_loss = logit.new_zeros(())
        if self.training and self.use_orth:
            orth = orthogonality(
                torch.cat([user.cluster, item.cluster]),
                torch.cat([user.individual, item.individual]),
                torch.cat([user_count, item_count]) > 0,
            )
            aux["orth"] = orth.detach()
            aux_loss = aux_loss + self.lambda_orth * orth
        if self.training and self.use_transfer:
            loss_i, aux["trans_item"] = self.transfer(
                batch.item, item, batch.item_sid, spec.item_sid_sizes, item_count, item_bucket
            )
            loss_u, aux["trans_user"] = self.transfer(
                batch.user, user, batch.user_sid, spec.user_sid_sizes, user_count, user_bucket
            )
            aux_loss = aux_loss + loss_i + loss_u
        if self.training and self.content is not None:
            head = (batch.item_bucket == HEAD_BUCKET) & (item_count > 0)  # (B,) trained rows, not dropped
            err = (fallback - item.individual.detach()).pow(2).sum(-1)  # (B,) v is the trained row where head
            content = (err * head).sum() / head.sum().clamp_min(1)
            aux["content"] = content.detach()
            aux_loss = aux_loss + self.lambda_content * content
        embed_sq = squared_norm(
            user.individual, item.individual, user.cluster, item.cluster, user_feats, item_feats
        )
        return ModelOutput(logit, aux_loss, aux, embed_sq)

"""AKT-Rec: asymmetric head -> tail knowledge transfer over semantic-ID clusters (Alibaba, arXiv 2605.23310).

The paper gives the components at abstract level; these are the equations implemented here. For an id e (user or
item) with semantic-ID codes c_1..c_L and train count n_e:

  activity        a_e = log(1 + n_e) / log(1 + n_max)                                          in [0, 1]
  individual      v_e = E[e]
  cluster         u_e = sum_{l<=D} E_l[prefix_l(e)] (D = `cluster_depths`, default all; one table per prefix depth,
                                                     `SIDPrefixEmbedding`; a depth's
                                                     rows: min(codes product, max_prefix_rows, 16 n), hashed)
  gate            g_e = sigmoid(k a_e + b + MLP([a_e, v_e, u_e]))     k = 6, b = -3, MLP output 0 at init
  adaptive        e   = g_e v_e + (1 - g_e) u_e       (use_gate=False: e = v_e + u_e; use_cluster=False: e = v_e)

  The gate is a scalar per id by default (`gate_mode="vector"`: one per dimension); at init a cold id takes
  ~95% of its representation from its cluster and a head id ~95% from itself.

  asymmetric contrast (use_asymmetry), per side, over the unique ids of the batch:
                  p_k <- m p_k + (1 - m) mean{v_e : e head, k(e) = k}       (no gradient, head ids only)
                  L_cl = sum_{e not head} (1 - a_e) CE(cos(v_e, sg(p_j))_{j in K_b} / tau, k(e)) / #anchors
  k(e) = the level-1..`proto_depth` SID prefix; "head" = the data's head bucket, or n_e >= `head_min_count`
  when set. Head rows of E receive no gradient from L_cl and non-head ids never move a prototype.

  views (hierarchical feature aggregation), each flattened into its own tower -> h_v (view_dim):
                  ID view:        [e_user, e_item, user features, item features]
                  semantic view:  [u_user, u_item, E_l[prefix_l(user)] for all l, E_l[prefix_l(item)] for all l]
                  history view:   [s, e_item, s * e_item],  s = DIN target attention of e_item over the history's
                                  adaptive embeddings (their activity from a buffer of the train counts seen)
  fusion (use_fusion)
                  alpha = softmax(MLP([a_user, a_item, B[bucket_user], B[bucket_item]]))   (uniform at init)
                  logit = b0 + FM(ID-view fields) + head(sum_v alpha_v h_v)          (fusion_mode="sum")
                  logit = b0 + FM(ID-view fields) + head([V alpha_v h_v]_v)         (fusion_mode="concat")
  "sum" is a convex mix of the views (the head sees one view_dim vector); "concat" rescales each view by its
  weight (x V: identity at init) and lets the head model interactions across views.
  use_fusion=False: logit = b0 + FM(ID-view fields) + MLP(concat of the three flattened views).

  loss = BCE + lambda_cl * (L_cl,item + L_cl,user)   (+ embedding L2 from CTRTask)

Ablations flip `use_cluster`, `use_gate`, `use_asymmetry`, `use_fusion` (all True = full AKT-Rec). Gate means per
activity bucket ("gate/item_tail", ...) and fusion weights ("fusion/history", "fusion/history_item_tail", ...) are
returned in ModelOutput.aux for logging.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from ctr.batch import Batch, DataSpec
from ctr.layers import (
    HEAD_BUCKET,
    MLP,
    AdaptiveEmbedding,
    ClusterGuidedEmbedding,
    FeatureBags,
    FMInteraction,
    PrototypeContrast,
    TargetAttention,
    activity,
    first_occurrence,
    squared_norm,
)
from ctr.module import CTRTask, ModelOutput
from semid.schema import BUCKETS

VIEWS = ("id", "semantic", "history")


def bucket_means(values: Tensor, bucket: Tensor, prefix: str) -> dict[str, Tensor]:
    """Mean of values (B,) or (B, V) per activity bucket (NaN for an empty bucket), as named scalars."""
    values = values.detach().float().reshape(bucket.shape[0], -1)  # (B, V)
    sums = values.new_zeros(len(BUCKETS), values.shape[1]).index_add_(0, bucket, values)  # (4, V)
    counts = values.new_zeros(len(BUCKETS)).index_add_(0, bucket, values.new_ones(bucket.shape[0]))  # (4,)
    means = sums / counts.unsqueeze(1)  # (4, V), NaN where empty
    return {
        f"{prefix}{name}": means[i] if means.shape[1] > 1 else means[i, 0] for i, name in enumerate(BUCKETS)
    }


class AKT(CTRTask):
    def __init__(
        self,
        spec: DataSpec | None = None,
        *,
        embed_dim: int = 16,
        view_dim: int = 64,
        tower_dims: tuple[int, ...] = (128,),
        head_dims: tuple[int, ...] = (64,),
        dropout: float = 0.1,
        use_cluster: bool = True,
        use_gate: bool = True,
        use_asymmetry: bool = True,
        use_fusion: bool = True,
        fusion_mode: Literal["sum", "concat"] = "sum",
        gate_mode: Literal["scalar", "vector"] = "scalar",
        cluster_depths: int | None = None,
        lambda_cl: float = 0.1,
        tau: float = 0.2,
        proto_momentum: float = 0.9,
        proto_depth: int = 1,
        head_min_count: float | None = None,
        attention_dims: tuple[int, ...] = (32,),
        bucket_dim: int = 8,
        fusion_hidden: int = 32,
        max_prefix_rows: int = 1 << 20,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        embedding_l2: float = 0.0,
        sparse_embeddings: bool = False,
    ):
        super().__init__(
            spec,
            lr=lr,
            weight_decay=weight_decay,
            embedding_l2=embedding_l2,
            sparse_embeddings=sparse_embeddings,
        )
        spec, d = self.spec, embed_dim
        common = dict(
            use_cluster=use_cluster,
            use_gate=use_gate,
            gate_mode=gate_mode,
            cluster_depths=cluster_depths,
            max_rows=max_prefix_rows,
            sparse=sparse_embeddings,
        )
        self.user_emb = ClusterGuidedEmbedding(
            spec.n_users, spec.user_sid_sizes, d, count_max=spec.user_count_max, **common
        )
        self.item_emb = ClusterGuidedEmbedding(
            spec.n_items, spec.item_sid_sizes, d, count_max=spec.item_count_max, **common
        )
        self.user_feats = FeatureBags(spec.user_feature_vocab, d, sparse=sparse_embeddings)
        self.item_feats = FeatureBags(spec.item_feature_vocab, d, sparse=sparse_embeddings)
        self.attention = TargetAttention(d, hidden=attention_dims)
        # train count of every item seen as a target so far: the activity of history items (persisted)
        self.register_buffer("item_count_seen", torch.zeros(spec.n_items + 1))

        n_id = 2 + len(spec.user_feature_vocab) + len(spec.item_feature_vocab)
        n_sem = 2 + len(spec.user_sid_sizes) + len(spec.item_sid_sizes)
        widths = (n_id * d, n_sem * d, 3 * d)
        self.fm = FMInteraction()
        self.bias = nn.Parameter(torch.zeros(()))
        self.use_fusion = use_fusion
        self.fusion_mode = fusion_mode
        if use_fusion:
            self.towers = nn.ModuleList(MLP(w, tower_dims, dropout=dropout, out_dim=view_dim) for w in widths)
            self.buckets = nn.Embedding(len(BUCKETS), bucket_dim)
            self.fusion = MLP(2 + 2 * bucket_dim, (fusion_hidden,), out_dim=len(VIEWS))
            nn.init.zeros_(self.fusion[-1].weight)  # alpha uniform at init
            nn.init.zeros_(self.fusion[-1].bias)
            head_in = view_dim * (len(VIEWS) if fusion_mode == "concat" else 1)
            self.head = MLP(head_in, head_dims, dropout=dropout, out_dim=1)
        else:
            self.joint = MLP(sum(widths), (*tower_dims, *head_dims), dropout=dropout, out_dim=1)

        self.use_asymmetry = use_asymmetry
        self.lambda_cl = lambda_cl
        self.head_min_count = head_min_count
        if use_asymmetry:
            self.user_depth = min(proto_depth, len(spec.user_sid_sizes)) - 1
            self.item_depth = min(proto_depth, len(spec.item_sid_sizes)) - 1
            opts = dict(momentum=proto_momentum, tau=tau)
            self.user_protos = PrototypeContrast(self.user_emb.prefix.rows[self.user_depth], d, **opts)
            self.item_protos = PrototypeContrast(self.item_emb.prefix.rows[self.item_depth], d, **opts)

    # -- asymmetric contrast -------------------------------------------------------------------------------
    def contrast(
        self,
        protos: PrototypeContrast,
        emb: ClusterGuidedEmbedding,
        depth: int,
        ids: Tensor,
        out: AdaptiveEmbedding,
        codes: Tensor,
        count: Tensor,
        bucket: Tensor,
        count_max: float,
    ) -> Tensor:
        """L_cl of one side over the unique ids of the batch; updates the prototypes from head ids."""
        _, pos = first_occurrence(ids)  # (N,)
        v = out.v[pos]  # (N, d), gradient flows to the anchors' rows only through the loss below
        cluster = emb.prefix.prefix_index(codes[pos])[:, depth]  # (N, L) -> (N,)
        is_head = (
            bucket[pos] == HEAD_BUCKET if self.head_min_count is None else count[pos] >= self.head_min_count
        )
        loss = protos.loss(v, cluster, 1.0 - activity(count[pos], count_max), ~is_head)
        protos.update(v, cluster, is_head)
        return loss

    # -- forward -------------------------------------------------------------------------------------------
    def forward(self, batch: Batch) -> ModelOutput:
        spec = self.spec
        if self.training:
            with torch.no_grad():
                seen = self.item_count_seen
                seen.scatter_reduce_(0, batch.item + 1, batch.item_count.float(), reduce="amax")
        user = self.user_emb(batch.user + 1, batch.user_sid, batch.user_count)  # e, v, u: (B, d)
        item = self.item_emb(batch.item + 1, batch.item_sid, batch.item_count)  # e, v, u: (B, d)
        hist_count = self.item_count_seen[batch.hist_item]  # (B, H)
        hist = self.item_emb(batch.hist_item, batch.hist_item_sid, hist_count)  # e, v, u: (B, H, d)
        user_feats = self.user_feats(batch.user_feats)  # (B, F_u, d)
        item_feats = self.item_feats(batch.item_feats)  # (B, F_i, d)

        ids = torch.stack([user.e, item.e], 1)  # (B, 2, d)
        id_fields = torch.cat([ids, user_feats, item_feats], 1)  # (B, 2 + F_u + F_i, d)
        clusters = torch.stack([user.u, item.u], 1)  # (B, 2, d)
        sem_fields = torch.cat([clusters, user.prefixes, item.prefixes], 1)  # (B, 2 + L_u + L_i, d)
        pooled = self.attention(hist.e, item.e, batch.hist_item > 0)  # (B, d)
        hist_fields = torch.stack([pooled, item.e, pooled * item.e], 1)  # (B, 3, d)
        views = [f.flatten(1) for f in (id_fields, sem_fields, hist_fields)]  # (B, fields * d) each

        a_user = activity(batch.user_count, spec.user_count_max)  # (B,)
        a_item = activity(batch.item_count, spec.item_count_max)  # (B,)
        aux: dict[str, Tensor] = {}
        if self.use_fusion:
            h = torch.stack([tower(x) for tower, x in zip(self.towers, views)], 1)  # (B, V, view_dim)
            bucket_emb = self.buckets(torch.stack([batch.user_bucket, batch.item_bucket], 1))  # (B, 2, bd)
            cond = torch.cat([a_user[:, None], a_item[:, None], bucket_emb.flatten(1)], -1)  # (B, 2 + 2 bd)
            alpha = torch.softmax(self.fusion(cond), -1)  # (B, V)
            if self.fusion_mode == "concat":
                mixed = (alpha.unsqueeze(-1) * h * len(VIEWS)).flatten(1)  # (B, V * view_dim)
            else:
                mixed = torch.einsum("bv,bvd->bd", alpha, h)  # (B, view_dim)
            deep = self.head(mixed).squeeze(-1)  # (B,)
            for i, view in enumerate(VIEWS):
                aux[f"fusion/{view}"] = alpha[:, i].detach().mean()
                aux |= bucket_means(alpha[:, i], batch.item_bucket, f"fusion/{view}_item_")
        else:
            deep = self.joint(torch.cat(views, -1)).squeeze(-1)  # (B, sum widths) -> (B,)
        logit = self.bias + self.fm(id_fields) + deep  # (B,)

        if item.gate is not None:
            aux |= bucket_means(item.gate.mean(-1), batch.item_bucket, "gate/item_")
            aux |= bucket_means(user.gate.mean(-1), batch.user_bucket, "gate/user_")

        aux_loss = logit.new_zeros(())
        if self.use_asymmetry and self.training:
            cl_item = self.contrast(
                self.item_protos, self.item_emb, self.item_depth, batch.item, item, batch.item_sid,
                batch.item_count, batch.item_bucket, spec.item_count_max,
            )  # fmt: skip
            cl_user = self.contrast(
                self.user_protos, self.user_emb, self.user_depth, batch.user, user, batch.user_sid,
                batch.user_count, batch.user_bucket, spec.user_count_max,
            )  # fmt: skip
            aux["cl_item"], aux["cl_user"] = cl_item.detach(), cl_user.detach()
            aux_loss = self.lambda_cl * (cl_item + cl_user)
        embed_sq = None
        if self.embedding_l2 > 0:
            embed_sq = squared_norm(user.v, item.v, user.prefixes, item.prefixes, user_feats, item_feats)
        return ModelOutput(logit, aux_loss, aux, embed_sq)

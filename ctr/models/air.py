"""The online AIR intent view (Kuaishou KDD'26, arXiv 2606.10357): a user's recent events merge into one weighted
intent tree, target-aware top-down retrieval picks the intent chains closest to the candidate item, and multi-head
attention with the target over those chains (plus their supporting events) gives one intent vector per sample.

No LLM online: the per-item intent paths come pre-materialised from intents.parquet (semid.intents); a forward
pass is index lookups, a sort of the user's own T = H * P * D node slots (so its cost does not grow with the
vocabulary size N), D top-k steps and one attention, all batched (the only Python loop is over the D levels).

Tree (N nodes, node 0 = padding, a node is a full path prefix so its parent is fixed):
- merge: an event with weight w = type_weights[type] * decay ** age (age 0 = most recent) adds w once to every
  node of its paths (a node on two paths of one event counts once); W[b, n] = summed weight, 0 = absent;
- retrieval (target_aware): level by level, the `beam` present nodes most similar to the target among the children
  of the nodes kept one level up; the kept nodes without a kept child end chains; the `top_k` chains with the
  highest mean node similarity are the tokens (chain = mean of its node embeddings, + its supporting events'
  embeddings when given), with log W as an attention bias;
- switches: target_aware=False pools every chain end (tree) / every node (flat) by W, no retrieval or attention;
  tree=False treats the nodes as a flat intent list: top_k nodes by similarity at any level, no top-down constraint.

`AIRNet` is the CTR model: DeepFM with the intent vector as one more field, the target being the candidate's item id
embedding and the supporting events the history's item id embeddings; `batch.hist_type` (a merged source-domain
history, data option `source_history`) picks each event's type weight.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ctr.batch import Batch, DataSpec
from ctr.models.deepfm import DeepFM
from ctr.models.sid_features import SIDFeatures
from semid.errors import InputError
from semid.intents import IntentTable, chains, read_intents


class HasItems(Protocol):
    n_items: int


class Tree(NamedTuple):
    """A batch of merged intent trees over the users' own nodes (T = H * P * D slots, independent of N)."""

    nodes: Tensor  # (B, T) int64 node ids of every (event, path, level) slot, sorted per row (pads first)
    first: Tensor  # (B, T) bool the first slot of each distinct real node: the tree's nodes
    weight: Tensor  # (B, T) float W of the node at its first slot (summed event weights), 0 elsewhere
    events: Tensor  # (B, H, P * D) int64 node ids per event (for the supporting-event lookup)
    event_weight: Tensor  # (B, H) float weight per event


class Retrieved(NamedTuple):
    nodes: Tensor  # (B, k) int64 retrieved chain-end (tree) or node (flat) ids, 0 where fewer were found
    valid: Tensor  # (B, k) bool
    weight: Tensor  # (B, k) float W of those nodes


class IntentView(nn.Module):
    """forward(hist_item (B, H), target (B, target_dim)) -> (B, dim) intent vector."""

    def __init__(
        self,
        spec: HasItems,
        *,
        intents: str | Path | IntentTable,
        dim: int = 32,
        target_dim: int | None = None,
        event_dim: int = 0,
        top_k: int = 4,
        beam: int = 4,
        heads: int = 2,
        decay: float = 0.9,
        type_weights: tuple[float, ...] = (1.0,),
        target_aware: bool = True,
        tree: bool = True,
    ) -> None:
        """
        Args:
            spec: the data facts (DataSpec); only n_items is read.
            intents: the intents.parquet path (read by semid.intents.read_intents) or its IntentTable.
            dim: the view's width (node embeddings, attention, output).
            target_dim: width of the target item embedding (default: dim).
            event_dim: width of optional per-event embeddings passed to forward (0 = none).
            top_k: chains (tree) / nodes (flat) attended over.
            beam: nodes kept per level in the top-down retrieval.
            heads: attention heads (dim must divide by it).
            decay: order decay per step back in the history, in (0, 1].
            type_weights: weight of an event per behaviour type id (hist_type indexes it).
            target_aware: False = pool all chain ends / nodes by weight, no retrieval.
            tree: False = a flat intent list (no top-down constraint, single-node tokens).
        """
        super().__init__()
        table = intents if isinstance(intents, IntentTable) else read_intents(intents, n_items=spec.n_items)
        if table.item_nodes.shape[0] != spec.n_items:
            raise InputError(
                f"the intent table covers {table.item_nodes.shape[0]} items, the data {spec.n_items}",
                fix="build the intents from the prepared dataset the model trains on",
            )
        if dim % heads:
            raise InputError(f"dim {dim} is not divisible by heads {heads}", fix="pick heads dividing dim")
        if not 0 < decay <= 1:
            raise InputError(f"decay {decay} outside (0, 1]", fix="use a decay in (0, 1]")
        if top_k < 1 or beam < 1 or not type_weights:
            raise InputError("top_k, beam and type_weights must be positive", fix="set top_k, beam >= 1")
        self.dim, self.heads, self.top_k, self.beam = dim, heads, top_k, beam
        self.decay, self.target_aware, self.tree = decay, target_aware, tree
        n_nodes = len(table.names)  # N + 1 with the pad
        self.depth = table.item_nodes.shape[2]
        # Derived from intents.parquet at construction (not saved in checkpoints): row 0 = the history pad.
        pad = torch.zeros((1, *table.item_nodes.shape[1:]), dtype=torch.long)
        nodes = torch.cat([pad, torch.from_numpy(table.item_nodes)])  # (n_items + 1, P, D)
        self.register_buffer("item_nodes", nodes, persistent=False)
        self.register_buffer("parent", torch.from_numpy(table.parent), persistent=False)  # (N + 1,)
        self.register_buffer("node_level", torch.from_numpy(table.level), persistent=False)  # (N + 1,)
        self.register_buffer("chain", torch.from_numpy(chains(table)), persistent=False)  # (N + 1, D)
        self.register_buffer(
            "type_weights", torch.tensor(type_weights, dtype=torch.float32), persistent=False
        )
        self.node_emb = nn.Embedding(n_nodes, dim, padding_idx=0)
        nn.init.normal_(self.node_emb.weight, std=0.05)
        with torch.no_grad():
            self.node_emb.weight[0].zero_()
        self.target_proj = nn.Linear(target_dim or dim, dim)
        self.event_proj = nn.Linear(event_dim, dim) if event_dim else None
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)
        self.null = nn.Parameter(torch.zeros(1, 1, dim))  # always attendable: a user without intents gets it
        self.out = nn.Linear(dim, dim)

    # -- the tree -----------------------------------------------------------------------------------------

    def event_weights(self, hist_item: Tensor, hist_type: Tensor | None = None) -> Tensor:
        """(B, H) weight per event: type weight * decay ** age; the history is most recent first, 0 = pad."""
        valid = hist_item > 0  # (B, H)
        age = valid.long().cumsum(1) - 1  # (B, H) valid events before this one
        types = torch.zeros_like(hist_item) if hist_type is None else hist_type
        w = self.type_weights[types] * self.decay ** age.clamp(min=0).float()  # (B, H)
        return w * valid

    def merge(self, hist_item: Tensor, hist_type: Tensor | None = None) -> Tree:
        """The user's merged tree, one slot per (event, path, level) sorted by node id (see Tree)."""
        b, h = hist_item.shape
        ev = self.item_nodes[hist_item].reshape(b, h, -1)  # (B, H, S) S = P * D
        s = ev.shape[-1]
        earlier = torch.ones(s, s, dtype=torch.bool, device=ev.device).tril(-1)  # (S, S) s' < s
        dup = ((ev.unsqueeze(-1) == ev.unsqueeze(-2)) & earlier).any(-1)  # (B, H, S) already in this event
        w = self.event_weights(hist_item, hist_type)  # (B, H)
        contrib = (w.unsqueeze(-1) * ((ev > 0) & ~dup)).reshape(b, -1)  # (B, T) T = H * S
        nodes, order = ev.reshape(b, -1).sort(1)  # (B, T) pads (0) first
        contrib = contrib.gather(1, order)  # (B, T)
        change = torch.ones_like(nodes, dtype=torch.bool)
        change[:, 1:] = nodes[:, 1:] != nodes[:, :-1]
        first = change & (nodes > 0)  # (B, T) one slot per distinct node
        run = change.long().cumsum(1) - 1  # (B, T) index of the slot's run of equal ids
        sums = torch.zeros_like(contrib).scatter_add_(1, run, contrib)  # (B, T) per run
        weight = sums.gather(1, run) * first  # (B, T)
        return Tree(nodes=nodes, first=first, weight=weight, events=ev, event_weight=w)

    def _parent_slot(self, tree: Tree) -> Tensor:
        """(B, T) slot of each slot's parent node (its first slot: the parent of a present node is present)."""
        parent = self.parent[tree.nodes]  # (B, T)
        return torch.searchsorted(tree.nodes, parent).clamp(max=tree.nodes.shape[1] - 1)  # (B, T)

    def _ends(self, tree: Tree, keep: Tensor, up: Tensor) -> Tensor:
        """(B, T) bool: kept slots with no kept child."""
        child = keep & (self.node_level[tree.nodes] > 0)  # (B, T) level-0 parents are the pad: not counted
        kids = torch.zeros(keep.shape, device=keep.device).scatter_add_(1, up, child.float())  # (B, T)
        return keep & (kids == 0)

    def _chain_sim(self, tree: Tree, query: Tensor) -> Tensor:
        """(B, T) mean similarity to the query along each slot's chain root -> node."""
        chain = self.chain[tree.nodes]  # (B, T, D)
        member = (chain > 0).float()  # (B, T, D)
        sim = torch.einsum("btdc,bc->btd", self.node_emb(chain), query) / math.sqrt(self.dim)  # (B, T, D)
        return (sim * member).sum(-1) / member.sum(-1).clamp(min=1)  # (B, T)

    def retrieve(self, tree: Tree, query: Tensor) -> Retrieved:
        """Target-aware top-down retrieval over the merged tree (or top-k over a flat list); query (B, dim)."""
        t = tree.nodes.shape[1]
        sim = (self.node_emb(tree.nodes) @ query.unsqueeze(-1)).squeeze(-1) / math.sqrt(self.dim)  # (B, T)
        neg = torch.finfo(sim.dtype).min
        if not self.tree:
            score = sim.masked_fill(~tree.first, neg)
        else:
            level = self.node_level[tree.nodes]  # (B, T)
            up = self._parent_slot(tree)  # (B, T)
            keep = torch.zeros_like(tree.first)
            for depth in range(self.depth):  # D top-k steps, each over the whole batch
                cand = tree.first & (level == depth) & ((level == 0) | keep.gather(1, up))  # (B, T)
                top = sim.masked_fill(~cand, neg).topk(min(self.beam, t), dim=1)  # (B, beam)
                keep = keep | torch.zeros_like(keep).scatter_(1, top.indices, cand.gather(1, top.indices))
            score = self._chain_sim(tree, query).masked_fill(~self._ends(tree, keep, up), neg)  # (B, T)
        top = score.topk(min(self.top_k, t), dim=1)  # (B, k)
        valid = top.values > neg
        nodes = tree.nodes.gather(1, top.indices) * valid  # (B, k)
        return Retrieved(nodes=nodes, valid=valid, weight=tree.weight.gather(1, top.indices) * valid)

    def _token(self, nodes: Tensor) -> Tensor:
        """(B, k) node ids -> (B, k, dim): the chain's mean node embedding (tree) or the node's own (flat)."""
        if not self.tree:
            return self.node_emb(nodes)  # (B, k, dim)
        chain = self.chain[nodes]  # (B, k, D)
        member = (chain > 0).unsqueeze(-1).float()  # (B, k, D, 1)
        return (self.node_emb(chain) * member).sum(2) / member.sum(2).clamp(min=1)  # (B, k, dim)

    # -- the view -----------------------------------------------------------------------------------------

    def forward(
        self,
        hist_item: Tensor,
        target: Tensor,
        hist_type: Tensor | None = None,
        hist_emb: Tensor | None = None,
    ) -> Tensor:
        """hist_item (B, H) item id + 1 most recent first (0 = pad); target (B, target_dim); hist_type (B, H)
        behaviour type ids; hist_emb (B, H, event_dim) event embeddings -> (B, dim) intent vector."""
        tree = self.merge(hist_item, hist_type)
        if not self.target_aware:
            pool = (
                self._ends(tree, tree.first, self._parent_slot(tree)) if self.tree else tree.first
            )  # (B, T)
            pw = tree.weight * pool  # (B, T)
            pooled = (pw.unsqueeze(-1) * self._token(tree.nodes)).sum(1)  # (B, dim)
            return self.out(pooled / pw.sum(1, keepdim=True).clamp(min=1e-6))
        query = self.target_proj(target)  # (B, dim)
        got = self.retrieve(tree, query)
        tokens = self._token(got.nodes)  # (B, k, dim)
        if self.event_proj is not None and hist_emb is not None:
            # an event supports a chain when the chain's end node is on one of its paths
            support = (tree.events.unsqueeze(1) == got.nodes[:, :, None, None]).any(-1)  # (B, k, H)
            a = support * got.valid.unsqueeze(-1) * tree.event_weight.unsqueeze(1)  # (B, k, H)
            events = a @ hist_emb / a.sum(-1, keepdim=True).clamp(min=1e-6)  # (B, k, event_dim)
            tokens = tokens + self.event_proj(events)
        bias = got.weight.clamp(min=1e-6).log().masked_fill(~got.valid, float("-inf"))  # (B, k)
        b = tokens.shape[0]
        tokens = torch.cat([self.null.expand(b, -1, -1), tokens], 1)  # (B, 1 + k, dim)
        bias = torch.cat([bias.new_zeros(b, 1), bias], 1)  # (B, 1 + k)
        dh = self.dim // self.heads
        q = self.q(query).view(b, self.heads, 1, dh)  # (B, h, 1, dh)
        k = self.k(tokens).view(b, -1, self.heads, dh).transpose(1, 2)  # (B, h, 1 + k, dh)
        v = self.v(tokens).view(b, -1, self.heads, dh).transpose(1, 2)  # (B, h, 1 + k, dh)
        mask = bias[:, None, None, :].expand(-1, self.heads, 1, -1)  # (B, h, 1, 1 + k)
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, h, 1, dh)
        return self.out(att.reshape(b, self.dim))  # (B, dim)


class AIRNet(DeepFM):
    """DeepFM + the AIR intent view as one more field.

    Args:
        intents: the intents.parquet of this prepared dataset (semid.intents.build); refused when its data_hash
            is another dataset's.
        target_aware: False = pool every chain end / node by weight (the "no retrieval" ablation).
        tree: False = a flat intent list instead of the tree (the "flat" ablation).
        top_k, beam, heads, decay: the view's retrieval and attention (see IntentView).
        type_weights: weight per history event type: (target-domain, source-domain) events (`batch.hist_type`).
        supporting_events: add the supporting events' item embeddings to each retrieved chain.
        deepfm: DeepFM's arguments (embed_dim, mlp_dims, dropout, batch_norm); the view's width is embed_dim.
    """

    n_extra_fields = 1

    def __init__(
        self,
        spec: DataSpec,
        *,
        intents: str,
        target_aware: bool = True,
        tree: bool = True,
        top_k: int = 4,
        beam: int = 4,
        heads: int = 2,
        decay: float = 0.9,
        type_weights: tuple[float, ...] = (1.0, 1.0),
        supporting_events: bool = True,
        **deepfm: Any,
    ):
        super().__init__(spec, **deepfm)
        embed_dim = self.embed_dim
        table = read_intents(intents, n_items=spec.n_items, data_hash=spec.data_hash)
        self.view = IntentView(
            spec,
            intents=table,
            dim=embed_dim,
            target_dim=embed_dim,
            event_dim=embed_dim if supporting_events else 0,
            top_k=top_k,
            beam=beam,
            heads=heads,
            decay=decay,
            type_weights=tuple(type_weights),
            target_aware=target_aware,
            tree=tree,
        )
        self.supporting_events = supporting_events

    def extra_fields(self, batch: Batch) -> Tensor:
        target = self.fields.item(batch.item + 1)  # (B, d)
        hist_type = batch.hist_type if batch.hist_type.numel() else None  # (B, H) or None
        hist_emb = self.fields.item(batch.hist_item) if self.supporting_events else None  # (B, H, d)
        intent = self.view(batch.hist_item, target, hist_type=hist_type, hist_emb=hist_emb)  # (B, d)
        return intent.unsqueeze(1)  # (B, 1, d)


class SIDAIRNet(AIRNet, SIDFeatures):
    """AIRNet over SIDFeatures: the semantic-ID prefix embeddings of the user, the item and the history (e.g. the
    RGCD-Rep cross-domain IDs) and the AIR intent view in one model, the cross-domain issue's "both" arm. Takes
    AIRNet's arguments and SIDFeatures' `max_prefix_rows`; the intent view's target is the item's id embedding."""

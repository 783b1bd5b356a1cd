"""Oracle tests of ctr.layers: each block against a brute-force computation written here."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from ctr import layers
from ctr.batch import Batch, DataSpec

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models run on one thread


def test_activity_and_first_occurrence():
    a = layers.activity(torch.tensor([0.0, 9.0, 99.0, 500.0]), 99.0)
    torch.testing.assert_close(a, torch.tensor([0.0, math.log(10) / math.log(100), 1.0, 1.0]))
    ids = torch.tensor([5, 3, 5, 7, 3, 3])
    uniq, pos = layers.first_occurrence(ids)
    assert uniq.tolist() == [3, 5, 7]
    assert pos.tolist() == [1, 0, 3]


def test_largest_prime():
    assert layers.largest_prime_at_most(1 << 20) == 1048573
    assert layers.largest_prime_at_most(10) == 7


def test_masked_mean_and_squared_norm():
    x = torch.randn(3, 4, 2)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]], dtype=torch.bool)
    out = layers.masked_mean(x, mask)
    torch.testing.assert_close(out[0], x[0, :2].mean(0))
    torch.testing.assert_close(out[1], x[1].mean(0))
    assert out[2].abs().sum() == 0
    torch.testing.assert_close(layers.squared_norm(x), (x**2).sum((1, 2)).mean())


def test_feature_bags_mean_over_non_padding_tokens():
    torch.manual_seed(0)
    bags = layers.FeatureBags((4, 6, 1), dim=3)
    tokens = torch.tensor([[[1, 3, 0], [5, 0, 0], [0, 0, 0]], [[0, 0, 0], [2, 2, 4], [0, 0, 0]]])
    out = bags(tokens)
    assert out.shape == (2, 3, 3)
    w, offsets = bags.bag.weight, bags.offsets.tolist()
    assert offsets == [0, 3, 8]
    for b, f in itertools.product(range(2), range(3)):
        toks = [t for t in tokens[b, f].tolist() if t > 0]
        want = torch.stack([w[t + offsets[f]] for t in toks]).mean(0) if toks else torch.zeros(3)
        torch.testing.assert_close(out[b, f], want)
    assert bags(torch.zeros(2, 0, 3, dtype=torch.long)).shape == (2, 0, 3)


def test_fm_equals_pairwise_dot_products():
    e = torch.randn(5, 4, 3)
    want = sum((e[:, i] * e[:, j]).sum(-1) for i in range(4) for j in range(i + 1, 4))
    torch.testing.assert_close(layers.FMInteraction()(e), want)


@pytest.mark.parametrize("low_rank", [0, 2])
def test_cross_layer_formula(low_rank):
    net = layers.CrossNetV2(6, n_layers=2, low_rank=low_rank)
    x0 = torch.randn(4, 6)
    x = x0
    for layer in net.layers:
        w = layer.weight if low_rank == 0 else layer[1].weight @ layer[0].weight
        b = layer.bias if low_rank == 0 else layer[1].bias
        x = x0 * (x @ w.T + b) + x
    torch.testing.assert_close(net(x0), x)


def test_target_attention_ignores_padding():
    torch.manual_seed(0)
    att = layers.TargetAttention(4)
    hist, target = torch.randn(3, 5, 4), torch.randn(3, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0]], dtype=torch.bool)
    out = att(hist, target, mask)
    changed = hist.clone()
    changed[~mask] = 100.0
    torch.testing.assert_close(att(changed, target, mask), out)
    torch.testing.assert_close(out[1], hist[1, 0])  # a single valid position gets all the weight
    assert out[2].abs().sum() == 0


def test_sid_prefix_index_exact_mixed_radix():
    emb = layers.SIDPrefixEmbedding((3, 4, 2), dim=2)
    codes = torch.tensor(list(itertools.product(range(3), range(4), range(2))))
    idx = emb.prefix_index(codes)
    torch.testing.assert_close(idx[:, 0], codes[:, 0])
    torch.testing.assert_close(idx[:, 1], codes[:, 0] * 4 + codes[:, 1])
    torch.testing.assert_close(idx[:, 2], (codes[:, 0] * 4 + codes[:, 1]) * 2 + codes[:, 2])
    assert emb.rows == (3, 12, 24) and emb.offsets.tolist() == [0, 3, 15]
    out = emb(codes)
    assert out.shape == (24, 3, 2)
    torch.testing.assert_close(out[5, 2], emb.table.weight[15 + idx[5, 2]])


def test_sid_prefix_hashing_keeps_every_level():
    emb = layers.SIDPrefixEmbedding((64, 64, 64), dim=2, max_rows=1000)
    assert emb.rows == (64, 997, 997) and emb.hashed == [False, True, True]
    codes = torch.stack(
        torch.meshgrid(torch.arange(64), torch.arange(64), torch.tensor([0]), indexing="ij"), -1
    )
    idx = emb.prefix_index(codes.reshape(-1, 3))
    assert int(idx.max()) < 997
    # level-2 prefixes: 4096 values into 997 rows; a prime modulus spreads them (every row used), and the leading
    # code matters: with c_2 fixed, the 64 values of c_1 give 64 different rows
    assert torch.unique(idx[:, 1]).numel() == 997
    assert torch.unique(idx.view(64, 64, 3)[:, 7, 2]).numel() == 64


def test_sid_prefix_table_capped_by_number_of_ids():
    emb = layers.SIDPrefixEmbedding((256, 256, 256), dim=2, n_ids=100)
    assert emb.rows == (256, 1597, 1597)  # 16 rows per id -> largest prime <= 1600
    assert emb.table.num_embeddings == 256 + 2 * 1597
    assert layers.SIDPrefixEmbedding((4, 4), dim=2, n_ids=100).rows == (4, 16)  # small products stay exact


def test_activity_gate_initial_values():
    gate = layers.ActivityGate(4)
    v, u = torch.randn(3, 4), torch.randn(3, 4)
    g = gate(torch.tensor([0.0, 0.5, 1.0]), v, u)
    torch.testing.assert_close(g.squeeze(-1), torch.sigmoid(torch.tensor([-3.0, 0.0, 3.0])))
    assert layers.ActivityGate(4, mode="vector")(torch.zeros(3), v, u).shape == (3, 4)


def test_cluster_guided_embedding_modes():
    torch.manual_seed(0)
    ids, codes, count = (
        torch.tensor([1, 2, 3]),
        torch.tensor([[0, 1], [1, 1], [2, 0]]),
        torch.tensor([0.0, 5, 50]),
    )
    gated = layers.ClusterGuidedEmbedding(3, (3, 2), 4, count_max=50.0)
    out = gated(ids, codes, count)
    g = out.gate
    torch.testing.assert_close(out.e, g * out.v + (1 - g) * out.u)
    torch.testing.assert_close(out.u, out.prefixes.sum(1))
    assert g[0] < 0.1 and g[2] > 0.9  # cold leans on its cluster, head on itself
    plain = layers.ClusterGuidedEmbedding(3, (3, 2), 4, count_max=50.0, use_gate=False)
    out = plain(ids, codes, count)
    torch.testing.assert_close(out.e, out.v + out.u)
    alone = layers.ClusterGuidedEmbedding(3, (3, 2), 4, count_max=50.0, use_cluster=False)
    out = alone(ids, codes, count)
    torch.testing.assert_close(out.e, out.v)
    coarse = layers.ClusterGuidedEmbedding(3, (3, 2), 4, count_max=50.0, use_gate=False, cluster_depths=1)
    out = coarse(ids, codes, count)
    torch.testing.assert_close(out.u, out.prefixes[:, 0])  # only the level-1 prefix is the cluster
    assert out.prefixes.shape == (3, 2, 4)  # every depth is still embedded (the semantic view uses them)
    torch.testing.assert_close(out.e, out.v + out.prefixes[:, 0])
    with pytest.raises(ValueError, match="cluster_depths"):
        layers.ClusterGuidedEmbedding(3, (3, 2), 4, count_max=50.0, cluster_depths=0)


def test_prototype_update_is_ema_of_head_only():
    pc = layers.PrototypeContrast(3, 2, momentum=0.5)
    v = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 8.0], [9.0, 9.0]])
    cluster, head = torch.tensor([0, 0, 1, 2]), torch.tensor([True, True, True, False])
    pc.update(v, cluster, head)
    torch.testing.assert_close(pc.prototypes, torch.tensor([[2.0, 0.0], [0.0, 8.0], [0.0, 0.0]]))
    assert pc.seen.tolist() == [True, True, False]  # cluster 2 only had a tail id
    pc.update(torch.tensor([[4.0, 2.0]]), torch.tensor([0]), torch.tensor([True]))
    torch.testing.assert_close(pc.prototypes[0], torch.tensor([3.0, 1.0]))


def test_prototype_loss_value_and_gradient_asymmetry():
    pc = layers.PrototypeContrast(4, 3, tau=0.5)
    pc.prototypes.copy_(torch.randn(4, 3))
    pc.seen.copy_(torch.tensor([True, True, False, True]))
    v = torch.randn(5, 3, requires_grad=True)
    cluster = torch.tensor([0, 1, 1, 2, 3])  # cluster 2 has no prototype: its anchor is skipped
    anchor = torch.tensor([False, True, True, True, True])
    weight = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5])
    loss = pc.loss(v, cluster, weight, anchor)
    protos = torch.nn.functional.normalize(pc.prototypes[[0, 1, 3]], dim=-1)  # clusters present and seen
    want = 0.0
    for i, col in ((1, 1), (2, 1), (4, 2)):
        logits = torch.nn.functional.normalize(v[i], dim=-1) @ protos.T / 0.5
        want = want - weight[i] * torch.log_softmax(logits, -1)[col]
    torch.testing.assert_close(loss, want / 3)
    loss.backward()
    assert v.grad[0].abs().sum() == 0 and v.grad[3].abs().sum() == 0  # head / prototype-less: no gradient
    assert (v.grad[[1, 2, 4]].abs().sum(-1) > 0).all()
    none = pc.loss(v, cluster, weight, torch.zeros(5, dtype=torch.bool))
    assert float(none.detach()) == 0.0


def test_field_embedding_layout_and_extras():
    spec = DataSpec(5, 6, ("a",), ("g", "h"), (4,), (3, 5), (2,), (3,), 3, 10.0, 10.0)
    fe = layers.FieldEmbedding(spec, 4)
    b = 2
    batch = Batch(
        user=torch.tensor([0, 4]),
        item=torch.tensor([1, 5]),
        label=torch.zeros(b),
        user_sid=torch.zeros(b, 1, dtype=torch.long),
        item_sid=torch.zeros(b, 1, dtype=torch.long),
        user_count=torch.zeros(b),
        item_count=torch.zeros(b),
        user_feats=torch.tensor([[[1, 0]], [[3, 2]]]),
        item_feats=torch.tensor([[[1, 2], [4, 0]], [[0, 0], [1, 1]]]),
        hist_item=torch.tensor([[3, 1, 0], [0, 0, 0]]),
        hist_item_sid=torch.zeros(b, 3, 1, dtype=torch.long),
        user_bucket=torch.zeros(b, dtype=torch.long),
        item_bucket=torch.zeros(b, dtype=torch.long),
    )
    out = fe(batch)
    assert fe.n_fields == 6 and out.shape == (2, 6, 4)
    torch.testing.assert_close(out[:, 0], fe.user.weight[[1, 5]])
    torch.testing.assert_close(out[:, 1], fe.item.weight[[2, 6]])
    torch.testing.assert_close(out[0, 5], (fe.item.weight[3] + fe.item.weight[1]) / 2)
    assert out[1, 5].abs().sum() == 0
    extra = torch.ones(b, 4)
    out2 = fe(batch, item_extra=extra, hist_extra=torch.ones(b, 3, 4))
    torch.testing.assert_close(out2[:, 1], out[:, 1] + 1)
    torch.testing.assert_close(out2[0, 5], out[0, 5] + 1)  # extras are pooled with the mask too
    assert out2[1, 5].abs().sum() == 0

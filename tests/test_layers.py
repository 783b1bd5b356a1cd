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


def test_target_attention_inference_chunks_equal_the_whole_batch():
    """Without autograd a batch larger than inference_chunk is pooled chunk by chunk: the same outputs as one
    pass (a chunk of 3 over 10 rows leaves a short last chunk); with autograd the whole batch goes at once."""
    torch.manual_seed(0)
    whole = layers.TargetAttention(4, inference_chunk=10_000).eval()
    chunked = layers.TargetAttention(4, inference_chunk=3).eval()
    chunked.load_state_dict(whole.state_dict())
    hist, target = torch.randn(10, 5, 4), torch.randn(10, 4)
    mask = torch.rand(10, 5) > 0.3
    mask[4] = False  # an all-padded history inside a chunk
    seen = []
    original = chunked._pool
    chunked._pool = lambda h, t, m: seen.append(h.shape[0]) or original(h, t, m)
    with torch.no_grad():
        expected = whole(hist, target, mask)
        torch.testing.assert_close(chunked(hist, target, mask), expected)
    assert seen == [3, 3, 3, 1]
    seen.clear()
    torch.testing.assert_close(chunked(hist, target, mask), expected)  # grad enabled: one pass
    assert seen == [10]


@pytest.mark.parametrize("softmax", [True, False])
def test_target_attention_packed_equals_dense(softmax):
    """Mostly padded histories are scored position by position over the real ones only (pack_below): the same
    pooled vectors and the same gradients as the dense path, all-padded rows included."""
    torch.manual_seed(0)
    dense = layers.TargetAttention(4, softmax=softmax, pack_below=0.0)  # never packed
    packed = layers.TargetAttention(
        4, softmax=softmax, pack_below=1.0
    )  # packed unless every position is real
    packed.load_state_dict(dense.state_dict())
    hist, target = torch.randn(6, 5, 4), torch.randn(6, 4)
    mask = torch.rand(6, 5) < 0.3
    mask[2] = False  # no real position
    mask[3] = True  # a full history
    outs, grads = [], []
    for att in (dense, packed):
        h, t = hist.clone().requires_grad_(), target.clone().requires_grad_()
        out = att(h, t, mask)
        (out * torch.arange(24.0).view(6, 4)).sum().backward()
        outs.append(out)
        grads.append([h.grad, t.grad, *(p.grad for p in att.parameters())])
    torch.testing.assert_close(outs[1], outs[0])
    assert outs[1][2].abs().sum() == 0
    for a, b in zip(grads[0], grads[1]):
        torch.testing.assert_close(b, a)
    with torch.no_grad():  # nothing real at all
        none = packed(hist, target, torch.zeros(6, 5, dtype=torch.bool))
    assert none.shape == (6, 4) and none.abs().sum() == 0


def test_sid_prefix_index_exact_mixed_radix():
    emb = layers.SIDPrefixEmbedding((3, 4, 2), dim=2)
    codes = torch.tensor(list(itertools.product(range(3), range(4), range(2))))
    idx = emb.prefix_index(
        codes
    )  # rows of the one table: row 0 is the unknown prefix, depth l starts at offsets[l]
    assert emb.rows == (3, 12, 24) and emb.offsets.tolist() == [1, 4, 16] and emb.indexed == (False,) * 3
    torch.testing.assert_close(idx[:, 0], codes[:, 0] + 1)
    torch.testing.assert_close(idx[:, 1], codes[:, 0] * 4 + codes[:, 1] + 4)
    torch.testing.assert_close(idx[:, 2], (codes[:, 0] * 4 + codes[:, 1]) * 2 + codes[:, 2] + 16)
    out = emb(codes)
    assert out.shape == (24, 3, 2) and emb.table.num_embeddings == 1 + 3 + 12 + 24
    torch.testing.assert_close(out[5, 2], emb.table.weight[idx[5, 2]])


def test_sid_prefix_hashing_before_index_keeps_every_level():
    emb = layers.SIDPrefixEmbedding((64, 64, 64), dim=2, max_rows=1000)
    assert (
        emb.rows == (64, 1000, 1000) and emb.indexed == (False, True, True) and emb.moduli == (64, 997, 997)
    )
    codes = torch.stack(
        torch.meshgrid(torch.arange(64), torch.arange(64), torch.tensor([0]), indexing="ij"), -1
    )
    idx = emb.prefix_index(codes.reshape(-1, 3)) - emb.offsets  # row within each depth
    assert int(idx.min()) >= 0 and int(idx.max()) < 997
    # level-2 prefixes: 4096 values into 997 rows; a prime modulus spreads them (every row used), and the leading
    # code matters: with c_2 fixed, the 64 values of c_1 give 64 different rows
    assert torch.unique(idx[:, 1]).numel() == 997
    assert torch.unique(idx.view(64, 64, 3)[:, 7, 2]).numel() == 64


def test_sid_prefix_index_is_exact_capped_by_ids_and_fixed_once_set():
    torch.manual_seed(0)
    emb = layers.SIDPrefixEmbedding((256, 256, 256), dim=2, n_ids=100)
    assert emb.rows == (100, 100, 100) and emb.indexed == (True, True, True)
    assert emb.table.num_embeddings == 1 + 300  # was 256 + 2 x 1,597 rows before the index
    assert layers.SIDPrefixEmbedding((4, 4), dim=2, n_ids=100).rows == (4, 16)  # small products stay exact
    codes = torch.randint(0, 256, (100, 3))
    codes[50:, :2] = codes[:50, :2]  # ids 50..99 share their first two levels with ids 0..49
    emb.index(codes)
    assert bool(emb.vocab_set)
    idx = emb.prefix_index(codes)
    for level in range(3):  # one row per distinct prefix, none shared by two prefixes, none the unknown row
        keys = emb.prefix_keys(codes)[:, level]
        assert torch.unique(idx[:, level]).numel() == torch.unique(keys).numel()
        assert (
            torch.unique(torch.stack([keys, idx[:, level]], 1), dim=0).shape[0] == torch.unique(keys).numel()
        )
    assert int(idx.min()) >= 1 and int(idx.max()) <= 300
    new = torch.tensor([[255, 255, 255]])  # a prefix no id had: the zero row 0, which never trains
    assert (codes != new).any(1).all()
    emb(new).sum().backward()
    assert emb.prefix_index(new)[0, 2] == 0 and emb(new)[0, 2].abs().sum() == 0
    assert emb.table.weight.grad[0].abs().sum() == 0
    before = emb.vocab.clone()
    emb.index(torch.randint(0, 256, (100, 3)))  # fixed once set: a second index changes nothing
    torch.testing.assert_close(emb.vocab, before)
    again = layers.SIDPrefixEmbedding((256, 256, 256), dim=2, n_ids=100)
    again.load_state_dict(emb.state_dict())  # the index travels with the weights
    torch.testing.assert_close(again(codes), emb(codes))
    with pytest.raises(ValueError, match="distinct depth-1 prefixes"):
        layers.SIDPrefixEmbedding((256, 256), dim=2, n_ids=10).index(
            torch.arange(20).view(20, 1).repeat(1, 2)
        )


def test_sid_prefix_keys_past_int64_stay_in_range():
    emb = layers.SIDPrefixEmbedding((4096,) * 6, dim=2, n_ids=50)  # 4096^6 = 2^72: past exact int64 numbers
    codes = torch.randint(0, 4096, (50, 6), generator=torch.Generator().manual_seed(1))
    keys = emb.prefix_keys(codes)
    assert int(keys.min()) >= 0 and int(keys.max()) < 1 << 63 - 1
    emb.index(codes)
    idx = emb.prefix_index(codes) - emb.offsets
    assert int(idx.min()) >= 0  # every id's prefix was found
    for level in range(6):  # exact: as many rows as distinct prefixes
        assert torch.unique(idx[:, level]).numel() == torch.unique(codes[:, : level + 1], dim=0).shape[0]


def test_index_sid_tables_fills_each_side_with_its_codes():
    net = torch.nn.ModuleDict(
        {
            "u": layers.SIDPrefixEmbedding((64, 64), dim=2, n_ids=30, side="user"),
            "i": layers.SIDPrefixEmbedding((64, 64), dim=2, n_ids=20, side="item"),
            "anon": layers.SIDPrefixEmbedding((64, 64), dim=2, n_ids=20),  # no side: left hashing
        }
    )
    users, items = torch.randint(0, 64, (30, 2)), torch.randint(0, 64, (20, 2))
    assert layers.index_sid_tables(net, users, items) == 2
    assert layers.index_sid_tables(net, users, items) == 0  # once
    assert not bool(net["anon"].vocab_set)
    assert (net["u"].prefix_index(users) > 0).all() and (net["i"].prefix_index(items) > 0).all()


def test_activity_gate_initial_values():
    gate = layers.ActivityGate(4)
    v, u = torch.randn(3, 4), torch.randn(3, 4)
    g = gate(torch.tensor([0.0, 0.5, 1.0]), v, u)
    torch.testing.assert_close(g.squeeze(-1), torch.sigmoid(torch.tensor([-3.0, 0.0, 3.0])))
    assert layers.ActivityGate(4, mode="vector")(torch.zeros(3), v, u).shape == (3, 4)


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
        hist_item_count=torch.zeros(b, 3),
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


def test_gated_mlp_starts_as_the_plain_mlp_and_gates_per_unit():
    from ctr.layers import GatedMLP

    torch.manual_seed(0)
    net = GatedMLP(6, (5, 4), gate_dim=3, gate_hidden=4)
    x, cond = torch.randn(8, 6), torch.randn(8, 3)
    logit, gates = net(x, cond)
    h = x
    for layer in net.layers:
        h = torch.relu(layer(h))
    torch.testing.assert_close(logit, net.out(h).squeeze(-1))  # gates 2 sigmoid(0) = 1 at init
    assert [g.shape for g in gates] == [(8, 5), (8, 4)] and all(
        torch.equal(g, torch.ones_like(g)) for g in gates
    )
    logit.sum().backward()
    assert net.gates[0][-1].weight.grad.abs().sum() > 0  # the gates learn from the click loss
    with torch.no_grad():
        net.gates[1][-1].bias.copy_(torch.tensor([-50.0, 0.0, 0.0, 0.0]))  # close unit 0 of layer 2
    _, gates = net(x, cond)
    assert torch.allclose(gates[1][:, 0], torch.zeros(8), atol=1e-12) and (gates[1][:, 1:] == 1).all()


def test_mlp_batch_norm_and_unnormalised_attention():
    from ctr.layers import MLP, TargetAttention

    assert [type(m).__name__ for m in MLP(4, (3,), batch_norm=True, out_dim=1)] == [
        "Linear", "BatchNorm1d", "ReLU", "Dropout", "Linear",
    ]  # fmt: skip
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in MLP(4, (3,), out_dim=1))
    torch.manual_seed(0)
    att = TargetAttention(4, hidden=(5,), softmax=False)
    hist, target = torch.randn(2, 3, 4), torch.randn(2, 4)
    mask = torch.tensor([[True, True, False], [False, False, False]])
    pooled = att(hist, target, mask)
    doubled = att(
        torch.cat([hist[:, :2], hist[:, :2], hist[:, 2:]], 1),
        target,
        torch.cat([mask[:, :2]] * 2 + [mask[:, 2:]], 1),
    )
    torch.testing.assert_close(doubled[0], 2 * pooled[0])  # raw weights: a repeated history counts twice
    assert torch.equal(pooled[1], torch.zeros(4))


def test_embedding_dense_lookup_matches_nn_embedding():
    """`Embedding`'s index_add backward gives nn.Embedding's gradients (padding row excluded) and the same outputs,
    with and without autograd; a sparse table keeps torch's sparse gradient."""
    torch.manual_seed(0)
    ref = torch.nn.Embedding(50, 8, padding_idx=0)
    ours = layers.Embedding(50, 8, padding_idx=0)
    ours.load_state_dict(ref.state_dict())
    idx = torch.randint(0, 50, (64, 20))
    idx[:, -3:] = 0  # padded history slots
    grad = torch.randn(64, 20, 8)
    ref(idx).backward(grad)
    ours(idx).backward(grad)
    assert torch.equal(ref(idx), ours(idx))
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad)
    assert ours.weight.grad[0].abs().max() == 0
    with torch.no_grad():
        assert torch.equal(ref(idx), ours(idx))
    sparse = layers.Embedding(50, 8, padding_idx=0, sparse=True)
    sparse(idx).sum().backward()
    assert sparse.weight.grad.is_sparse


def test_dropout_keeps_1_minus_p_scaled_and_its_gradient_is_the_mask():
    """`Dropout` keeps each element with probability 1 - p (to 1/65,536), scales kept ones by 1 / (1 - p), passes the
    same mask to the gradient, repeats itself under a seed, and is the identity in eval mode."""
    x = torch.randn(512, 300, requires_grad=True)
    for p in (0.1, 0.5, 0.9):
        drop = layers.Dropout(p)
        torch.manual_seed(1)
        y = drop(x)
        kept = y != 0
        rate = kept.float().mean().item()
        sd = math.sqrt(p * (1 - p) / x.numel())
        assert abs(rate - (1 - p)) < 5 * sd, (p, rate)
        torch.testing.assert_close(y[kept], x[kept] / (1 - p))
        (grad,) = torch.autograd.grad(y.sum(), x)
        torch.testing.assert_close(grad, kept.float() / (1 - p))
        torch.manual_seed(1)
        assert torch.equal(drop(x), y)  # seeded: same mask
        assert not torch.equal(drop(x), y)  # the stream moves on
    rows = (
        layers.Dropout(0.5)(torch.ones(4, 1000)).ne(0).float().mean(1)
    )  # no pattern tied to the row or column
    assert rows.min() > 0.4 and rows.max() < 0.6
    drop = layers.Dropout(0.3).eval()
    assert torch.equal(drop(x), x)
    assert torch.equal(layers.Dropout(0.0)(x), x)
    assert torch.equal(layers.Dropout(1.0)(x), torch.zeros_like(x))
    odd = layers.Dropout(0.5)(torch.ones(3, 7))  # numel not a multiple of 4
    assert odd.shape == (3, 7) and set(odd.unique().tolist()) <= {0.0, 2.0}

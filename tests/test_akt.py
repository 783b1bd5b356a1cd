"""AKT-Rec v2 (ctr.models.akt) and its layers: the residual gate's start, gradient flow of the asymmetric transfer,
the cluster view's hard search, the cold path, orthogonality, the content tower, every ablation, checkpoints, and
the optimised forward (deduplicated history, regrouped attention, content tower on the rows that use it) against
a straightforward reference."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from tiny import TINY_SPEC
from torch.utils.data import DataLoader

from ctr import layers
from ctr.batch import Batch, DataSpec
from ctr.data import distinct_history_content
from ctr.models.akt import AKT
from ctr.module import CTRTask
from semid.errors import InputError

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models run on one thread

SPEC = TINY_SPEC
SMALL = {"embed_dim": 8, "mlp_dims": (16,), "attention_dims": (8,)}
CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "ctr"


def codes(sizes: tuple[int, ...], shape: tuple[int, ...], g: torch.Generator) -> torch.Tensor:
    return torch.stack([torch.randint(0, s, shape, generator=g) for s in sizes], -1)  # (*shape, L)


def make_batch(b: int = 24, seed: int = 0, spec: DataSpec = SPEC) -> Batch:
    g = torch.Generator().manual_seed(seed)
    hist = torch.randint(1, spec.n_items + 1, (b, spec.history_len), generator=g)
    hist[:3, 2:] = 0  # some short histories
    hist[3] = 0  # and an empty one
    content = torch.randn(b, spec.item_content_dim, generator=g) if spec.item_content_dim else torch.zeros(0)
    return Batch(
        user=torch.randint(0, spec.n_users, (b,), generator=g),
        item=torch.randint(0, spec.n_items, (b,), generator=g),
        label=torch.randint(0, 2, (b,), generator=g).float(),
        user_sid=codes(spec.user_sid_sizes, (b,), g),
        item_sid=codes(spec.item_sid_sizes, (b,), g),
        user_count=torch.randint(1, int(spec.user_count_max) + 1, (b,), generator=g).float(),
        item_count=torch.randint(1, int(spec.item_count_max) + 1, (b,), generator=g).float(),
        user_feats=torch.randint(0, 3, (b, 2, 2), generator=g),
        item_feats=torch.randint(0, 7, (b, 1, 3), generator=g),
        hist_item=hist,
        hist_item_sid=codes(spec.item_sid_sizes, (b, spec.history_len), g) * (hist > 0).unsqueeze(-1),
        hist_item_count=torch.randint(0, int(spec.item_count_max) + 1, hist.shape, generator=g) * (hist > 0),
        user_bucket=torch.randint(0, 3, (b,), generator=g),  # no cold sample: train rows never are
        item_bucket=torch.randint(0, 3, (b,), generator=g),
        item_content=content,
    )


def shared_clusters_batch() -> Batch:
    """12 samples: items/users 0..5 head (bucket 0), 6..11 tail (bucket 2); id i has level-1 code i % 3, so each
    of the 3 clusters holds head and tail ids, on both sides."""
    b = make_batch(b=12, seed=5)
    ids = torch.arange(12)
    head = ids < 6
    sid_i, sid_u = b.item_sid.clone(), b.user_sid.clone()
    sid_i[:, 0], sid_u[:, 0] = ids % 3, ids % 3
    bucket = torch.where(head, 0, 2)
    return b._replace(
        item=ids, user=ids + 10, item_sid=sid_i, user_sid=sid_u, item_bucket=bucket, user_bucket=bucket,
        item_count=torch.where(head, 70.0, 2.0), user_count=torch.where(head, 45.0, 1.0),
    )  # fmt: skip


def akt(spec: DataSpec = SPEC, **flags) -> AKT:
    torch.manual_seed(0)
    return AKT(spec, **SMALL, **flags)


# -- the cluster-guided embedding ---------------------------------------------------------------------------
def test_residual_gate_starts_as_the_plain_sum_and_cold_ids_have_no_individual_row():
    emb = layers.ClusterGuidedEmbedding(4, (3, 2, 2), 4, count_max=50.0)
    ids, sid, count = (
        torch.tensor([1, 2, 3, 4]),
        torch.tensor([[0, 1, 0], [1, 1, 1], [2, 0, 1], [0, 0, 0]]),
        None,
    )
    count = torch.tensor([0.0, 1.0, 5.0, 50.0])
    out = emb(ids, sid, count)
    torch.testing.assert_close(out.gate.squeeze(-1), torch.ones(4))  # gamma = 2 sigmoid(0) = 1 at init
    torch.testing.assert_close(out.e, out.cluster + out.individual)
    prefixes = emb.prefix(sid)  # (4, 3, d)
    torch.testing.assert_close(out.cluster, prefixes[:, 0])  # the cluster is the level-1 SID alone
    deep = emb.individual(ids) + prefixes[:, 1:].sum(1)  # E[id] + deeper prefixes
    torch.testing.assert_close(out.individual[1:], deep[1:])
    assert torch.equal(out.individual[0], torch.zeros(4))  # cold (count 0): no individual part at all
    torch.testing.assert_close(out.e[0], out.cluster[0])
    # so at init the sum is SIDFeatures' E[id] + sum_l E_l[prefix_l] for a warm id
    torch.testing.assert_close(out.e[1:], emb.individual(ids[1:]) + prefixes[1:].sum(1))
    with torch.no_grad():  # the gate learns: a nonzero weight on 1{a = 0}/a changes gamma per activity
        emb.gate.linear.weight.copy_(torch.tensor([[2.0, -1.0]]))
    gamma = emb(ids, sid, count).gate.squeeze(-1)
    a = layers.activity(count, 50.0)
    torch.testing.assert_close(gamma, 2 * torch.sigmoid(2 * a - (a == 0).float()))


def test_convex_gate_and_switches():
    ids, sid, count = torch.tensor([1, 2]), torch.tensor([[0, 1], [2, 0]]), torch.tensor([0.0, 50.0])
    convex = layers.ClusterGuidedEmbedding(2, (3, 2), 4, count_max=50.0, gate_mode="convex")
    out = convex(ids, sid, count)
    torch.testing.assert_close(out.e, out.gate * out.individual + (1 - out.gate) * out.cluster)
    assert out.gate[0] < 0.1 and out.gate[1] > 0.9  # the paper's init: cold leans on the cluster
    plain = layers.ClusterGuidedEmbedding(2, (3, 2), 4, count_max=50.0, use_gate=False)
    out = plain(ids, sid, count)
    assert out.gate is None
    torch.testing.assert_close(out.e, out.cluster + out.individual)
    alone = layers.ClusterGuidedEmbedding(2, (3, 2), 4, count_max=50.0, use_cluster=False)
    out = alone(ids, sid, count)
    torch.testing.assert_close(out.e, out.individual)
    assert torch.equal(out.cluster, torch.zeros(2, 4))
    shallow = layers.ClusterGuidedEmbedding(2, (3, 2), 4, count_max=50.0, deep_prefixes=False)
    assert shallow.prefix.levels == 1  # no table for the deep prefixes
    torch.testing.assert_close(shallow(ids, sid, count).individual[1], shallow.individual(ids[1]))
    only = layers.ClusterGuidedEmbedding(2, (3, 2), 4, count_max=50.0, use_individual=False)
    out = only(ids, sid, count)
    assert only.individual is None and only.prefix.levels == 1
    torch.testing.assert_close(out.e, out.cluster)
    with pytest.raises(ValueError, match="no embedding"):
        layers.ClusterGuidedEmbedding(2, (3, 2), 4, count_max=50.0, use_cluster=False, use_individual=False)
    with pytest.raises(ValueError, match="cluster_depth"):
        layers.ClusterGuidedEmbedding(2, (3, 2), 4, count_max=50.0, cluster_depth=3)


def test_orthogonality_is_zero_only_for_orthogonal_pairs():
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]])
    y = torch.tensor([[0.0, 5.0], [-1.0, 0.0], [3.0, -3.0]])
    assert float(layers.orthogonality(x, y)) == 0.0
    y2 = torch.tensor([[1.0, 1.0], [-1.0, 0.0], [1.0, 1.0]])  # cos^2 = 1/2, 0, 1
    torch.testing.assert_close(layers.orthogonality(x, y2), torch.tensor(0.5))
    mask = torch.tensor([True, True, False])
    torch.testing.assert_close(layers.orthogonality(x, y2, mask), torch.tensor(0.25))
    assert float(layers.orthogonality(x, torch.zeros_like(x))) == 0.0  # a zeroed (cold) row adds nothing


# -- asymmetric transfer ------------------------------------------------------------------------------------
def test_asymmetric_transfer_value_matches_the_formula():
    g = torch.Generator().manual_seed(0)
    e = torch.randn(8, 3, generator=g)
    cluster = torch.tensor([7, 7, 2, 2, 9, 9, 4, 4])  # cluster 4 has no head id: left out
    head = torch.tensor([True, False, True, False, True, False, False, False])
    out = layers.asymmetric_transfer(e, cluster, head, lambda_h2t=0.5, lambda_t2h=0.25, tau=0.1)
    c_head = e[[2, 0, 4]]  # clusters sorted: 2, 7, 9
    c_tail = e[[3, 1, 5]]

    def nce(a, p):
        logits = torch.nn.functional.normalize(a, dim=-1) @ torch.nn.functional.normalize(p, dim=-1).T / 0.1
        return -torch.log_softmax(logits, -1).diagonal().mean()

    torch.testing.assert_close(out.h2t, nce(c_tail, c_head))
    torch.testing.assert_close(out.t2h, nce(c_head, c_tail))
    torch.testing.assert_close(out.loss, 0.5 * nce(c_tail, c_head) + 0.25 * nce(c_head, c_tail))
    assert out.clusters == 3
    one = layers.asymmetric_transfer(e[:2], cluster[:2], head[:2], lambda_h2t=1.0, lambda_t2h=1.0, tau=0.1)
    assert one.clusters == 1 and float(one.loss) == 0.0  # no negative: nothing to contrast


@pytest.mark.parametrize("lambda_t2h", [0.0, 0.05])
def test_transfer_moves_tail_rows_and_shared_clusters_head_rows_only_by_lambda_t2h(lambda_t2h):
    model = akt(use_transfer=True, lambda_h2t=1.0, lambda_t2h=lambda_t2h, lambda_orth=0.0, p_cold=0.0).train()
    batch = shared_clusters_batch()
    out = model(batch)
    assert float(out.aux["trans_item"]) > 0 and float(out.aux["trans_user"]) > 0
    out.aux_loss.backward()  # L_trans alone (orthogonality off)
    for emb, ids, sid in (
        (model.item_emb, batch.item, batch.item_sid),
        (model.user_emb, batch.user, batch.user_sid),
    ):
        grad = emb.individual.weight.grad[ids + 1]  # (12, d)
        head_grad = grad[:6].abs().sum(-1)
        if lambda_t2h == 0:
            assert torch.equal(head_grad, torch.zeros(6)), "a noisy tail must not move head rows"
        else:
            assert (head_grad > 0).all()
        assert (grad[6:].abs().sum(-1) > 0).all(), "every tail row must get a transfer gradient"
        rows = emb.prefix.prefix_index(sid)[:3, 0]  # level-1 rows of clusters 0, 1, 2
        cluster_grad = emb.prefix.table.weight.grad[rows].abs().sum(-1)
        assert (cluster_grad > 0).all(), "the transfer must reach the cluster rows a cold id uses"


def test_head_min_count_defines_head_instead_of_buckets():
    model = akt(
        use_transfer=True, lambda_h2t=1.0, lambda_t2h=0.0, lambda_orth=0.0, p_cold=0.0, head_min_count=50.0
    ).train()
    batch = shared_clusters_batch()._replace(item_bucket=torch.full((12,), 2))  # every bucket tail
    model(batch).aux_loss.backward()
    grad = model.item_emb.individual.weight.grad[batch.item + 1]
    assert torch.equal(grad[:6], torch.zeros_like(grad[:6])) and (grad[6:].abs().sum(-1) > 0).all()


# -- the two views ------------------------------------------------------------------------------------------
def test_cluster_view_pools_only_history_in_the_target_cluster():
    view = layers.ClusterView(2, depth=1)
    with torch.no_grad():
        view.empty.copy_(torch.tensor([7.0, 7.0]))
    hist = torch.tensor([[[1.0, 0.0], [3.0, 2.0], [100.0, 100.0], [5.0, 5.0]]] * 2)  # (2, 4, 2)
    hist_codes = torch.tensor([[[1, 0], [1, 3], [2, 1], [1, 1]]] * 2)  # level-1 codes 1, 1, 2, 1
    mask = torch.tensor([[True, True, True, False]] * 2)  # the 4th is padding even though its code matches
    target_codes = torch.tensor([[1, 2], [0, 0]])  # sample 1: no history item in cluster 0
    s, same = view(hist, hist_codes, mask, torch.zeros(2, 2), target_codes)
    assert same.tolist() == [[True, True, False, False], [False, False, False, False]]
    torch.testing.assert_close(s[0], torch.tensor([2.0, 1.0]))  # mean of the two in cluster 1
    torch.testing.assert_close(s[1], torch.tensor([7.0, 7.0]))  # empty set -> the learned fallback
    attn = layers.ClusterView(2, depth=1, pool="attention")
    s, _ = attn(hist, hist_codes, mask, torch.ones(2, 2), target_codes)
    moved = hist.clone()
    moved[:, 2] = -50.0  # another cluster's item: cannot change the view
    torch.testing.assert_close(attn(moved, hist_codes, mask, torch.ones(2, 2), target_codes)[0], s)
    assert torch.equal(s[1], attn.empty)


def test_mean_instance_view_is_attention_with_constant_scores():
    """instance_pool="mean" (DeepFM's history field) equals the paper's softmax attention whose scores are all
    equal: the same model with a zeroed score MLP gives the same logits, an empty history included."""
    mean = akt(instance_pool="mean").eval()
    attention = akt().eval()
    assert mean.instance is None
    missing, unexpected = attention.load_state_dict(mean.state_dict(), strict=False)
    assert unexpected == [] and all(k.startswith("instance.") for k in missing) and missing
    with torch.no_grad():
        for p in attention.instance.parameters():
            p.zero_()
        batch = make_batch()
        torch.testing.assert_close(mean(batch).logit, attention(batch).logit)
        other = batch._replace(hist_item_count=batch.hist_item_count.flip(0))  # other history embeddings
        assert not torch.allclose(mean(other).logit, mean(batch).logit)
    with pytest.raises(InputError, match="instance_pool"):
        akt(instance_pool="max")


def test_first_order_biases_are_added_and_a_cold_id_drops_its_own():
    model = akt(first_order=True).eval()
    plain = akt().eval()
    plain.load_state_dict(model.state_dict(), strict=False)
    batch = make_batch()
    batch = batch._replace(item_count=batch.item_count.index_fill(0, torch.tensor([0]), 0.0))  # sample 0 cold
    with torch.no_grad():
        first = model.first_order(batch).squeeze(-1)  # (B, F1)
        first[0, 1] = 0.0  # the cold item's bias is dropped
        torch.testing.assert_close(model(batch).logit, plain(batch).logit + first.sum(1))
        before = model(batch).logit - plain(batch).logit  # (B,) the first-order term
        bump = torch.zeros_like(model.first_order.item.weight)  # (n_items + 1, 1)
        bump[batch.item + 1] = 1.0  # every target item's bias + 1; some are also history items
        model.first_order.item.weight += bump
        after = model(batch).logit - plain(batch).logit
    real = batch.hist_item > 0  # (B, H)
    # the history's mean bias moves by the share of its items that are bumped
    hist = (bump[batch.hist_item, 0] * real).sum(1) / real.sum(1).clamp_min(1)
    warm = (batch.item_count > 0).float()  # the cold item's own bias is not read
    torch.testing.assert_close(after - before, hist + warm)
    with torch.no_grad():
        model.admit(batch)  # a new item's bias starts at the value it had while cold
    assert torch.all(model.first_order.item.weight[batch.item + 1] == 0)


def test_view_gate_starts_even_and_is_logged_per_bucket():
    model = akt().eval()
    batch = make_batch()
    with torch.no_grad():
        out = model(batch)
    for name in ("head", "torso", "tail"):
        torch.testing.assert_close(out.aux[f"views/instance_item_{name}"], torch.tensor(0.5))
    assert torch.isnan(out.aux["views/instance_item_cold"])  # no cold sample in this batch
    hit = (batch.hist_item_sid[..., 0] == batch.item_sid[:, None, 0]) & (batch.hist_item > 0)
    torch.testing.assert_close(out.aux["views/cluster_hit"], hit.any(1).float().mean())
    gamma = model.item_emb(batch.item + 1, batch.item_sid, batch.item_count).gate.squeeze(-1)
    tail = batch.item_bucket == 2
    torch.testing.assert_close(out.aux["gate/item_tail"], gamma[tail].mean())


# -- cold path ----------------------------------------------------------------------------------------------
def test_cold_dropout_trains_the_cold_path_and_eval_is_deterministic():
    model = akt(p_cold=0.5)
    batch = make_batch(b=64)
    count, bucket = model.train().present(batch.item_count, batch.item_bucket)
    dropped = count == 0
    assert 10 < int(dropped.sum()) < 54  # about half, drawn independently per sample
    assert (bucket[dropped] == 3).all() and torch.equal(bucket[~dropped], batch.item_bucket[~dropped])
    out = model(batch)
    assert torch.isfinite(out.aux["gate/item_cold"])  # train rows presented as cold reach the gate
    model.eval()
    assert model.present(batch.item_count, batch.item_bucket)[0] is batch.item_count
    with torch.no_grad():
        a, b = model(batch).logit, model(batch).logit
        no_drop = akt(p_cold=0.0).eval()
        no_drop.load_state_dict(model.state_dict())
        c = no_drop(batch).logit
    assert torch.equal(a, b) and torch.equal(a, c)  # eval: no sampling, p_cold plays no part


def test_a_dropped_sample_gives_its_individual_row_no_gradient():
    model = akt(p_cold=0.0, use_transfer=False, lambda_orth=0.0).train()
    batch = make_batch()._replace(item=torch.arange(24), item_count=torch.zeros(24))  # all presented cold
    batch = batch._replace(hist_item=torch.zeros_like(batch.hist_item))  # (history rows are trained as usual)
    out = model(batch)
    torch.nn.functional.binary_cross_entropy_with_logits(out.logit, batch.label).backward()
    grad = model.item_emb.individual.weight.grad
    assert torch.equal(grad[batch.item + 1], torch.zeros(24, 8))


def test_content_tower_stands_in_for_cold_items_and_learns_from_head():
    with pytest.raises(InputError, match="content vectors"):
        akt(content_tower=True)
    spec = dataclasses.replace(SPEC, item_content_dim=5)
    model = akt(spec, content_tower=True, p_cold=0.0).train()
    batch = make_batch(spec=spec)
    batch = batch._replace(
        item_count=torch.where(torch.arange(24) < 4, 0.0, batch.item_count)
    )  # 4 cold items
    out = model(batch)
    head = (batch.item_bucket == 0) & (batch.item_count > 0)
    v = model.item_emb.individual(batch.item + 1) + model.item_emb.prefix(batch.item_sid)[:, 1:].sum(1)
    f = model.content(batch.item_content)
    torch.testing.assert_close(out.aux["content"], (f - v).pow(2).sum(-1)[head].mean())
    emb = model.item_emb(batch.item + 1, batch.item_sid, batch.item_count, fallback=f)
    torch.testing.assert_close(emb.individual[:4], f[:4])  # cold items use f(x) in place of v
    model.zero_grad()
    model(batch).aux_loss.backward()
    assert model.content[0].weight.grad.abs().sum() > 0


def test_content_fields_add_the_projected_content_vectors_as_input_fields():
    with pytest.raises(InputError, match="content vectors"):
        akt(content_fields=True)
    spec = dataclasses.replace(SPEC, item_content_dim=5, user_content_dim=3)
    plain, fields = akt(spec), akt(spec, content_fields=True)
    d = SMALL["embed_dim"]
    assert fields.mlp[0].in_features == plain.mlp[0].in_features + 2 * d  # two more fields
    batch = make_batch(spec=spec)
    batch = batch._replace(user_content=torch.randn(24, 3, generator=torch.Generator().manual_seed(3)))
    fields.eval()
    out = fields(batch)
    moved = fields(batch._replace(item_content=batch.item_content + 1.0))  # the logit depends on the content
    assert not torch.allclose(out.logit, moved.logit)
    fields.train().zero_grad()
    fields(batch).logit.sum().backward()
    assert fields.user_proj.weight.grad.abs().sum() > 0 and fields.item_proj.weight.grad.abs().sum() > 0
    item_only = akt(dataclasses.replace(SPEC, item_content_dim=5), content_fields=True)
    assert item_only.user_proj is None and item_only.item_proj is not None


def test_history_content_adds_the_projected_content_to_the_target_and_every_history_item():
    spec = dataclasses.replace(SPEC, item_content_dim=5)
    with pytest.raises(InputError, match="data.history_content"):
        akt(spec, history_content=True)  # the batches carry no history content
    spec = dataclasses.replace(spec, history_content=True)
    model = akt(spec, history_content=True, p_cold=0.0)
    g = torch.Generator().manual_seed(4)
    batch = make_batch(spec=spec)
    with pytest.raises(InputError, match="data.history_content"):
        model(batch)  # a batch built without them
    table = torch.cat([torch.zeros(1, 5), torch.randn(spec.n_items, 5, generator=g)])  # row 0: padding
    batch = batch._replace(**distinct_history_content(table[1:], batch.hist_item))
    model.eval()
    out = model(batch)
    # the same as each position's content projected one by one
    dense = model.content_key(table[batch.hist_item])  # (B, H, d)
    keys = model.content_key(batch.hist_content)[batch.hist_content_index]
    torch.testing.assert_close(keys, dense)
    # the history's content moves the logit through both views; the padding row stays zero
    moved_table = table + torch.cat([torch.zeros(1, 5), torch.ones(spec.n_items, 5)])
    moved = model(batch._replace(**distinct_history_content(moved_table[1:], batch.hist_item)))
    assert not torch.allclose(out.logit[4:], moved.logit[4:])
    assert torch.allclose(out.logit[3], moved.logit[3])  # row 3 has an empty history
    # the same projection keys the target: with it zeroed the model is the plain AKT
    plain = akt(spec, p_cold=0.0).eval()
    with torch.no_grad():
        model.content_key.weight.zero_()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("content_key")})
    assert torch.allclose(model(batch).logit, plain(batch).logit, atol=1e-6)
    model.train().zero_grad()
    with torch.no_grad():
        model.content_key.weight.normal_()
    model(batch).logit.sum().backward()
    assert model.content_key.weight.grad.abs().sum() > 0


def test_bad_arguments_are_input_errors():
    with pytest.raises(InputError, match="cluster_depth"):
        akt(cluster_depth=3)  # users have 2 levels
    with pytest.raises(InputError, match="p_cold"):
        akt(p_cold=1.0)


# -- ablations, configs, checkpoints ------------------------------------------------------------------------
def ablation_configs() -> dict[str, dict]:
    return {
        p.stem: (yaml.safe_load(p.read_text())["model"]["net"].get("init_args") or {})
        for p in sorted(CONFIGS.glob("akt*.yaml"))
    }


def test_every_paper_ablation_has_a_config():
    names = set(ablation_configs())
    want = {"no_cluster", "no_individual", "no_instance_view", "no_cluster_view", "no_gate", "transfer"}
    want |= {"transfer_symmetric", "no_orth", "no_cold_dropout", "no_first_order", "mean_instance"}
    assert {f"akt_{n}" for n in want} <= names and "akt" in names


def test_every_ablation_is_the_shipped_akt_plus_its_own_switches():
    configs = ablation_configs()
    base = configs["akt"]
    assert base == {
        "content_tower": True,
        "content_fields": True,
        "first_order": True,
    }  # chosen on validation (configs/ctr/akt.yaml)
    own = {"akt_no_content": {"content_tower", "content_fields"}, "akt_no_first_order": {"first_order"}}
    for name, flags in configs.items():
        changed = {k for k in base if flags.get(k) != base[k]}
        assert changed == own.get(name, set()), name
    assert configs["akt_mean_instance"]["instance_pool"] == "mean"  # its own switch, off in the shipped AKT


@pytest.mark.parametrize("name", sorted(ablation_configs()))
def test_every_ablation_builds_and_trains_one_batch(name):
    flags = ablation_configs()[name]
    spec = dataclasses.replace(  # for the content variants
        SPEC, item_content_dim=5, user_content_dim=3, history_content=flags.get("history_content", False)
    )
    model = akt(spec, **flags).train()
    g = torch.Generator().manual_seed(2)
    batch = shared_clusters_batch()._replace(
        item_content=torch.randn(12, 5, generator=g), user_content=torch.randn(12, 3, generator=g)
    )
    if spec.history_content:
        table = torch.cat([torch.zeros(1, 5), torch.randn(spec.n_items, 5, generator=g)])
        batch = batch._replace(**distinct_history_content(table[1:], batch.hist_item))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    before = [p.detach().clone() for p in model.parameters()]
    out = model(batch)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(out.logit, batch.label) + out.aux_loss
    loss.backward()
    assert torch.isfinite(loss) and all(
        p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters()
    )
    opt.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    assert ("trans_item" in out.aux) == flags.get("use_transfer", False)
    assert ("gate/item_head" in out.aux) == (
        flags.get("use_gate", True) and flags.get("use_cluster", True) and flags.get("use_individual", True)
    )
    two_views = flags.get("use_instance_view", True) and flags.get("use_cluster_view", True)
    assert ("views/instance_item_head" in out.aux) == (two_views and flags.get("use_view_gate", True))
    both_parts = flags.get("use_cluster", True) and flags.get("use_individual", True)
    assert ("orth" in out.aux) == (flags.get("lambda_orth", 0.01) > 0 and both_parts)


@pytest.mark.parametrize(
    "flags", [{}, {"gate_mode": "convex", "cluster_pool": "attention", "cluster_depth": 2}]
)
def test_checkpoint_round_trip_weights_only(flags, tmp_path):
    torch.manual_seed(0)
    task = CTRTask(functools.partial(AKT, **SMALL, **flags), SPEC, lr=1e-2)
    trainer = L.Trainer(
        accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, max_steps=2, limit_val_batches=0,
    )  # fmt: skip
    trainer.fit(task, train_dataloaders=DataLoader([make_batch(seed=i) for i in range(2)], batch_size=None))
    trainer.save_checkpoint(tmp_path / "akt.ckpt")
    raw = torch.load(tmp_path / "akt.ckpt", weights_only=True)
    assert raw["hyper_parameters"]["net"]["class_path"] == "ctr.models.akt.AKT"
    loaded = CTRTask.load_from_checkpoint(tmp_path / "akt.ckpt")
    batch = make_batch(seed=99)
    task.eval(), loaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(batch).logit, task(batch).logit, rtol=0, atol=0)


# -- the optimised forward against a straightforward one ----------------------------------------------------
def consistent_batch(b: int = 48, seed: int = 0, spec: DataSpec = SPEC) -> Batch:
    """`make_batch` where, as in prepared data, an item has one SID and one train count wherever it appears
    (target or history), and repeats across histories: the history embedding runs on its distinct items."""
    g = torch.Generator().manual_seed(seed + 100)
    sid = codes(spec.item_sid_sizes, (spec.n_items,), g)  # (I, L)
    count = torch.randint(1, int(spec.item_count_max) + 1, (spec.n_items,), generator=g).float()
    count[::4] = 0.0  # a quarter of the items cold: targets and history items without a trained row
    batch = make_batch(b, seed, spec)
    hist = batch.hist_item  # (B, H) item + 1, 0 = pad
    row = (hist - 1).clamp_min(0)
    return batch._replace(
        item_sid=sid[batch.item],
        item_count=count[batch.item],
        hist_item_sid=sid[row] * (hist > 0).unsqueeze(-1),
        hist_item_count=count[row] * (hist > 0),
    )


def reference_scores(att: layers.TargetAttention, hist: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """DIN's score MLP on the concatenated [h, t, h - t, h * t] (B, H, 4d), as the paper writes it."""
    t = target.unsqueeze(1).expand_as(hist)
    return att.score(torch.cat([hist, t, hist - t, hist * t], -1)).squeeze(-1)  # (B, H)


def reference_embedding(emb: layers.ClusterGuidedEmbedding, ids, sid, count, *, fallback=None):
    """A cluster-guided embedding from per-depth lookups, position by position (no fused table index, no
    deduplication): c = sum_{l <= k} E_l[prefix_l], v = E[id] + sum_{l > k} E_l[prefix_l]."""
    prefix = emb.prefix
    index = emb.prefix.prefix_index(sid[..., : prefix.levels])  # (..., L) row of each depth's prefix
    rows = [prefix.table.weight[index[..., level]] for level in range(prefix.levels)]  # L x (..., d)
    c = sum(rows[: emb.k])  # (..., d)
    v = emb.individual.weight[ids] + sum(rows[emb.k :])  # (..., d)
    warm = (count > 0).unsqueeze(-1)
    v = torch.where(warm, v, fallback) if fallback is not None else v * warm
    g = emb.gate(layers.activity(count, emb.count_max))  # residual gate
    return layers.AdaptiveEmbedding(c + g * v, v, c, g)


def reference_forward(model: AKT, batch: Batch):
    """`model(batch)` with the history embedded position by position from per-depth lookups, the attention
    scored on the concatenated features and the content tower run on every sample: what the optimised forward
    must reproduce."""
    emb, att = model.item_emb, model.instance

    def fallback(content, count, bucket):
        return model.content(content) if model.content is not None else None  # (B, d)

    def with_history(ids, sid, count, hist_ids, hist_sid, hist_count, *, fallback=None):
        target = reference_embedding(emb, ids, sid, count, fallback=fallback)
        return target, reference_embedding(emb, hist_ids, hist_sid, hist_count).e

    def forward(hist, target, mask):
        w = torch.softmax(reference_scores(att, hist, target).masked_fill(~mask, -1e9), dim=1) * mask
        return torch.einsum("bh,bhd->bd", w, hist)

    # instance attributes shadow the methods
    emb.with_history, att.forward, model.fallback = with_history, forward, fallback
    try:
        return model(batch)
    finally:
        del emb.with_history, att.forward, model.fallback


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("content", [False, True])
def test_optimised_forward_matches_the_reference_values_and_gradients(training, content):
    spec = dataclasses.replace(
        SPEC, item_content_dim=5 if content else 0, user_content_dim=4 if content else 0
    )
    model = akt(spec, content_tower=content, content_fields=content, p_cold=0.3).train(training)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # move every parameter off its init (zeroed gates would hide a wrong activity term)
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    batch = consistent_batch(spec=spec)  # cold (count 0), head, torso and tail targets and history items
    if content:
        batch = batch._replace(user_content=torch.randn(len(batch.user), 4, generator=g))
    hist = (batch.hist_item, batch.hist_item_sid, batch.hist_item_count)
    assert layers.distinct(*hist, spec.n_items) is not None  # the deduplicated path
    outs, grads = [], []
    for run in (model, functools.partial(reference_forward, model)):
        torch.manual_seed(7)  # the same cold-path draws and dropout masks for both
        out = run(batch)
        model.zero_grad()
        (out.logit.pow(2).mean() + out.aux_loss + out.embed_sq).backward()
        outs.append(out)
        grads.append({k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None})
    fast, ref = outs
    tol = {"rtol": 1e-6, "atol": 1e-6}
    torch.testing.assert_close(fast.logit, ref.logit, **tol)
    torch.testing.assert_close(fast.aux_loss, ref.aux_loss, **tol)
    torch.testing.assert_close(fast.embed_sq, ref.embed_sq, **tol)
    assert fast.aux.keys() == ref.aux.keys()
    for key in fast.aux:
        torch.testing.assert_close(fast.aux[key], ref.aux[key], **tol, equal_nan=True, msg=key)
    assert grads[0].keys() == grads[1].keys()
    for key in grads[0]:
        torch.testing.assert_close(grads[0][key], grads[1][key], rtol=1e-5, atol=1e-6, msg=key)


def test_distinct_finds_each_id_once_and_refuses_ids_with_two_codes_or_counts():
    ids = torch.tensor([[3, 0, 3, 7], [7, 7, 0, 1]])
    sid = torch.stack([ids % 5, ids // 5], -1)  # (2, 4, 2) a function of the id
    count = (ids * 10).float()
    seen = layers.distinct(ids, sid, count, n=9)
    assert seen.ids.tolist() == [0, 1, 3, 7]  # torch.unique's order
    assert torch.equal(seen.ids[seen.inverse], ids.flatten())
    assert torch.equal(seen.codes[seen.inverse], sid.reshape(-1, 2))
    assert torch.equal(seen.count, seen.ids * 10.0)
    other = sid.clone()
    other[1, 1, 1] += 1  # id 7 with a second SID
    assert layers.distinct(ids, other, count, n=9) is None
    count[0, 2] = 29.0  # id 3 with a second count
    assert layers.distinct(ids, sid, count, n=9) is None


def test_with_history_falls_back_to_positions_when_an_id_has_two_sids():
    model = akt().train()
    batch = make_batch()  # random history SIDs: an id repeats with different codes
    emb, history = model.item_emb, (batch.hist_item, batch.hist_item_sid, batch.hist_item_count)
    assert layers.distinct(*history, SPEC.n_items) is None
    target, hist = emb.with_history(batch.item + 1, batch.item_sid, batch.item_count, *history)
    torch.testing.assert_close(hist, emb(*history).e)
    torch.testing.assert_close(target.e, emb(batch.item + 1, batch.item_sid, batch.item_count).e)


def test_content_tower_runs_only_on_the_rows_that_use_it_with_zero_gradients_elsewhere():
    """f(x) is needed where the target is presented cold and, in training, on head rows (L_content); the tower
    sees those rows only, and a batch needing none still gives its parameters zero (not missing) gradients, so
    the optimiser's step is the one a whole-batch tower gives."""
    spec = dataclasses.replace(SPEC, item_content_dim=5)
    model = akt(spec, content_tower=True, p_cold=0.0)
    rows: list[int] = []
    model.content.register_forward_hook(lambda module, args, out: rows.append(args[0].shape[0]))
    batch = consistent_batch(spec=spec)
    warm_tail = batch._replace(
        item_count=batch.item_count.clamp_min(1.0), item_bucket=torch.full_like(batch.item_bucket, 2)
    )
    out = model.train()(warm_tail)
    (out.logit.sum() + out.aux_loss).backward()
    assert rows == [0] and float(out.aux["content"]) == 0.0
    assert all(p.grad is not None and not p.grad.any() for p in model.content.parameters())

    rows.clear()
    head = (batch.item_bucket == layers.HEAD_BUCKET) | (batch.item_count == 0)
    model(batch)
    assert rows == [int(head.sum())] and 0 < rows[0] < len(batch.item)
    rows.clear()
    with torch.no_grad():
        model.eval()(batch)
    assert rows == [int((batch.item_count == 0).sum())] and rows[0] > 0

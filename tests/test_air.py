"""The online AIR intent view: tree merge counts with type weights and order decay, top-down target-aware retrieval
on hand-built embeddings (and how the flat / pooled switches differ), and a vectorised batch of 64."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ctr.models.air import IntentView
from semid.intents import IntentTable, number_nodes, path_rows, read_intents
from semid.io import write_parquet

pytestmark = pytest.mark.usefixtures("one_thread")

PATHS = [
    [["kitchen", "baking", "piping tips"]],  # item 0
    [["kitchen", "baking", "cake pans"]],  # item 1
    [["kitchen", "coffee", "grinders"], ["gifts", "coffee"]],  # item 2
    [["kitchen", "coffee", "grinders"], ["kitchen", "coffee", "filters"]],  # item 3: shares its upper nodes
    None,  # item 4: no intents
]


class Spec:
    n_items = len(PATHS)


@pytest.fixture(scope="module")
def intents(tmp_path_factory) -> IntentTable:
    path = tmp_path_factory.mktemp("air") / "intents.parquet"
    write_parquet(number_nodes(path_rows(np.arange(len(PATHS)), PATHS)), path, {})
    return read_intents(path, n_items=len(PATHS))


def _ids(intents: IntentTable) -> dict[str, int]:
    """'kitchen > baking' -> node id."""
    out = {}
    for paths in intents.item_nodes:
        for path in paths:
            names = [intents.names[n] for n in path if n]
            for level, node in enumerate(n for n in path if n):
                out[" > ".join(names[: level + 1])] = int(node)
    return out


def test_merge_counts_type_weights_and_order_decay(intents):
    view = IntentView(Spec(), intents=intents, dim=4, heads=1, decay=0.5, type_weights=(1.0, 2.0))
    hist = torch.tensor([[3 + 1, 0 + 1, 2 + 1, 0]])  # most recent first: item 3, item 0, item 2, pad
    types = torch.tensor([[1, 0, 0, 0]])
    assert view.event_weights(hist, types).tolist() == [[2.0, 0.5, 0.25, 0.0]]
    tree = view.merge(hist, types)
    ids = _ids(intents)
    weight = torch.zeros(1, intents.n_nodes + 1).scatter_add_(1, tree.nodes, tree.weight)  # (1, N + 1)
    assert tree.first.sum().item() == 8  # distinct nodes of the merged tree
    expected = {
        "kitchen": 2.0 + 0.5 + 0.25,  # item 3 holds it on both paths: counted once
        "kitchen > coffee": 2.0 + 0.25,
        "kitchen > coffee > grinders": 2.0 + 0.25,
        "kitchen > coffee > filters": 2.0,
        "kitchen > baking": 0.5,
        "kitchen > baking > piping tips": 0.5,
        "gifts": 0.25,
        "gifts > coffee": 0.25,
        "kitchen > baking > cake pans": 0.0,
    }
    assert {name: weight[0, ids[name]].item() for name in expected} == expected
    assert weight.sum().item() == pytest.approx(sum(expected.values()))


def _hand_built(view: IntentView, intents: IntentTable) -> None:
    """Node embeddings on axes: the target e2 ('baking') is close to kitchen > baking > piping tips, and the
    leaf 'gifts > coffee' alone is closer still, under a dissimilar root."""
    ids = _ids(intents)
    e = torch.eye(4)
    emb = {
        "kitchen": 0.5 * e[0] + 0.2 * e[1],
        "kitchen > baking": e[1],
        "kitchen > baking > piping tips": e[1],
        "kitchen > baking > cake pans": e[1],
        "kitchen > coffee": e[2],
        "kitchen > coffee > grinders": e[2],
        "kitchen > coffee > filters": e[2],
        "gifts": -e[1],
        "gifts > coffee": 3 * e[1],
    }
    with torch.no_grad():
        for name, vector in emb.items():
            view.node_emb.weight[ids[name]] = vector
        view.target_proj.weight.copy_(torch.eye(4))
        view.target_proj.bias.zero_()


HIST = torch.tensor([[3 + 1, 0 + 1, 2 + 1, 0]])
TARGET = torch.tensor([[0.0, 1.0, 0.0, 0.0]])


@pytest.mark.parametrize(
    ("tree", "beam", "want"),
    [
        (
            True,
            1,
            "kitchen > baking > piping tips",
        ),  # top-down: 'gifts' loses at level 0, its leaf is never seen
        (True, 2, "gifts > coffee"),  # both roots kept: the best chain (mean similarity) wins
        (False, 1, "gifts > coffee"),  # flat list: the single most similar node
    ],
)
def test_retrieval_picks_the_chain_most_similar_to_the_target(intents, tree, beam, want):
    view = IntentView(Spec(), intents=intents, dim=4, heads=1, top_k=1, beam=beam, tree=tree)
    _hand_built(view, intents)
    got = view.retrieve(view.merge(HIST), view.target_proj(TARGET))
    assert got.valid.tolist() == [[True]]
    assert intents.names[got.nodes[0, 0]] == want.split(" > ")[-1]
    assert got.nodes[0, 0].item() == _ids(intents)[want]


def test_retrieval_never_returns_absent_nodes(intents):
    view = IntentView(Spec(), intents=intents, dim=4, heads=1, top_k=3, beam=1)
    _hand_built(view, intents)
    hist = torch.tensor([[1 + 1, 0, 0, 0], [4 + 1, 0, 0, 0]])  # item 1; item 4 (no intents)
    got = view.retrieve(view.merge(hist), view.target_proj(TARGET.expand(2, -1)))
    assert got.valid.tolist() == [[True, False, False], [False, False, False]]
    assert got.nodes[0, 0].item() == _ids(intents)["kitchen > baking > cake pans"]
    assert got.nodes[1].tolist() == [0, 0, 0]


def test_switches_pooling_ignores_the_target_and_event_embeddings_enter_through_support(intents):
    pooled = IntentView(Spec(), intents=intents, dim=4, heads=2, target_aware=False)
    other = torch.tensor([[0.0, 0.0, 5.0, 1.0]])
    assert torch.equal(pooled(HIST, TARGET), pooled(HIST, other))
    flat = IntentView(Spec(), intents=intents, dim=4, heads=2, target_aware=False, tree=False)
    flat.load_state_dict(pooled.state_dict())
    assert not torch.allclose(flat(HIST, TARGET), pooled(HIST, TARGET))  # leaves' chains vs every node

    aware = IntentView(Spec(), intents=intents, dim=4, heads=1, top_k=1, beam=1, event_dim=3)
    _hand_built(aware, intents)
    assert not torch.allclose(aware(HIST, TARGET), aware(HIST, other))
    events = torch.randn(1, 4, 3)
    base = aware(HIST, TARGET, hist_emb=events)
    changed = events.clone()
    changed[0, 0] += 1.0  # item 3: not under the retrieved baking chain
    assert torch.allclose(aware(HIST, TARGET, hist_emb=changed), base)
    changed[0, 1] += 1.0  # item 0: supports kitchen > baking > piping tips
    assert not torch.allclose(aware(HIST, TARGET, hist_emb=changed), base)


@pytest.mark.parametrize(("target_aware", "tree"), [(True, True), (True, False), (False, True)])
def test_a_batch_of_64_is_vectorised_and_rows_are_independent(intents, target_aware, tree):
    gen = torch.Generator().manual_seed(0)
    view = IntentView(
        Spec(), intents=intents, dim=8, target_dim=6, heads=2, top_k=2, target_aware=target_aware, tree=tree
    )
    hist = torch.randint(0, len(PATHS) + 1, (64, 50), generator=gen)  # (B, H), some pads
    hist[0] = 0  # an empty history
    target = torch.randn(64, 6, generator=gen)
    types = torch.zeros_like(hist)
    out = view(hist, target, hist_type=types)
    assert out.shape == (64, 8) and torch.isfinite(out).all()
    one = torch.cat([view(hist[i : i + 1], target[i : i + 1]) for i in (0, 17, 63)])
    assert torch.allclose(out[[0, 17, 63]], one, atol=1e-5)
    out.sum().backward()
    assert view.node_emb.weight.grad is not None and view.node_emb.weight.grad[1:].abs().sum() > 0


# -- AIRNet: the view as a DeepFM field, through the data module and the CLI --------------------------------------


def _write_intents(prepared_dir, path, data_hash):
    """Paths for every item of a prepared dataset: two coarse groups, four fine ones (item id parity / mod 4)."""
    import polars as pl

    from semid import schema as S

    n = pl.read_parquet(prepared_dir / S.ITEMS_FILE).height
    paths = [[[f"g{i % 2}", f"f{i % 4}"]] for i in range(n)]
    write_parquet(number_nodes(path_rows(np.arange(n), paths)), path, {"data_hash": data_hash})
    return n


def test_airnet_adds_the_intent_field_and_its_switches_matter(prepared_dir, tmp_path):
    import dataclasses
    import functools

    from ctr.data import CTRDataModule
    from ctr.models import AIRNet
    from ctr.models.meta import MetaLayers
    from semid import schema as S
    from semid.errors import InputError
    from semid.io import read_meta

    data_hash = read_meta(prepared_dir / S.ITEMS_FILE)["data_hash"]
    _write_intents(prepared_dir, tmp_path / "intents.parquet", data_hash)
    dm = CTRDataModule(str(prepared_dir), batch_size=16, eval_batch_size=16, history_len=5)
    batch = next(iter(dm.loader("val", shuffle=False)))
    nets = {}
    for name, kw in {"air": {}, "no_retrieval": {"target_aware": False}, "flat": {"tree": False}}.items():
        torch.manual_seed(0)
        nets[name] = AIRNet(
            dm.spec, intents=str(tmp_path / "intents.parquet"), embed_dim=4, mlp_dims=(8,), **kw
        )
        nets[name].eval()
    air = nets["air"]
    fields = air.embed(batch)
    assert fields.shape == (16, air.fields.n_fields + 1, 4)
    with torch.no_grad():
        intent = air.view(
            batch.hist_item, air.fields.item(batch.item + 1), hist_emb=air.fields.item(batch.hist_item)
        )
        assert torch.allclose(
            fields[:, -1], intent
        )  # the last field is the view, target = the item id embedding
        logits = {k: n(batch).logit for k, n in nets.items()}
    assert not torch.allclose(logits["air"], logits["no_retrieval"])
    assert not torch.allclose(logits["air"], logits["flat"])
    # hist_type weights events by type (source-domain events, data option source_history)
    air.view.type_weights.copy_(torch.tensor([1.0, 5.0]))
    typed = batch._replace(hist_type=(torch.arange(5) % 2).expand(16, -1) * (batch.hist_item > 0))
    with torch.no_grad():
        assert not torch.allclose(air(typed).logit, air(batch).logit)
    wrapped = MetaLayers(  # the meta layers wrap AIRNet directly (it is a DeepFM)
        dm.spec,
        backbone=functools.partial(
            AIRNet, intents=str(tmp_path / "intents.parquet"), embed_dim=4, mlp_dims=(8,)
        ),
        source="learned",
        knowledge_dim=4,
        use_scenario_level=False,
    )
    assert wrapped(batch).logit.shape == (16,)
    other = dataclasses.replace(dm.spec, data_hash="another")
    with pytest.raises(InputError, match="data_hash"):
        AIRNet(other, intents=str(tmp_path / "intents.parquet"))


def test_sid_airnet_has_both_the_semantic_id_features_and_the_intent_view(prepared_dir, tmp_path):
    from ctr.data import CTRDataModule
    from ctr.models.air import SIDAIRNet
    from semid import schema as S
    from semid.io import read_meta

    _write_intents(
        prepared_dir, tmp_path / "intents.parquet", read_meta(prepared_dir / S.ITEMS_FILE)["data_hash"]
    )
    dm = CTRDataModule(str(prepared_dir), batch_size=16, eval_batch_size=16, history_len=5)
    batch = next(iter(dm.loader("val", shuffle=False)))
    torch.manual_seed(0)
    net = SIDAIRNet(dm.spec, intents=str(tmp_path / "intents.parquet"), embed_dim=4, mlp_dims=(8,)).eval()
    assert net.embed(batch).shape == (16, net.fields.n_fields + 1, 4)  # the intent view is one more field
    with torch.no_grad():
        base = net(batch).logit
        net.item_sid.table.weight.add_(1.0)  # the SID prefix embeddings reach the logit
        assert not torch.allclose(net(batch).logit, base)


AIR_CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs" / "ctr" / "air").glob("*.yaml"))


@pytest.mark.parametrize("path", AIR_CONFIGS, ids=lambda p: p.name)
def test_air_configs_train_one_batch(path, prepared_dir, tmp_path):
    import yaml

    from pipelines.console import plain_argv
    from pipelines.train import cli
    from semid import schema as S
    from semid.io import read_meta

    _write_intents(
        prepared_dir, tmp_path / "intents.parquet", read_meta(prepared_dir / S.ITEMS_FILE)["data_hash"]
    )
    args = [
        "--config", str(path.parents[1] / "common" / "ml-100k.yaml"), "--config", str(path),
        "--data.data_dir", str(prepared_dir), "--model.net.init_args.intents", str(tmp_path / "intents.parquet"),
        "--trainer.fast_dev_run", "true", "--trainer.enable_progress_bar", "false",
        "--trainer.logger", "false", "--trainer.default_root_dir", str(tmp_path),
    ]  # fmt: skip
    with plain_argv():
        c = cli(args, run=False)
    net = yaml.safe_load(path.read_text())["model"]["net"]
    for key, value in net.get("init_args", {}).items():
        assert getattr(c.model.net.view, key) == value
    c.trainer.fit(c.model, datamodule=c.datamodule)
    assert c.trainer.state.finished

"""Multi-scenario CTR (issue 16): scenario rules, LLM4MSR prompts and cached vectors, STAR, and the meta layers
around a backbone (exact start, gradients, switches, knowledge sources, checkpoints)."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import lightning as L
import numpy as np
import polars as pl
import pytest
import torch
import yaml
from tiny import TINY_SPEC
from torch.utils.data import DataLoader

from ctr.models.deepfm import DeepFM
from ctr.models.din import DIN
from ctr.models.meta import Knowledge, MetaLayers, MetaLinear
from ctr.models.star import STAR, PartitionedNorm
from ctr.module import CTRTask
from semid import data, synthetic
from semid import scenarios as SC
from semid import schema as S
from semid.errors import InputError
from semid.io import write_parquet
from semid.knowledge import LLM, LLMCache, LLMConfig, msr

pytestmark = pytest.mark.usefixtures("one_thread")

SPEC = dataclasses.replace(TINY_SPEC, n_scenarios=3, scenario_names=("a", "b", "c"))
N_SCEN = 3
AGE = SC.ScenarioRule(
    side="user", column="age", groups={"young": ["18-24"], "mid": ["25-34"], "old": ["35-44"]}
)


def make_batch(b: int = 32, seed: int = 0):
    from tests.test_models import make_batch as base

    batch = base(b, seed, SPEC)
    return batch._replace(scenario=batch.user % N_SCEN)  # as the data module serves scenarios.parquet below


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """scenarios.parquet (user u -> u % 3) and random user / scenario vectors (K = 12) for SPEC."""
    root = tmp_path_factory.mktemp("msr")
    table = pl.DataFrame({S.USER: range(SPEC.n_users)}, schema={S.USER: pl.Int32}).with_columns(
        (pl.col(S.USER) % N_SCEN).cast(pl.Int32).alias(SC.SCENARIO)
    )
    write_parquet(
        table, root / SC.SCENARIOS_FILE, {"kind": "scenarios", "key": S.USER, "names": ["a", "b", "c"]}
    )
    rng = np.random.default_rng(0)
    users = msr.Knowledge(table.select(S.USER), [""] * SPEC.n_users)
    scen = msr.Knowledge(pl.DataFrame({SC.SCENARIO: [0, 1, 2]}, schema={SC.SCENARIO: pl.Int32}), [""] * 3)
    msr.write_vectors(root / "u.parquet", users, rng.normal(size=(30, 12)) * 40, kind="user", meta={})
    msr.write_vectors(root / "s.parquet", scen, rng.normal(size=(3, 12)), kind="scenario", meta={})
    return {
        "scenarios": str(root / SC.SCENARIOS_FILE),
        "user": str(root / "u.parquet"),
        "scen": str(root / "s.parquet"),
    }


def star(files, **kw) -> functools.partial:
    return functools.partial(STAR, embed_dim=4, mlp_dims=(8,), aux_dims=(4,), **kw)


def meta(files, backbone, **kw) -> functools.partial:
    args = dict(user_vectors=files["user"], scenario_vectors=files["scen"])
    return functools.partial(MetaLayers, backbone=backbone, **{**args, "scenario_dims": (8,), **kw})


# -- scenarios ------------------------------------------------------------------------------------------------


def test_ml1m_age_rule_groups_codes_and_labels():
    users = pl.DataFrame(
        {S.USER: [0, 1, 2, 3, 4, 5], "age": [["1"], ["under 18"], ["18-24"], ["25"], ["45-49"], ["56"]]},
        schema={S.USER: pl.Int32, "age": S.FEATURE_DTYPE},
    )
    got = SC.assign(users, SC.RULES["ml-1m-age"])
    assert got.names == ("age_under_25", "age_25_34", "age_35_plus")
    assert got.table[SC.SCENARIO].to_list() == [0, 0, 0, 1, 2, 2]
    bad = users.with_columns(pl.Series("age", [["1"], ["7"], ["7"], ["25"], ["56"], ["x"]]))
    with pytest.raises(InputError, match=r"3 users have values in no scenario group: \['7', 'x'\]"):
        SC.assign(bad, SC.RULES["ml-1m-age"], file="users.parquet")
    rule = SC.ScenarioRule(side="user", column="age", groups={"a": ["1"], "rest": []}, default="rest")
    assert SC.assign(bad, rule).table[SC.SCENARIO].to_list() == [0, 1, 1, 1, 1, 1]


def test_item_domain_rule_and_with_scenario():
    items = pl.DataFrame(
        {S.ITEM: [0, 1, 2], "domain": [["kitchen"], ["food"], ["kitchen"]]},
        schema={S.ITEM: pl.Int32, "domain": S.FEATURE_DTYPE},
    )
    scen = SC.assign(items, SC.RULES["amazon-domain"])
    inter = pl.DataFrame({S.USER: [5, 5, 6], S.ITEM: [2, 1, 0]}, schema={S.USER: pl.Int32, S.ITEM: pl.Int32})
    assert SC.with_scenario(inter, scen)[SC.SCENARIO].to_list() == [1, 0, 1]
    with pytest.raises(InputError, match="no column 'age'"):
        SC.assign(items, SC.ScenarioRule(side="item", column="age", groups={"a": ["x"]}))


# -- prompts and vectors --------------------------------------------------------------------------------------


class CountingBackend:
    fingerprint = "fake-msr"

    def __init__(self) -> None:
        self.computed = 0

    def hidden(self, prompts: list[str], pooling: str) -> np.ndarray:
        self.computed += len(prompts)
        return np.array([[len(p), sum(map(ord, p)) % 97, 1.0, 2.0] for p in prompts], dtype=np.float32)

    def generate(self, prompts, schema, params):  # pragma: no cover - not used here
        raise AssertionError


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    cfg = synthetic.SyntheticConfig(n_users=20, n_items=15, n_interactions=300)
    raw = synthetic.write(cfg, tmp_path_factory.mktemp("raw_msr"))
    p = data.build(
        data.RawFiles(raw["inter"], raw["item"], raw["user"]),
        synthetic.columns(),
        data.PrepareConfig(),
        name="s",
    )
    return data.write(p, tmp_path_factory.mktemp("prep_msr") / "s")


def test_prompts_are_deterministic_and_cover_every_user(prepared):
    scen = SC.from_prepared(prepared, AGE)
    train, items, users = (
        pl.read_parquet(prepared / f) for f in ("train.parquet", S.ITEMS_FILE, S.USERS_FILE)
    )
    cfg = msr.PromptConfig(top_k=2, recent=3)
    a = msr.scenario_prompts(train, items, scen, cfg)
    assert (
        a.prompts
        == msr.scenario_prompts(train.sample(fraction=1.0, shuffle=True, seed=1), items, scen, cfg).prompts
    )
    assert a.keys["name"].to_list() == ["young", "mid", "old"]
    assert "Focus on scenario mid" in a.prompts[1] and "- old:" in a.prompts[0]
    u = msr.user_prompts(train, items, users, scen, cfg)
    assert u.keys[S.USER].to_list() == list(range(users.height))
    liked = train.filter(pl.col(S.LABEL) == 1)
    user0 = liked.filter(pl.col(S.USER) == 0).sort(S.TIMESTAMP, S.ITEM).tail(3)
    titles = items.filter(pl.col(S.ITEM).is_in(user0[S.ITEM].to_list()))[S.TEXT].str.slice(0, 60).to_list()
    assert all(t in u.prompts[0] for t in titles)


def test_vectors_cached_and_versioned(prepared, tmp_path):
    backend = CountingBackend()
    llm = LLM(LLMConfig(batch_size=8), LLMCache(tmp_path / "c.sqlite"), backend=backend, progress=False)
    paths = msr.build(prepared, AGE, tmp_path / "k", msr.llm_embed(llm), source="llm", fingerprint="fake-msr")
    n_users = pl.read_parquet(prepared / S.USERS_FILE).height
    assert backend.computed == N_SCEN + n_users
    first = [pl.read_parquet(p) for p in paths]
    msr.build(prepared, AGE, tmp_path / "k2", msr.llm_embed(llm), source="llm", fingerprint="fake-msr")
    assert backend.computed == N_SCEN + n_users  # second call: every vector from the cache, no model
    assert all(
        a.equals(pl.read_parquet(p))
        for a, p in zip(
            first, (tmp_path / "k2" / f for f in (msr.SCENARIO_VECTORS_FILE, msr.USER_VECTORS_FILE))
        )
    )
    vectors, info = msr.read_vectors(paths[1], kind="user", n=n_users)
    assert vectors.shape == (n_users, 4) and info["template_version"] == msr.TEMPLATE_VERSION
    # a new template version is a new cache key: recomputed, not served stale
    llm.hidden(["x"], task="msr_user", template_version=msr.TEMPLATE_VERSION)
    before = backend.computed
    llm.hidden(["x"], task="msr_user", template_version="msr-0")
    assert backend.computed == before + 1
    with pytest.raises(InputError, match="every user 0..4 needs exactly one"):
        msr.read_vectors(paths[1], kind="user", n=5)
    with pytest.raises(InputError, match="not a scenario vector table"):
        msr.read_vectors(paths[1], kind="scenario", n=3)


# -- STAR -----------------------------------------------------------------------------------------------------


def test_star_scenario_weights_only_affect_their_scenario(files):
    torch.manual_seed(0)
    net = star(files, dropout=0.0)(SPEC).eval()
    batch = make_batch()
    s = batch.user % N_SCEN
    before = net(batch).logit
    with torch.no_grad():
        net.layers[0].weight_s[1].mul_(3.0)
        net.norm.beta_s[1].add_(0.5)
    after = net(batch).logit
    assert torch.equal(before[s != 1], after[s != 1])
    assert not torch.isclose(before[s == 1], after[s == 1]).any()


def test_partitioned_norm_uses_each_scenarios_statistics():
    torch.manual_seed(0)
    pn = PartitionedNorm(2, 2, momentum=1.0)
    z = torch.tensor([[0.0, 0.0], [2.0, 2.0], [10.0, 10.0], [14.0, 14.0]])
    s = torch.tensor([0, 0, 1, 1])
    out = pn(z, s)  # train: each scenario standardised on its own rows
    torch.testing.assert_close(
        out, torch.tensor([[-1.0, -1.0], [1.0, 1.0], [-1.0, -1.0], [1.0, 1.0]]), atol=1e-4, rtol=0
    )
    torch.testing.assert_close(pn.running_mean, torch.tensor([[1.0, 1.0], [12.0, 12.0]]))
    pn.eval()
    torch.testing.assert_close(pn(torch.tensor([[12.0, 12.0]]), torch.tensor([1])), torch.zeros(1, 2))


# -- meta layers ----------------------------------------------------------------------------------------------


BACKBONES = {
    "star": lambda f: star(f, dropout=0.0),
    "deepfm": lambda f: functools.partial(DeepFM, embed_dim=4, mlp_dims=(8,), dropout=0.0),
    "din": lambda f: functools.partial(DIN, embed_dim=4, mlp_dims=(8,), dropout=0.0, attention_dims=(4,)),
}
SWITCHES = [(True, True), (True, False), (False, True)]


@pytest.mark.parametrize("name", list(BACKBONES))
@pytest.mark.parametrize("source", ["llm", "learned"])
def test_meta_layers_start_exactly_at_the_backbone(files, name, source):
    batch = make_batch()
    torch.manual_seed(0)
    bare = BACKBONES[name](files)(SPEC).eval()
    for user, scen in SWITCHES:
        torch.manual_seed(0)  # the backbone is built first inside MetaLayers: same weights as `bare`
        wrapped = meta(
            files, BACKBONES[name](files), source=source, use_user_level=user, use_scenario_level=scen
        )
        net = wrapped(SPEC).eval()
        assert (net.user_knowledge is not None, net.scenario_knowledge is not None) == (user, scen)
        assert torch.equal(net(batch).logit, bare(batch).logit)


def test_deepfm_family_exposes_its_fields_and_meta_layers_wrap_it_directly(files):
    torch.manual_seed(0)
    net = DIN(SPEC, embed_dim=4, mlp_dims=(8,), attention_dims=(4,)).eval()
    batch = make_batch()
    assert torch.equal(net.head(net.embed(batch), batch).logit, net(batch).logit)
    assert net.embed(batch).shape == (32, 3 + 2 + 1, 4)
    wrapped = meta(files, functools.partial(DIN, embed_dim=4, mlp_dims=(8,), attention_dims=(4,)))(SPEC)
    assert type(wrapped.backbone) is DIN  # no adapter in between


def test_multi_scenario_networks_need_scenarios(files):
    import dataclasses

    bare = dataclasses.replace(SPEC, n_scenarios=0, scenario_names=())
    with pytest.raises(InputError, match="STAR needs scenarios"):
        star(files)(bare)
    with pytest.raises(InputError, match="MetaLayers needs scenarios"):
        meta(files, BACKBONES["deepfm"](files))(bare)
    net = star(files)(SPEC)
    with pytest.raises(InputError, match="carries no scenario"):
        net(make_batch()._replace(scenario=torch.zeros(0, dtype=torch.long)))


def test_meta_gradients_reach_generators_and_knowledge_matters(files):
    torch.manual_seed(0)
    net = meta(files, BACKBONES["star"](files))(SPEC)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    batch = make_batch()
    for _ in range(3):  # zero-started B(k) and output layer: each step opens the next link of the chain
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(net(batch).logit, batch.label)
        loss.backward()
        opt.step()
    for layer in (net.user_layer, net.tower[0], net.tower_out):
        assert layer.gen_a.weight.grad.abs().sum() > 0 and layer.gen_b.weight.grad.abs().sum() > 0
    assert net.user_layer.gen_b.weight.grad.abs().sum() > 0  # B(z) starts at 0: its generator reads z first
    assert net.scenario_knowledge.proj.weight.grad.abs().sum() > 0
    # the frozen LLM vectors are buffers: not trained; the learned control's table is
    assert "user_knowledge.frozen" in dict(net.named_buffers())
    learned = meta(files, BACKBONES["star"](files), source="learned")(SPEC)
    assert learned.user_knowledge.table.weight.shape == (SPEC.n_users, 12)  # same K as the LLM file


def test_meta_refuses_missing_vectors_and_bad_backbone(files):
    with pytest.raises(InputError, match="needs user_vectors"):
        MetaLayers(
            SPEC,
            backbone=BACKBONES["star"](files),
            scenario_vectors=files["scen"],
        )
    from ctr.models.floor import Floor

    with pytest.raises(InputError, match="does not expose its input fields"):
        MetaLayers(SPEC, backbone=Floor, source="learned", knowledge_dim=4)


def reference_meta_linear(layer: MetaLinear, x, z, group=None):
    """The layer as its formula reads: build each sample's full W = W0 + A(z) B(z) (in, out), then x W + b0."""
    a = layer.gen_a(z).view(-1, layer.in_dim, layer.rank)  # (B or G, in, r)
    b = layer.gen_b(z).view(-1, layer.rank, layer.out_dim)  # (B or G, r, out)
    w = layer.weight + a @ b  # (B or G, in, out)
    if group is not None:
        w = w[group]  # (B, in, out): the sample's group's matrix
    rows = []
    for i in range(x.shape[0]):  # one sample at a time: x_i (..., in) @ W_i (in, out)
        rows.append(x[i] @ w[i] + layer.bias)
    return torch.stack(rows)


@pytest.mark.parametrize("case", ["per_sample_fields", "per_sample_flat", "per_group"])
def test_meta_linear_matches_the_full_matrix_reference(case):
    """The low-rank, masked code paths give the outputs and gradients of the straightforward per-sample W."""
    torch.manual_seed(0)
    layer = MetaLinear(6, 5, 3, 2, zero=True)
    for p in layer.parameters():  # away from the exact-start zeros, so every term counts
        torch.nn.init.normal_(p)
    n, grouped = 17, case == "per_group"
    group = torch.randint(0, 4, (n,)) if grouped else None
    x = torch.randn(n, 3, 6) if case == "per_sample_fields" else torch.randn(n, 6)  # fields share a code
    z = torch.randn(4 if grouped else n, 3)
    outs, grads = [], []
    for fn in (layer, functools.partial(reference_meta_linear, layer)):
        inputs = [x.clone().requires_grad_(), z.clone().requires_grad_()]
        outs.append(fn(*inputs, group))
        g_out = torch.randn(outs[-1].shape, generator=torch.Generator().manual_seed(1))
        grads.append(torch.autograd.grad(outs[-1], [*inputs, *layer.parameters()], g_out))
    assert outs[0].shape == outs[1].shape == (*x.shape[:-1], 5)
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-5)
    for got, ref in zip(*grads):  # x, z, W0, b0 and both generators
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    if grouped:  # a sample only sees its own group: changing another group's code leaves it unchanged
        z2 = z.clone()
        z2[(group[0] + 1) % 4] += 1.0
        with torch.no_grad():
            assert torch.equal(layer(x, z2, group)[0], layer(x, z, group)[0])


def test_knowledge_rows_are_the_projected_standardised_vectors():
    """Frozen vectors: each row standardised, then tanh(v P + c); a subset of rows equals those rows of all."""
    torch.manual_seed(0)
    vectors = np.random.default_rng(0).normal(size=(9, 7)) * 5 + 3
    k = Knowledge(vectors, 9, 7, 4, learned=False)
    rows = torch.tensor([3, 0, 3, 8])
    v = torch.tensor(vectors, dtype=torch.float32)
    v = (v - v.mean(1, keepdim=True)) / v.std(1, keepdim=True)
    torch.testing.assert_close(k(rows), torch.tanh(v[rows] @ k.proj.weight.t() + k.proj.bias))
    torch.testing.assert_close(k()[rows], k(rows))


def test_user_components_keep_the_top_principal_directions_whitened():
    """components = k: the frozen table is the standardised rows' scores on their k largest principal directions,
    each with unit variance (checked against numpy's SVD up to each direction's sign); the explained share is the
    kept eigenvalues' share; a learned table gets width k; k outside 1..K is refused."""
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(200, 12)) * np.linspace(5.0, 0.1, 12) + 3  # distinct variances: a unique basis
    k = Knowledge(vectors, 200, 12, 4, learned=False, components=3)
    v = torch.tensor(vectors, dtype=torch.float32)
    v = ((v - v.mean(1, keepdim=True)) / v.std(1, keepdim=True)).double().numpy()
    v -= v.mean(0)
    u, sv, _ = np.linalg.svd(v, full_matrices=False)
    want = u[:, :3] * np.sqrt(len(v) - 1)  # whitened scores
    got = k.frozen.double().numpy()
    assert got.shape == (200, 3) and k.proj.in_features == 3
    np.testing.assert_allclose(np.abs(got), np.abs(want), atol=1e-4)
    np.testing.assert_allclose(got.std(0, ddof=1), 1.0, atol=1e-4)
    assert k.explained == pytest.approx(float((sv[:3] ** 2).sum() / (sv**2).sum()), rel=1e-6)
    assert Knowledge(None, 200, 12, 4, learned=True, components=3).table.weight.shape == (200, 3)
    assert Knowledge(vectors, 200, 12, 4, learned=False, components=12).explained == pytest.approx(1.0)
    with pytest.raises(InputError, match="components=0"):
        Knowledge(vectors, 200, 12, 4, learned=False, components=0)


def test_meta_layers_read_the_reduced_user_table(files):
    """user_components reaches the user level only (the scenario vectors keep their width) and trains end to end."""
    torch.manual_seed(0)
    net = meta(files, BACKBONES["deepfm"](files), user_components=5)(SPEC)
    assert net.user_knowledge.frozen.shape == (SPEC.n_users, 5) and net.user_knowledge.explained < 1.0
    assert net.scenario_knowledge.frozen.shape[1] == 12
    net(make_batch()).logit.sum().backward()
    assert net.user_layer.gen_b.weight.grad.abs().sum() > 0  # B(z) starts at 0: its generator reads z first


def test_meta_layers_compute_the_two_level_formula(files):
    """The wrapped forward and its gradients equal the module docstring's equations written out sample by sample:
    z = tanh(standardised(k) P + c); fields = e + e (W0 + A(z_u) B(z_u)) + b0; logit = the backbone's head on the
    fields + the scenario tower (layers W0 + A(z_s) B(z_s)) on the flat fields. The oracle for any faster code."""
    torch.manual_seed(0)
    net = meta(files, BACKBONES["deepfm"](files))(SPEC).eval()
    with torch.no_grad():  # away from the exact-start zeros, so every term of both levels counts
        for name, p in net.named_parameters():
            if not name.startswith("backbone."):
                p.normal_(0.0, 0.3)
    batch = make_batch()
    s = batch.scenario

    def codes(path: str, kind: str, n: int, proj: torch.nn.Linear) -> torch.Tensor:
        v = torch.from_numpy(msr.read_vectors(path, kind=kind, n=n)[0])  # (n, K)
        v = (v - v.mean(1, keepdim=True)) / v.std(1, keepdim=True)
        return torch.tanh(v @ proj.weight.t() + proj.bias)  # (n, h)

    def reference() -> torch.Tensor:
        z_u = codes(files["user"], "user", SPEC.n_users, net.user_knowledge.proj)[batch.user]  # (B, h)
        z_s = codes(files["scen"], "scenario", N_SCEN, net.scenario_knowledge.proj)  # (S, h)
        e = net.backbone.embed(batch)  # (B, F, d)
        fields = e + reference_meta_linear(net.user_layer, e, z_u)  # (B, F, d)
        h = fields.flatten(1)  # (B, D)
        for layer in net.tower:
            h = torch.relu(reference_meta_linear(layer, h, z_s, s))  # (B, hidden)
        tower = reference_meta_linear(net.tower_out, h, z_s, s).squeeze(-1)  # (B,)
        assert tower.abs().min() > 1e-3  # the scenario level contributes
        return net.backbone.head(fields, batch).logit + tower

    outs, grads = [], []
    for fn in (lambda: net(batch).logit, reference):
        outs.append(fn())
        grads.append(torch.autograd.grad(outs[-1].square().sum(), list(net.parameters())))
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-5)
    for (name, _), got, ref in zip(net.named_parameters(), *grads):  # every parameter, backbone included
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")


def test_checkpoint_round_trip_weights_only(files, tmp_path):
    torch.manual_seed(0)
    task = CTRTask(meta(files, BACKBONES["star"](files)), SPEC, lr=1e-2)
    t = L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        max_steps=3,
        limit_val_batches=0,
    )
    t.fit(task, train_dataloaders=DataLoader([make_batch(seed=i) for i in range(3)], batch_size=None))
    t.save_checkpoint(tmp_path / "m.ckpt")
    raw = torch.load(tmp_path / "m.ckpt", weights_only=True)
    assert raw["hyper_parameters"]["net"]["init_args"]["backbone"]["class_path"] == "ctr.models.star.STAR"
    loaded = CTRTask.load_from_checkpoint(tmp_path / "m.ckpt")
    batch = make_batch(seed=9)
    task.eval(), loaded.eval()
    with torch.no_grad():
        assert torch.equal(loaded(batch).logit, task(batch).logit)
        assert not torch.equal(
            task(batch).logit, task.net.backbone(batch).logit
        )  # it trained away from the backbone


# -- configs through the CLI ------------------------------------------------------------------------------------

MSR_CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs" / "ctr" / "msr").glob("*.yaml"))


@pytest.mark.parametrize("path", MSR_CONFIGS, ids=lambda p: p.name)
def test_msr_configs_train_one_batch_with_per_scenario_metrics(path, prepared_dir, tmp_path):
    """Every configs/ctr/msr YAML trains and tests one batch on a prepared dataset with scenarios.parquet (and the
    vector files where its source needs them: 96-d, wider than meta_llm_pc64's 64 components); validation and test
    report every scenario."""
    from pipelines.console import plain_argv
    from pipelines.train import cli

    rule = SC.ScenarioRule(
        side="user", column="age", groups={"young": ["18-24"], "mid": ["25-34"], "rest": []}, default="rest"
    )
    scen = SC.write(prepared_dir, rule, tmp_path / SC.SCENARIOS_FILE)
    n_users = pl.read_parquet(prepared_dir / S.USERS_FILE).height
    rng = np.random.default_rng(0)
    users = msr.Knowledge(pl.DataFrame({S.USER: range(n_users)}, schema={S.USER: pl.Int32}), [""] * n_users)
    scens = msr.Knowledge(pl.DataFrame({SC.SCENARIO: [0, 1, 2]}, schema={SC.SCENARIO: pl.Int32}), [""] * 3)
    msr.write_vectors(tmp_path / "u.parquet", users, rng.normal(size=(n_users, 96)), kind="user", meta={})
    msr.write_vectors(tmp_path / "s.parquet", scens, rng.normal(size=(3, 96)), kind="scenario", meta={})
    common = path.parents[1] / "common" / "ml-100k.yaml"
    args = [
        "--config", str(common), "--config", str(path),
        "--data.data_dir", str(prepared_dir), "--data.scenarios", str(tmp_path / SC.SCENARIOS_FILE),
        "--trainer.fast_dev_run", "true", "--trainer.enable_progress_bar", "false",
        "--trainer.logger", "false", "--trainer.default_root_dir", str(tmp_path),
    ]  # fmt: skip
    yaml_net = yaml.safe_load(path.read_text())["model"]["net"]
    source = yaml_net.get("init_args", {})
    if source.get("source") in ("llm", "prompt_text"):
        args += ["--model.net.init_args.user_vectors", str(tmp_path / "u.parquet")]
        args += ["--model.net.init_args.scenario_vectors", str(tmp_path / "s.parquet")]
    with plain_argv():
        c = cli(args, run=False)
    assert type(c.model.net).__name__ == yaml_net["class_path"].rsplit(".", 1)[1]
    assert c.model.spec.scenario_names == scen.names == ("young", "mid", "rest")
    c.trainer.fit(c.model, datamodule=c.datamodule)
    assert {f"val/scenario/{n}/auc" for n in scen.names} <= set(c.trainer.callback_metrics)
    result = c.trainer.test(c.model, datamodule=c.datamodule, verbose=False)[0]
    assert {"test/gauc", *(f"test/scenario/{n}/logloss" for n in scen.names)} <= set(result)

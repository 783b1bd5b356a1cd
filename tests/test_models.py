"""Every CTR model on random Batches: shapes, learning, Lightning wiring, checkpoints, predictions, AKT asymmetry."""

from __future__ import annotations

import lightning as L
import polars as pl
import pytest
import torch
from torch.utils.data import DataLoader

from ctr.batch import Batch, DataSpec
from ctr.models import AKT, DCNv2, DeepFM, SIDFeatures
from ctr.module import CTRTask, PredictionWriter
from semid import schema
from semid.errors import InputError
from semid.io import read_meta

SPEC = DataSpec(
    n_users=30,
    n_items=40,
    user_feature_names=("age", "gender"),
    item_feature_names=("genre",),
    user_feature_vocab=(5, 3),
    item_feature_vocab=(7,),
    user_sid_sizes=(4, 3),
    item_sid_sizes=(5, 4, 3),
    history_len=6,
    user_count_max=50.0,
    item_count_max=80.0,
)
SMALL = {"embed_dim": 8, "mlp_dims": (16,)}
FAMILIES = {
    "deepfm": (DeepFM, SMALL),
    "dcnv2": (DCNv2, SMALL),
    "dcnv2_parallel_lowrank": (DCNv2, {**SMALL, "structure": "parallel", "low_rank": 4}),
    "sid_features": (SIDFeatures, SMALL),
    "akt": (AKT, {"embed_dim": 8, "view_dim": 8, "tower_dims": (16,), "head_dims": (8,)}),
}
AKT_SMALL = FAMILIES["akt"][1]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models run on one thread


def codes(sizes: tuple[int, ...], shape: tuple[int, ...], g: torch.Generator) -> torch.Tensor:
    return torch.stack([torch.randint(0, s, shape, generator=g) for s in sizes], -1)  # (*shape, L)


def make_batch(b: int = 32, seed: int = 0, spec: DataSpec = SPEC) -> Batch:
    g = torch.Generator().manual_seed(seed)
    hist = torch.randint(0, spec.n_items + 1, (b, spec.history_len), generator=g)
    hist[:3, 2:] = 0  # some short histories
    hist[3] = 0  # and an empty one
    user_count = torch.randint(0, int(spec.user_count_max) + 1, (b,), generator=g).float()
    item_count = torch.randint(0, int(spec.item_count_max) + 1, (b,), generator=g).float()
    return Batch(
        user=torch.randint(0, spec.n_users, (b,), generator=g),
        item=torch.randint(0, spec.n_items, (b,), generator=g),
        label=torch.randint(0, 2, (b,), generator=g).float(),
        user_sid=codes(spec.user_sid_sizes, (b,), g),
        item_sid=codes(spec.item_sid_sizes, (b,), g),
        user_count=user_count,
        item_count=item_count,
        user_feats=torch.randint(0, 3, (b, 2, 2), generator=g),
        item_feats=torch.randint(0, 7, (b, 1, 3), generator=g),
        hist_item=hist,
        hist_item_sid=codes(spec.item_sid_sizes, (b, spec.history_len), g) * (hist > 0).unsqueeze(-1),
        user_bucket=torch.randint(0, 4, (b,), generator=g),
        item_bucket=torch.randint(0, 4, (b,), generator=g),
    )


def build(name: str, **overrides) -> CTRTask:
    cls, args = FAMILIES[name]
    torch.manual_seed(0)
    return cls(SPEC, **{**args, "embedding_l2": 1e-4, **overrides})


def loader(n: int = 3, seed: int = 0) -> DataLoader:
    return DataLoader([make_batch(seed=seed + i) for i in range(n)], batch_size=None)


def trainer(**kwargs) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )


@pytest.mark.parametrize("name", list(FAMILIES))
def test_forward_shapes_and_learning(name):
    model = build(name, lr=1e-2)
    batch = make_batch()
    out = model(batch)
    assert out.logit.shape == (32,) and out.aux_loss.shape == ()
    assert torch.isfinite(out.logit).all() and torch.isfinite(out.embed_sq)  # embedding_l2 > 0 in build()
    loss, bce = model.loss(batch, out)
    torch.testing.assert_close(loss, bce + out.aux_loss + 1e-4 * out.embed_sq)
    torch.testing.assert_close(
        bce, torch.nn.functional.binary_cross_entropy_with_logits(out.logit, batch.label)
    )

    def bce() -> float:
        model.eval()
        with torch.no_grad():
            return float(
                torch.nn.functional.binary_cross_entropy_with_logits(model(batch).logit, batch.label)
            )

    before = bce()
    opt = model.configure_optimizers()
    for _ in range(30):
        model.train()
        loss, _ = model.loss(batch, model(batch))
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert bce() < before - 0.05


@pytest.mark.parametrize("name", list(FAMILIES))
def test_fast_dev_run_fit_validate_test_predict(name, tmp_path):
    model = build(name)
    t = trainer(fast_dev_run=True, callbacks=[PredictionWriter(tmp_path / "pred.parquet")])
    t.fit(model, train_dataloaders=loader(), val_dataloaders=loader(seed=10))
    assert {"train/loss", "val/auc", "val/gauc", "val/logloss"} <= set(t.callback_metrics)
    metrics = t.test(model, dataloaders=loader(seed=20), verbose=False)[0]
    assert {"test/auc", "test/gauc", "test/item_tail/auc", "test/user_cold/n"} <= set(metrics)
    assert metrics["test/n"] == 32  # fast_dev_run: one batch
    t.predict(model, dataloaders=loader(seed=30), return_predictions=False)
    assert (tmp_path / "pred.parquet").exists()


def test_prediction_writer_schema_and_values(tmp_path):
    model = build("deepfm").eval()
    path = tmp_path / "out" / "predictions.parquet"
    batches = [make_batch(seed=40), make_batch(b=7, seed=41)]
    trainer(callbacks=[PredictionWriter(path)]).predict(
        model, dataloaders=DataLoader(batches, batch_size=None), return_predictions=False
    )
    df = pl.read_parquet(path)
    assert df.schema == schema.PREDICTIONS and df.height == 39
    both = Batch(*(torch.cat(parts) for parts in zip(*batches)))
    with torch.no_grad():
        score = torch.sigmoid(model(both).logit)
    assert df[schema.USER].to_list() == both.user.tolist()
    assert df[schema.ITEM_BUCKET].to_list() == [schema.BUCKETS[i] for i in both.item_bucket.tolist()]
    assert df[schema.LABEL].to_list() == both.label.int().tolist()
    torch.testing.assert_close(torch.tensor(df[schema.SCORE].to_list()), score)
    assert read_meta(path)["model"] == "DeepFM"


@pytest.mark.parametrize("name", ["deepfm", "akt"])
def test_checkpoint_round_trip_identical_logits(name, tmp_path):
    model = build(name)
    t = trainer(max_steps=3, limit_val_batches=0)
    t.fit(model, train_dataloaders=loader())
    t.save_checkpoint(tmp_path / "m.ckpt")
    cls = type(model)
    loaded = cls.load_from_checkpoint(tmp_path / "m.ckpt")  # weights_only=True: the spec is stored as a dict
    assert loaded.spec == SPEC and loaded.hparams.embed_dim == model.hparams.embed_dim
    batch = make_batch(seed=99)
    model.eval(), loaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(batch).logit, model(batch).logit, rtol=0, atol=0)
    if name == "akt":  # buffers (prototypes, history activity) are part of the state
        torch.testing.assert_close(loaded.item_protos.prototypes, model.item_protos.prototypes)
        assert loaded.item_count_seen.sum() > 0


def test_sparse_embeddings_manual_optimisation():
    model = build("sid_features", sparse_embeddings=True)
    before = model.fields.item.weight.detach().clone()
    mlp_before = model.mlp[0].weight.detach().clone()
    opts = model.configure_optimizers()
    assert isinstance(opts[0], torch.optim.SparseAdam) and not model.automatic_optimization
    trainer(max_steps=2, limit_val_batches=0).fit(model, train_dataloaders=loader())
    touched = make_batch(seed=0).item.unique() + 1
    assert not torch.equal(model.fields.item.weight[touched], before[touched])
    assert not torch.equal(model.mlp[0].weight, mlp_before)


def test_missing_spec_is_an_input_error():
    with pytest.raises(InputError, match="DataSpec"):
        DeepFM()


# -- AKT -------------------------------------------------------------------------------------------------
def akt_batch_with_shared_clusters() -> Batch:
    """Items 0..5 are head (bucket 0), 6..11 tail (bucket 2); item i has level-1 code i % 3, so every cluster has
    both; users likewise."""
    b = make_batch(b=12, seed=5)
    ids = torch.arange(12)
    head = ids < 6
    sid_i = b.item_sid.clone()
    sid_i[:, 0] = ids % 3
    sid_u = b.user_sid.clone()
    sid_u[:, 0] = ids % 3
    bucket = torch.where(head, 0, 2)
    count_i = torch.where(head, 70.0, 2.0)
    count_u = torch.where(head, 45.0, 1.0)
    return b._replace(
        item=ids, user=ids + 10, item_sid=sid_i, user_sid=sid_u, item_bucket=bucket, user_bucket=bucket,
        item_count=count_i, user_count=count_u,
    )  # fmt: skip


def test_akt_contrastive_gradient_is_asymmetric():
    model = build("akt", lambda_cl=1.0)
    model.train()
    batch = akt_batch_with_shared_clusters()
    with torch.no_grad():
        model(batch)  # first pass seeds the prototypes from the head ids
    assert model.item_protos.seen[:3].all() and model.user_protos.seen[:3].all()
    protos = model.item_protos.prototypes.clone()
    model.zero_grad()
    out = model(batch)
    assert float(out.aux["cl_item"]) > 0 and float(out.aux["cl_user"]) > 0
    out.aux_loss.backward()
    for table, ids in ((model.item_emb.individual, batch.item), (model.user_emb.individual, batch.user)):
        grad = table.weight.grad[ids + 1]  # (12, d)
        assert torch.equal(grad[:6], torch.zeros_like(grad[:6])), "head rows must get no contrastive gradient"
        assert (grad[6:].abs().sum(-1) > 0).all(), "every tail row must get a contrastive gradient"
    # tail ids never move prototypes: a batch of tail ids only leaves them unchanged
    tail_only = batch._replace(item_bucket=torch.full((12,), 2), user_bucket=torch.full((12,), 2))
    before = model.item_protos.prototypes.clone()
    model(tail_only)
    torch.testing.assert_close(model.item_protos.prototypes, before)
    assert not torch.equal(protos, torch.zeros_like(protos))


def test_akt_head_min_count_defines_head():
    model = build("akt", head_min_count=50.0)
    model.train()
    batch = akt_batch_with_shared_clusters()._replace(item_bucket=torch.full((12,), 2))  # buckets ignored
    with torch.no_grad():
        model(batch)
    assert model.item_protos.seen[:3].all()


def test_akt_gate_changes_outputs():
    gated, plain = build("akt", use_gate=True), build("akt", use_gate=False)
    missing = plain.load_state_dict(gated.state_dict(), strict=False)
    assert not missing.missing_keys and all(".gate." in k for k in missing.unexpected_keys)
    batch = make_batch()
    gated.eval(), plain.eval()
    with torch.no_grad():
        out_g, out_p = gated(batch), plain(batch)
    assert not torch.allclose(out_g.logit, out_p.logit)
    assert "gate/item_tail" in out_g.aux and "gate/item_tail" not in out_p.aux


@pytest.mark.parametrize(
    "flags",
    [
        {"use_cluster": False},
        {"use_gate": False},
        {"use_asymmetry": False},
        {"use_fusion": False},
        {"gate_mode": "vector", "proto_depth": 2},
        {"use_cluster": False, "use_gate": False, "use_asymmetry": False, "use_fusion": False},
    ],
)
def test_akt_ablations_build_and_train(flags):
    model = build("akt", **flags)
    model.train()
    batch = akt_batch_with_shared_clusters()
    model(batch)
    out = model(batch)
    loss, _ = model.loss(batch, out)
    loss.backward()
    assert torch.isfinite(loss)
    assert ("cl_item" in out.aux) == flags.get("use_asymmetry", True)
    assert ("fusion/history" in out.aux) == flags.get("use_fusion", True)
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())


def test_akt_logs_gate_means_by_bucket_and_fusion_weights():
    model = build("akt").eval()
    batch = make_batch()
    out = model(batch)
    g = model.item_emb(batch.item + 1, batch.item_sid, batch.item_count).gate.squeeze(-1)
    tail = batch.item_bucket == 2
    torch.testing.assert_close(out.aux["gate/item_tail"], g[tail].mean())
    total = sum(out.aux[f"fusion/{v}"] for v in ("id", "semantic", "history"))
    torch.testing.assert_close(total, torch.tensor(1.0))

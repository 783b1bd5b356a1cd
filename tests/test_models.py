"""Every CTR network in a CTRTask on random Batches: shapes, learning, Lightning wiring, checkpoints (class check,
weights_only), the NaN guard, predictions, AKT asymmetry."""

from __future__ import annotations

import dataclasses
import functools
import math
import pickle
from pathlib import Path

import lightning as L
import polars as pl
import pytest
import torch
from tiny import TINY_SPEC
from torch.utils.data import DataLoader

from ctr.batch import Batch, DataSpec
from ctr.models import AKT, DIN, POSO, ContentFeatures, DCNv2, DeepFM, Floor, SIDFeatures
from ctr.module import MONITOR_KEY, CTRTask, PredictionWriter, net_config
from semid import schema
from semid.errors import InputError
from semid.io import read_meta

SPEC = dataclasses.replace(TINY_SPEC, user_content_dim=5, item_content_dim=7)
SMALL = {"embed_dim": 8, "mlp_dims": (16,)}
FAMILIES = {
    "deepfm": (DeepFM, SMALL),
    "dcnv2": (DCNv2, SMALL),
    "dcnv2_parallel_lowrank": (DCNv2, {**SMALL, "structure": "parallel", "low_rank": 4}),
    "sid_features": (SIDFeatures, SMALL),
    "floor": (Floor, {}),
    "deepfm_bn": (DeepFM, {**SMALL, "batch_norm": True}),
    "din": (DIN, {**SMALL, "attention_dims": (8,)}),
    "poso": (POSO, {**SMALL, "bucket_dim": 4, "gate_hidden": 8}),
    "content_features": (ContentFeatures, SMALL),
    "akt": (AKT, {"embed_dim": 8, "mlp_dims": (16,), "attention_dims": (8,)}),
    "akt_bn": (AKT, {"embed_dim": 8, "mlp_dims": (16,), "attention_dims": (8,), "batch_norm": True}),
}


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
        hist_item_count=torch.randint(0, int(spec.item_count_max) + 1, hist.shape, generator=g) * (hist > 0),
        user_bucket=torch.randint(0, 4, (b,), generator=g),
        item_bucket=torch.randint(0, 4, (b,), generator=g),
        user_content=torch.randn(b, spec.user_content_dim, generator=g),
        item_content=torch.randn(b, spec.item_content_dim, generator=g),
    )


TASK_ARGS = ("lr", "weight_decay", "embedding_l2", "sparse_embeddings", "monitor")


def build(name: str, **overrides) -> CTRTask:
    """A CTRTask around network `name`; overrides go to the task (lr, ...) or else to the network."""
    cls, args = FAMILIES[name]
    task = {"embedding_l2": 1e-4} | {k: overrides.pop(k) for k in TASK_ARGS if k in overrides}
    torch.manual_seed(0)
    return CTRTask(functools.partial(cls, **args, **overrides), SPEC, **task)


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


def test_network_is_a_plain_module_and_the_task_wraps_any():
    net = DeepFM(SPEC, **SMALL)
    assert not isinstance(net, L.LightningModule)
    out = net(make_batch())
    assert out.logit.shape == (32,) and torch.isfinite(out.embed_sq)
    task = build("deepfm", sparse_embeddings=True)  # the task switches every table of the net to sparse
    assert task.net.fields.item.sparse and not task.automatic_optimization
    assert task.hparams.net == {
        "class_path": "ctr.models.deepfm.DeepFM",
        "init_args": {"embed_dim": 8, "mlp_dims": [16]},
    }
    assert net_config({"class_path": "ctr.models.akt.AKT"}) == {
        "class_path": "ctr.models.akt.AKT",
        "init_args": {},
    }


class _Wrapper(torch.nn.Module):
    """What a meta layer / extra view looks like: any backbone, built from the same DataSpec, plus its own part."""

    def __init__(self, spec: DataSpec, *, backbone, scale: float = 2.0):
        super().__init__()
        self.backbone, self.scale = backbone(spec), scale

    def forward(self, batch: Batch):
        out = self.backbone(batch)
        return out._replace(logit=out.logit * self.scale)


def test_a_wrapper_works_around_any_backbone(tmp_path):
    for name in ("deepfm", "akt"):
        cls, args = FAMILIES[name]
        task = CTRTask(functools.partial(_Wrapper, backbone=functools.partial(cls, **args)), SPEC)
        backbone = task.hparams.net["init_args"]["backbone"]  # nested factories stored as plain configs
        assert backbone["class_path"] == f"ctr.models.{name}.{cls.__name__}"
        trainer(fast_dev_run=True).fit(task, train_dataloaders=loader(1), val_dataloaders=loader(1))
        task.trainer.save_checkpoint(tmp_path / "w.ckpt")
        torch.load(tmp_path / "w.ckpt", weights_only=True)  # still plain data


@pytest.mark.parametrize("name", ["deepfm", "akt"])
def test_checkpoint_round_trip_identical_logits(name, tmp_path):
    model = build(name)
    t = trainer(max_steps=3, limit_val_batches=0)
    t.fit(model, train_dataloaders=loader())
    t.save_checkpoint(tmp_path / "m.ckpt")
    # weights_only=True: the spec and the network (class path + arguments) are stored as plain data
    raw = torch.load(tmp_path / "m.ckpt", weights_only=True)
    assert raw["hyper_parameters"]["net"]["class_path"] == f"ctr.models.{name}.{type(model.net).__name__}"
    loaded = CTRTask.load_from_checkpoint(tmp_path / "m.ckpt")
    assert loaded.spec == SPEC and type(loaded.net) is type(model.net)
    assert loaded.hparams.net["init_args"]["embed_dim"] == 8
    batch = make_batch(seed=99)
    model.eval(), loaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(batch).logit, model(batch).logit, rtol=0, atol=0)


def test_checkpoint_of_another_network_class_is_refused(tmp_path):
    akt = build("akt")
    trainer(max_steps=1, limit_val_batches=0).fit(akt, train_dataloaders=loader(1))
    ckpt = tmp_path / "akt.ckpt"
    akt.trainer.save_checkpoint(ckpt)
    with pytest.raises(InputError, match="AKT network, this run builds ctr.models.deepfm.DeepFM") as err:
        trainer().test(build("deepfm"), dataloaders=loader(1), ckpt_path=ckpt, verbose=False)
    assert err.value.file == str(ckpt)


def test_sparse_embeddings_manual_optimisation():
    model = build("sid_features", sparse_embeddings=True)
    before = model.net.fields.item.weight.detach().clone()
    mlp_before = model.net.mlp[0].weight.detach().clone()
    opts = model.configure_optimizers()
    assert isinstance(opts[0], torch.optim.SparseAdam) and not model.automatic_optimization
    trainer(max_steps=2, limit_val_batches=0).fit(model, train_dataloaders=loader())
    touched = make_batch(seed=0).item.unique() + 1
    assert not torch.equal(model.net.fields.item.weight[touched], before[touched])
    assert not torch.equal(model.net.mlp[0].weight, mlp_before)


def test_missing_spec_is_an_input_error():
    with pytest.raises(InputError, match="DataSpec"):
        CTRTask(DeepFM)


def test_malicious_pickle_in_a_checkpoint_is_refused(tmp_path):
    target = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (target,))

    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"x": Evil()}}, path)
    with pytest.raises(pickle.UnpicklingError):
        CTRTask.load_from_checkpoint(path)
    assert not target.exists()


@pytest.mark.parametrize("name", ["deepfm", "akt"])
def test_nonfinite_loss_stops_training(name):
    model = build(name)
    with torch.no_grad():
        next(model.net.parameters()).fill_(float("nan"))  # a poisoned table / bias: NaN logits and loss
    with pytest.raises(
        InputError, match=f"non-finite training loss nan at {type(model.net).__name__}: train epoch 0"
    ):
        trainer(max_steps=2, limit_val_batches=0).fit(model, train_dataloaders=loader())


@pytest.mark.parametrize("stage", ["validate", "test", "predict"])
def test_nonfinite_predictions_stop_evaluation(stage, tmp_path):
    model = build("deepfm")
    with torch.no_grad():
        model.net.bias.fill_(float("inf"))  # every logit +inf: sigmoid 1.0, a finite-looking but broken score
        model.net.bias.sub_(float("inf"))  # inf - inf = NaN
    out = tmp_path / "pred.parquet"
    t = trainer(callbacks=[PredictionWriter(out)])
    run = {"validate": t.validate, "test": t.test, "predict": t.predict}[stage]
    where = {"validate": "validation", "test": "test", "predict": "predict"}[stage]
    with pytest.raises(InputError, match=f"non-finite predictions .* DeepFM: {where} epoch 0, batch 0"):
        run(model, dataloaders=loader(2))
    assert not out.exists()  # nothing written from NaN scores


# -- the ctr command: config shape, --ckpt_path checks -------------------------------------------------
CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "ctr"


def test_cli_checks_the_checkpoint_before_building(prepared_dir, tmp_path):
    from pipelines.train import cli

    base = [
        "--data.data_dir", str(prepared_dir), "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false", "--trainer.default_root_dir", str(tmp_path),
    ]  # fmt: skip
    small = ["--model.net.embed_dim", "8", "--model.net.mlp_dims", "[8]"]
    c = cli(
        ["--config", str(CONFIGS / "deepfm.yaml"), *small, *base, "--trainer.fast_dev_run", "true"], run=False
    )
    assert isinstance(c.model, CTRTask) and type(c.model.net) is DeepFM
    c.trainer.fit(c.model, datamodule=c.datamodule)
    ckpt = tmp_path / "deepfm.ckpt"
    c.trainer.save_checkpoint(ckpt)
    assert torch.load(ckpt, weights_only=True)["hyper_parameters"]["net"]["init_args"]["embed_dim"] == 8
    assert type(CTRTask.load_from_checkpoint(ckpt).net) is DeepFM  # via LightningCLI's instantiator

    # another network class: refused before anything is built (LightningCLI alone swaps the model silently)
    with pytest.raises(InputError, match="DeepFM network, the config builds ctr.models.akt.AKT") as err:
        cli(["test", "--config", str(CONFIGS / "akt.yaml"), *base, "--ckpt_path", str(ckpt)])
    assert err.value.file == str(ckpt)
    # the same class with other arguments: the checkpoint's network arguments win, so its weights fit
    t = cli(["test", "--config", str(CONFIGS / "deepfm.yaml"), *base, "--ckpt_path", str(ckpt)])
    assert t.model.net.fields.item.embedding_dim == 8 and "test/auc" in t.trainer.callback_metrics

    # garbage, and a pickle that would run code, are one InputError each (weights_only loading)
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint")
    target = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (target,))

    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"net": {"class_path": "x"}, "y": Evil()}}, evil)
    for bad in (garbage, evil, tmp_path / "missing.ckpt"):
        with pytest.raises(InputError) as err:
            cli(["test", "--config", str(CONFIGS / "deepfm.yaml"), *base, "--ckpt_path", str(bad)])
        assert err.value.file == str(bad)
    assert not target.exists()


# -- baselines (issue 13) ------------------------------------------------------------------------------------
def _logits(net: torch.nn.Module, batch: Batch) -> torch.Tensor:
    net.eval()
    with torch.no_grad():
        return net(batch).logit


def test_floor_is_first_order_only():
    """logit(u, i) - logit(u, i') - logit(u', i) + logit(u', i') = 0: no user-item interaction at all."""
    floor = build("floor").net
    with torch.no_grad():
        for p in floor.parameters():
            p.normal_()
    b = make_batch(b=4)
    b = b._replace(
        user_feats=b.user_feats[:1].expand_as(b.user_feats),
        item_feats=b.item_feats[:1].expand_as(b.item_feats),
    )
    u, i = torch.tensor([1, 1, 2, 2]), torch.tensor([3, 4, 3, 4])
    logit = _logits(floor, b._replace(user=u, item=i))
    torch.testing.assert_close(logit[0] - logit[1] - logit[2] + logit[3], torch.tensor(0.0))
    # its value is the sum of its weights (features: mean of their tokens' weights)
    w = floor.bias + floor.user.weight[u + 1, 0] + floor.item.weight[i + 1, 0]
    w = w + floor.user_feats(b.user_feats).sum((1, 2)) + floor.item_feats(b.item_feats).sum((1, 2))
    torch.testing.assert_close(logit, w.detach())
    # DeepFM on the same batch is not additive (the test can fail)
    deepfm = build("deepfm").net
    d = _logits(deepfm, b._replace(user=u, item=i))
    assert abs(float(d[0] - d[1] - d[2] + d[3])) > 1e-6
    # bias, user and item rows (+ padding), one bag per side: 1 + (4 + 2) user and 1 + 6 item feature tokens
    assert sum(p.numel() for p in floor.parameters()) == 1 + (30 + 1) + (40 + 1) + (1 + 4 + 2) + (1 + 6)


def test_deepfm_batch_norm_is_optional():
    plain, bn = build("deepfm").net, build("deepfm_bn").net
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in plain.modules())
    assert sum(isinstance(m, torch.nn.BatchNorm1d) for m in bn.modules()) == 1  # one hidden layer (16,)
    dcn = DCNv2(SPEC, **SMALL, batch_norm=True)
    assert any(isinstance(m, torch.nn.BatchNorm1d) for m in dcn.modules())
    # AKT's prediction MLP takes the same option (the tuner searches it for AKT as for the DeepFM family)
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in build("akt").net.mlp.modules())
    assert sum(isinstance(m, torch.nn.BatchNorm1d) for m in build("akt_bn").net.mlp.modules()) == 1
    b = make_batch()
    bn.train()
    train_logit = bn(b).logit
    assert not torch.allclose(train_logit, _logits(bn, b))  # batch statistics in train, running ones in eval


def test_din_attention_is_unnormalised_and_ignores_padding():
    din = build("din").net.eval()
    att = din.history_pool
    assert not att.softmax
    b = make_batch()
    hist = din.fields.item(b.hist_item)  # (B, H, d)
    target = din.fields.item(b.item + 1)  # (B, d)
    mask = b.hist_item > 0
    t = target.unsqueeze(1).expand_as(hist)
    score = att.score(torch.cat([hist, t, hist - t, hist * t], -1)).squeeze(-1)  # raw activation weights
    expected = (score * mask).unsqueeze(-1).mul(hist).sum(1)
    torch.testing.assert_close(att(hist, target, mask), expected)
    assert torch.equal(att(hist, target, mask)[3], torch.zeros_like(target[3]))  # all-padded history -> 0
    # the target changes the history field (mean pooling would not), so DIN's logit moves with the target item
    # through the history as well; DeepFM's history field does not depend on the target
    other = b._replace(item=(b.item + 1) % SPEC.n_items)
    e1 = din.fields(b, pool=din.history_pool)[:, -1]
    e2 = din.fields(other, pool=din.history_pool)[:, -1]
    assert not torch.allclose(e1[4:], e2[4:])
    deepfm = build("deepfm").net.eval()
    torch.testing.assert_close(deepfm.fields(b)[:, -1], deepfm.fields(other)[:, -1])


def test_poso_gates_start_at_one_and_personalise_by_user_group():
    poso = build("poso").net.eval()
    b = make_batch()
    out = poso(b)
    assert out.aux["poso/gate0_user_head"] == pytest.approx(1.0)  # 2 sigmoid(0): starts as the plain MLP
    moved = b._replace(user_bucket=(b.user_bucket + 1) % 4, user_count=b.user_count + 7)
    torch.testing.assert_close(_logits(poso, b), _logits(poso, moved))  # at init groups do not matter
    with torch.no_grad():
        poso.gated.gates[0][-1].weight.normal_()
    assert not torch.allclose(_logits(poso, b), _logits(poso, moved))  # learned gates: they do
    gate = 2 * torch.sigmoid(poso.gated.gates[0](torch.cat([torch.zeros(1, 1), poso.buckets.weight[:1]], 1)))
    assert gate.shape == (1, 16) and (gate > 0).all() and (gate < 2).all()


def test_content_features_use_the_vectors_and_need_them():
    net = build("content_features").net.eval()
    assert net.n_fields == net.fields.n_fields + 2
    b = make_batch()
    other = b._replace(item_content=b.item_content + 1.0)
    assert not torch.allclose(_logits(net, b), _logits(net, other))
    only_items = dataclasses.replace(SPEC, user_content_dim=0)
    assert ContentFeatures(only_items, **SMALL).n_fields == net.fields.n_fields + 1
    with pytest.raises(InputError, match="ContentFeatures needs content vectors") as err:
        ContentFeatures(dataclasses.replace(SPEC, user_content_dim=0, item_content_dim=0), **SMALL)
    assert "data.item_content" in str(err.value)


# -- model selection: warm / cold validation, the monitor, leave-last-out (issue 13) -----------------------
def test_validation_is_scored_for_warm_and_cold_users():
    from ctr.metrics import auc, gauc

    model = build("deepfm")
    batches = [make_batch(b=64, seed=50 + i) for i in range(2)]
    batches = [b._replace(user_count=torch.where(b.user < 12, 0.0, b.user_count + 1)) for b in batches]
    t = trainer()
    t.validate(model, dataloaders=DataLoader(batches, batch_size=None), verbose=False)
    m = t.callback_metrics
    both = Batch(*(torch.cat(parts) for parts in zip(*batches)))
    with torch.no_grad():
        model.eval()
        prob = torch.sigmoid(model(both).logit)
    warm = both.user_count > 0
    assert 0 < int(warm.sum()) < warm.numel()
    for suffix, mask in (("", torch.ones_like(warm)), ("_warm", warm), ("_cold", ~warm)):
        assert float(m[f"val/gauc{suffix}"]) == pytest.approx(
            gauc(prob[mask], both.label[mask], both.user[mask])
        )
        assert math.isfinite(float(m[f"val/gauc{suffix}"]))
        assert float(m[f"val/auc{suffix}"]) == pytest.approx(auc(prob[mask], both.label[mask]))
        assert float(m[f"val/n{suffix}"]) == int(mask.sum())
    assert float(m[MONITOR_KEY]) == float(m["val/gauc"])
    warm_model = build("deepfm", monitor="val/gauc_warm")
    trainer().validate(warm_model, dataloaders=DataLoader(batches, batch_size=None), verbose=False)
    assert float(warm_model.trainer.callback_metrics[MONITOR_KEY]) == pytest.approx(float(m["val/gauc_warm"]))
    with pytest.raises(InputError, match="monitor"):
        build("deepfm", monitor="val/logloss")


def test_leave_last_out_validation_switches_the_monitor_to_auc(caplog):
    """One validation row per user: GAUC is undefined. Early stopping on it would end the fit after epoch 0
    (a NaN monitor); the task says so once and selects on AUC instead."""
    from lightning.pytorch.callbacks import EarlyStopping

    val = make_batch(b=30, seed=60)._replace(user=torch.arange(30))  # every user once
    val = val._replace(label=(torch.arange(30) % 2).float())
    model = build("deepfm")
    stop = EarlyStopping(monitor=MONITOR_KEY, mode="max", patience=2)
    t = trainer(max_epochs=3, callbacks=[stop], num_sanity_val_steps=0)
    t.fit(model, train_dataloaders=loader(2), val_dataloaders=DataLoader([val], batch_size=None))
    m = t.callback_metrics
    assert torch.isnan(m["val/gauc"]) and torch.isfinite(m[MONITOR_KEY])
    assert float(m[MONITOR_KEY]) == float(m["val/auc"])
    assert t.current_epoch == 3 and not stop.stopped_epoch  # not stopped after epoch 0 by a NaN
    said = [r.getMessage() for r in caplog.records if "val/gauc is undefined" in r.getMessage()]
    assert len(said) == 1 and "val/auc instead" in said[0]  # said once, not every epoch
    one_class = val._replace(label=torch.zeros(30))
    with pytest.raises(InputError, match="one label class"):
        trainer(num_sanity_val_steps=0).validate(
            build("deepfm"), dataloaders=DataLoader([one_class], batch_size=None)
        )


def write_fake_content(prepared: Path, folder: Path, dim: int = 6) -> Path:
    """item_embeddings.parquet / user_embeddings.parquet as `semid build` writes them, for a prepared dataset."""
    import numpy as np

    from semid.io import write_parquet

    folder.mkdir(parents=True, exist_ok=True)
    data_hash = read_meta(prepared / schema.ITEMS_FILE).get("data_hash")
    for key, table, file in (
        (schema.ITEM, schema.ITEMS_FILE, schema.ITEM_EMB_FILE),
        (schema.USER, schema.USERS_FILE, schema.USER_EMB_FILE),
    ):
        n = pl.read_parquet(prepared / table).height
        emb = np.random.default_rng(0).normal(size=(n, dim)).astype(np.float32)
        frame = pl.DataFrame({key: np.arange(n, dtype=np.int32), schema.EMBEDDING: emb})
        write_parquet(frame, folder / file, {"data_hash": data_hash})
    return folder


def test_content_features_config_trains_through_the_cli(prepared_dir, tmp_path):
    from pipelines.train import cli

    content = write_fake_content(prepared_dir, tmp_path / "semids")
    c = cli(
        ["--config", str(CONFIGS / "content_features.yaml"), "--data.data_dir", str(prepared_dir),
         "--data.item_content", str(content), "--data.user_content", str(content / schema.USER_EMB_FILE),
         "--model.net.embed_dim", "8", "--model.net.mlp_dims", "[8]", "--trainer.fast_dev_run", "true",
         "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
         "--trainer.default_root_dir", str(tmp_path)],
        run=False,
    )  # fmt: skip
    assert type(c.model.net) is ContentFeatures
    assert (c.model.spec.item_content_dim, c.model.spec.user_content_dim) == (6, 6)
    before = c.model.net.item_proj.weight.detach().clone()
    c.trainer.fit(c.model, datamodule=c.datamodule)
    assert not torch.equal(c.model.net.item_proj.weight, before)  # the projection of the vectors is trained
    assert c.config.checkpoint.monitor == MONITOR_KEY and c.config.early_stopping.monitor == MONITOR_KEY


def test_deepfm_linear_first_order_is_a_linear_layer_over_the_fields():
    """torch-rechub's DeepFM: first order = w . flatten(field embeddings) (its `LR`), not a 1-d table per id."""
    torch.manual_seed(0)
    net = DeepFM(SPEC, **SMALL, first_order="linear").eval()
    assert isinstance(net.first_order, torch.nn.Linear) and net.first_order.in_features == net.n_fields * 8
    batch = make_batch()
    fields = net.embed(batch)
    with torch.no_grad():
        net.first_order.weight.normal_()
        want = (
            net.bias
            + fields.flatten(1) @ net.first_order.weight[0]
            + net.fm(fields)
            + net.mlp(fields.flatten(1))[:, 0]
        )
        torch.testing.assert_close(net(batch).logit, want)
    with pytest.raises(ValueError, match="first_order"):
        DeepFM(SPEC, first_order="table")

"""The bad-input corpus of the pipelines: data loss, unsafe names, concurrent runs, stale state, one-line errors.

Each case is one user mistake or fault on tiny synthetic data; the property every data-loss case checks is that a
failing command leaves every pre-existing file byte-identical (a hash of the whole tree before and after).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
import yaml

from pipelines.cli import ctr_main, semid_main
from pipelines.prepare import prepare
from semid import data, synthetic
from semid import schema as S
from semid.errors import InputError
from semid.io import (
    clean_stale_staging,
    dir_lock,
    owned_output_dir,
    read_meta,
    stage_done,
    write_json,
    write_parquet,
)


def tree_hash(root: Path) -> dict[str, str]:
    """Every file (and empty folder) under `root`, relative path -> sha256 of its bytes."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_file():
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
        elif path.is_dir() and not any(path.iterdir()):
            out[rel] = "<empty dir>"
    return out


@pytest.fixture()
def user_files(tmp_path, synthetic_raw) -> Path:
    """A folder holding the user's own raw files (what a mistaken --out could destroy)."""
    folder = tmp_path / "my_data"
    folder.mkdir()
    for path in synthetic_raw.values():
        (folder / Path(path).name).write_bytes(Path(path).read_bytes())
    (folder / "notes.txt").write_text("years of work\n")
    return folder


def _prepare(raw: dict[str, Path], out: Path | str) -> Path:
    return prepare(
        interactions=str(raw["inter"]),
        items=str(raw["item"]),
        users=str(raw["user"]),
        columns=synthetic.columns(),
        out=str(out),
    )


def _no_staging_left(folder: Path) -> None:
    assert not [p.name for p in folder.iterdir() if p.name.endswith(".staging") or ".old-" in p.name]


# -- data loss ----------------------------------------------------------------------------------------------


def test_prepare_refuses_a_folder_of_user_files(user_files, synthetic_raw):
    before = tree_hash(user_files.parent)
    with pytest.raises(InputError, match="not written by `semid prepare`") as err:
        _prepare(synthetic_raw, user_files)
    assert err.value.file == str(user_files) and "new or empty folder" in err.value.fix
    assert tree_hash(user_files.parent) == before


def test_prepare_refuses_out_naming_a_file(tmp_path, synthetic_raw):
    target = tmp_path / "results.csv"
    target.write_text("a,b\n1,2\n")
    before = tree_hash(tmp_path)
    with pytest.raises(InputError, match="names a file"):
        _prepare(synthetic_raw, target)
    assert tree_hash(tmp_path) == before and target.is_file()


def test_prepare_out_dot_is_one_error_and_leaves_nothing(tmp_path, synthetic_raw, monkeypatch, capsys):
    work = tmp_path / "work"
    work.mkdir()
    (work / "keep.txt").write_text("mine")
    monkeypatch.chdir(work)
    before = tree_hash(tmp_path)
    with pytest.raises(SystemExit) as exc:
        semid_main(
            [
                "prepare",
                "--interactions",
                str(synthetic_raw["inter"]),
                "--items",
                str(synthetic_raw["item"]),
                "--out",
                ".",
            ]
        )
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("semid: error:") and "working directory" in err and "Traceback" not in err
    assert tree_hash(tmp_path) == before
    _no_staging_left(tmp_path)


def test_prepare_parent_that_is_a_file_is_one_error(tmp_path, synthetic_raw):
    (tmp_path / "file").write_text("x")
    before = tree_hash(tmp_path)
    with pytest.raises(InputError, match="not a writable folder"):
        _prepare(synthetic_raw, tmp_path / "file" / "out")
    assert tree_hash(tmp_path) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores folder permissions")
def test_prepare_read_only_parent_is_one_error(tmp_path, synthetic_raw):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        with pytest.raises(InputError, match="not a writable folder"):
            _prepare(synthetic_raw, parent / "out")
    finally:
        parent.chmod(0o755)


def test_prepare_replaces_its_own_output_and_cleans_stale_staging(tmp_path, synthetic_raw):
    out = _prepare(synthetic_raw, tmp_path / "prepared")
    assert json.loads((out / S.OUTPUT_MARKER).read_text())["command"] == "semid prepare"
    # a killed earlier run left its staging folder and a set-aside copy (pid 2**22+1 is beyond pid_max: dead)
    stale = [tmp_path / f".prepared.{2**22 + 1}.x1y2.staging", tmp_path / f".prepared.old-{2**22 + 1}"]
    for folder in stale:
        folder.mkdir()
        (folder / "big.parquet").write_bytes(b"0" * 100)
    prepare(
        interactions=str(synthetic_raw["inter"]),
        items=str(synthetic_raw["item"]),
        users=str(synthetic_raw["user"]),
        columns=synthetic.columns(),
        out=str(out),
        label_threshold=3.0,  # a changed config: the folder is rebuilt in place
    )
    assert read_meta(out / S.ITEMS_FILE)["config"]["label_threshold"] == 3.0
    assert not any(folder.exists() for folder in stale)
    _no_staging_left(tmp_path)


def test_prepare_accepts_an_empty_folder_and_a_pre_marker_output(tmp_path, synthetic_raw):
    empty = tmp_path / "empty"
    empty.mkdir()
    _prepare(synthetic_raw, empty)
    assert (empty / S.ITEMS_FILE).is_file()
    (empty / S.OUTPUT_MARKER).unlink()  # an output of the code before the marker existed
    prepare(
        interactions=str(synthetic_raw["inter"]),
        items=str(synthetic_raw["item"]),
        columns=synthetic.columns(),
        out=str(empty),
        label_threshold=3.0,
    )
    assert (empty / S.OUTPUT_MARKER).is_file()


def test_build_refuses_another_commands_output_and_user_folders(tmp_path, synthetic_raw, user_files):
    from pipelines.build_semids import build

    prepared = _prepare(synthetic_raw, tmp_path / "prepared")
    before = tree_hash(tmp_path)
    with pytest.raises(InputError, match="output of `semid prepare`, not of `semid build`"):
        build(data_dir=str(prepared), out=str(prepared))
    with pytest.raises(InputError, match="not written by `semid build`"):
        build(data_dir=str(prepared), out=str(user_files))
    assert tree_hash(tmp_path) == before


def test_owned_output_dir_failure_leaves_the_old_output(tmp_path):
    final = tmp_path / "out"
    with owned_output_dir(final, "demo") as staging:
        (staging / "a.txt").write_text("v1")
    before = tree_hash(tmp_path)
    with pytest.raises(RuntimeError), owned_output_dir(final, "demo") as staging:
        (staging / "a.txt").write_text("v2")
        raise RuntimeError("crash mid-write")
    assert tree_hash(tmp_path) == before
    with (
        pytest.raises(InputError, match="output of `demo`, not of `other`"),
        owned_output_dir(final, "other"),
    ):
        pass
    assert tree_hash(tmp_path) == before


def test_stale_staging_of_a_live_process_is_kept(tmp_path):
    live = tmp_path / f".out.{os.getppid()}.abc.staging"
    dead = tmp_path / f".out.{2**22 + 1}.abc.staging"
    live.mkdir(), dead.mkdir()
    removed = clean_stale_staging(tmp_path / "out")
    assert removed == [dead] and live.exists()


# -- pipeline model names, the run lock, frozen configs -----------------------------------------------------


@pytest.fixture()
def tiny_pipeline(tmp_path, synthetic_raw) -> dict:
    for name in ("semid.yaml", "common.yaml", "deepfm.yaml"):
        (tmp_path / name).write_text("{}\n")
    (tmp_path / "columns.yaml").write_text(
        yaml.safe_dump({"item_text_template": "{title}", "user_features": []})
    )
    return {
        "name": "tiny",
        "prepare": {
            "interactions": str(synthetic_raw["inter"]),
            "items": str(synthetic_raw["item"]),
            "columns": str(tmp_path / "columns.yaml"),
        },
        "semids": str(tmp_path / "semid.yaml"),
        "common": [str(tmp_path / "common.yaml")],
        "models": [{"name": "deepfm", "config": str(tmp_path / "deepfm.yaml")}],
        "run_dir": str(tmp_path / "run"),
    }


@pytest.mark.parametrize("bad", ["../../escape", "/abs/path", "a/b", ".", "..", "sp ace", ""])
def test_pipeline_model_names_are_plain_folder_names(tmp_path, tiny_pipeline, bad, capsys):
    tiny_pipeline["models"][0]["name"] = bad
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(tiny_pipeline))
    before = tree_hash(tmp_path.parent)
    with pytest.raises(SystemExit) as exc:
        semid_main(["run", "--config", str(tmp_path / "p.yaml")])
    assert exc.value.code == 2
    assert "is not a plain folder name" in capsys.readouterr().err
    assert tree_hash(tmp_path.parent) == before  # nothing created or removed, inside the run dir or outside


def test_run_dir_lock_refuses_a_second_run_and_names_the_pid(tmp_path, tiny_pipeline, capsys):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        run_dir = Path(tiny_pipeline["run_dir"])
        run_dir.mkdir()
        (run_dir / ".lock").write_text(f"{holder.pid}\n")
        (tmp_path / "p.yaml").write_text(yaml.safe_dump(tiny_pipeline))
        with pytest.raises(SystemExit) as exc:
            semid_main(["run", "--config", str(tmp_path / "p.yaml")])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert f"pid {holder.pid}" in err and "another run" in err
        assert sorted(p.name for p in run_dir.iterdir()) == [".lock"]  # nothing was started
    finally:
        holder.kill()
        holder.wait()


def test_lock_is_released_on_error_and_a_dead_holder_is_taken_over(tmp_path):
    (tmp_path / ".lock").write_text(f"{2**22 + 1}\n")  # a killed run's lock
    with pytest.raises(RuntimeError), dir_lock(tmp_path):
        assert (tmp_path / ".lock").read_text().split() == [str(os.getpid())]
        raise RuntimeError("stage failed")
    assert not (tmp_path / ".lock").exists()
    with dir_lock(tmp_path):
        pass
    assert not (tmp_path / ".lock").exists()


def test_fit_trains_from_the_config_text_that_was_hashed(tmp_path, monkeypatch):
    import pipelines.train
    from pipelines.fit import fit_one
    from pipelines.run import read_config

    model_yaml = tmp_path / "deepfm.yaml"
    model_yaml.write_text("model:\n  init_args: {embed_dim: 8}\n")
    hashed = read_config(model_yaml, "model")
    model_yaml.write_text("model:\n  init_args: {embed_dim: 64}\n")  # edited while the run is going

    seen = {}

    def fake_cli(args, run=True):
        seen["args"] = args
        raise KeyboardInterrupt  # stop before any training

    monkeypatch.setattr(pipelines.train, "cli", fake_cli)
    out = tmp_path / "run" / "models" / "deepfm" / "seed0"
    out.mkdir(parents=True)
    with pytest.raises(KeyboardInterrupt):
        fit_one("deepfm", 0, [hashed], tmp_path, tmp_path, out, "h")
    configs = [seen["args"][i + 1] for i, a in enumerate(seen["args"]) if a == "--config"]
    assert [Path(c).read_text() for c in configs] == ["model:\n  init_args: {embed_dim: 8}\n"]
    assert all(Path(c).is_relative_to(out) for c in configs)


def test_corrupt_metrics_json_means_not_done_with_a_warning(tmp_path, capsys):
    metrics = tmp_path / S.METRICS_FILE
    write_json({"stage_hash": "abc"}, metrics)
    assert stage_done(metrics, "abc") and not stage_done(metrics, "other")
    metrics.write_text('{"stage_hash": "ab')  # truncated by a full disk
    assert not stage_done(metrics, "abc")
    assert "unreadable" in capsys.readouterr().err
    table = tmp_path / "t.parquet"
    write_parquet(pl.DataFrame({"a": [1]}), table, {"data_hash": "d"})
    assert stage_done(table, "d", key="data_hash")
    table.write_bytes(b"PAR1garbage")
    assert not stage_done(table, "d", key="data_hash")


# -- one line instead of a traceback ------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["missing", "folder"])
def test_prepare_bad_input_path_is_one_line(tmp_path, synthetic_raw, case, capsys):
    bad = tmp_path / "nope.csv"
    if case == "folder":
        bad.mkdir()
    with pytest.raises(SystemExit) as exc:
        semid_main(
            [
                "prepare",
                "--interactions",
                str(bad),
                "--items",
                str(synthetic_raw["item"]),
                "--out",
                str(tmp_path / "o"),
            ]
        )
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("semid: error:") and str(bad) in err and "--interactions" in err
    assert "Traceback" not in err and not (tmp_path / "o").exists()


def test_debug_flag_shows_the_traceback(tmp_path, synthetic_raw, capsys):
    with pytest.raises(SystemExit):
        semid_main(["prepare", "--interactions", str(tmp_path / "x.csv"), "--items", "y", "--debug"])
    err = capsys.readouterr().err
    assert "Traceback" in err and "semid: error:" in err


@pytest.mark.parametrize("case", ["missing", "folder", "garbage", "pickle"])
def test_ctr_bad_checkpoint_is_one_line(tmp_path, case, capsys):
    ckpt = tmp_path / "model.ckpt"
    if case == "folder":
        ckpt.mkdir()
    elif case == "garbage":
        ckpt.write_bytes(b"not a checkpoint at all")
    elif case == "pickle":  # a pickle that would run code when loaded without weights_only
        torch.save({"state_dict": {}, "evil": Path("x")}, ckpt)
    with pytest.raises(SystemExit) as exc:
        ctr_main(["test", "--config", "configs/ctr/deepfm.yaml", "--ckpt_path", str(ckpt)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("ctr: error:") and str(ckpt) in err and "Traceback" not in err


def test_console_entry_points_go_through_one_cli_module():
    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    scripts = text.split("[project.scripts]", 1)[1].split("[", 1)[0]
    if "pipelines.cli" not in scripts:
        pytest.xfail("pyproject [project.scripts] not switched to pipelines.cli yet (lead's file)")
    assert 'semid = "pipelines.cli:semid_main"' in scripts and 'ctr = "pipelines.cli:ctr_main"' in scripts


def test_no_import_circle_between_pipelines_modules():
    """Every import (module- or function-level) between pipelines/*.py modules points one way."""
    import ast

    root = Path(__file__).resolve().parents[1] / "pipelines"
    graph: dict[str, set[str]] = {}
    for path in root.glob("*.py"):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
            elif isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
        graph[path.stem] = {n.split(".")[1] for n in names if n.startswith("pipelines.")} - {path.stem}

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(
            n == goal or (n not in seen and reaches(n, goal, seen | {n})) for n in graph.get(start, ())
        )

    assert not graph["train"], graph["train"]  # the LightningCLI module is a leaf
    assert not [m for m in graph if reaches(m, m, set())]


# -- assign -------------------------------------------------------------------------------------------------


@pytest.fixture()
def fake_build(tmp_path) -> Path:
    """A build folder with a valid item table and its build record (no models: every case fails before them)."""
    from semid.ids import health, make_table, table_meta, write_table

    root = tmp_path / "semids"
    root.mkdir()
    table = make_table(np.arange(6), np.array([[0, 1], [1, 0], [2, 2], [3, 1], [0, 0], [1, 1]]), key=S.ITEM)
    meta = table_meta(
        key=S.ITEM, codebook_sizes=[4, 4], health=health(table, [4, 4]), encoder="e", seed=0, data_hash="d"
    )
    write_table(table, root / S.ITEM_SIDS_FILE, {**meta, "stage_hash": "build-1"})
    write_json({"stage_hash": "build-1", "data_hash": "d", "encoder": "e"}, root / "build.json")
    return root


def test_assign_string_ids_are_one_line(fake_build, tmp_path, capsys):
    new = tmp_path / "new.csv"
    new.write_text("item_id,text\nB00X,a new kettle\n")
    with pytest.raises(SystemExit) as exc:
        semid_main(["assign", "--semids", str(fake_build), "--items", str(new)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "item_id" in err and "B00X" in err and "Traceback" not in err


def test_assign_items_folder_is_one_line(fake_build, tmp_path):
    from pipelines.assign import assign

    with pytest.raises(InputError, match="is a folder"):
        assign(semids=str(fake_build), items=str(tmp_path))


def test_assign_refuses_a_table_of_another_build(fake_build, tmp_path):
    from pipelines.assign import assign

    record = json.loads((fake_build / "build.json").read_text())
    write_json({**record, "stage_hash": "build-2"}, fake_build / "build.json")
    new = tmp_path / "new.csv"
    new.write_text("item_id,text\n6,a new kettle\n")
    before = tree_hash(fake_build)
    with pytest.raises(InputError, match="another build"):
        assign(semids=str(fake_build), items=str(new))
    assert tree_hash(fake_build) == before


# -- issue 13: the pipeline's prepare section, build resume ---------------------------------------------------


def test_pipeline_prepare_section_reaches_every_prepare_option(tmp_path, synthetic_raw):
    from jsonargparse import ArgumentParser

    from pipelines.run import PrepareStage, run_prepare

    cols = tmp_path / "columns.yaml"
    cols.write_text(yaml.safe_dump({"item_text_template": "{title}", "user_features": ["age"]}))
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(PrepareStage, "prepare")
    section = {
        "interactions": str(synthetic_raw["inter"]),  # own files, no `dataset: null` needed
        "items": str(synthetic_raw["item"]),
        "users": str(synthetic_raw["user"]),
        "columns": str(cols),
        "label_threshold": 3.0,
        "split": {"mode": "leave_last_out"},
        "buckets": {"head": 0.1, "torso": 0.2},
    }
    cfg = parser.instantiate(parser.parse_object({"prepare": section}))
    out = run_prepare(cfg.prepare, tmp_path / "run", None, "mine")
    meta = read_meta(out / S.ITEMS_FILE)
    assert meta["config"]["label_threshold"] == 3.0
    assert meta["config"]["split"]["mode"] == "leave_last_out"
    assert meta["config"]["buckets"]["head"] == 0.1 and meta["config"]["buckets"]["torso"] == 0.2
    assert PrepareStage().resolved_dataset() == "ml-100k"  # no files: the built-in default


def test_build_resumes_after_a_failed_user_rqvae(tmp_path, synthetic_raw, monkeypatch, capsys):
    import pipelines.build_semids as B
    from semid.rqvae import RQVAEConfig

    prepared = _prepare(synthetic_raw, tmp_path / "prepared")
    calls: list[int] = []
    monkeypatch.setattr(B, "align", _fake_align(calls))
    rq = {"levels": 2, "codebook_size": 4, "max_epochs": 2, "batch_size": 64}
    out = tmp_path / "semids"
    with pytest.raises(InputError, match="users codebook collapse"):
        B.build(
            data_dir=str(prepared),
            out=str(out),
            item_rqvae=RQVAEConfig(**rq),
            user_rqvae=RQVAEConfig(**rq, min_level0_utilization=1.01),  # cannot pass: the user stage fails
        )
    assert calls == [120] and not (out / S.USER_SIDS_FILE).exists()
    capsys.readouterr()
    B.build(data_dir=str(prepared), out=str(out), item_rqvae=RQVAEConfig(**rq), user_rqvae=RQVAEConfig(**rq))
    log = capsys.readouterr().out
    assert calls == [120]  # encode + align was not redone
    assert "[semids] items: reused" in log and "[semids] users:" in log
    assert (out / S.USER_SIDS_FILE).is_file() and not (out / ".work").exists()
    assert json.loads((out / S.OUTPUT_MARKER).read_text())["command"] == "semid build"


def _fake_align(calls: list[int]):
    """An `align` stand-in: seeded unit vectors (one per text) and an empty state file, in a second."""
    from semid.align import AlignResult

    def fake(items_text, users_text, train, enc_cfg, cfg, *, work_dir, images=None, cache=None, **_):
        calls.append(len(items_text))
        gen = torch.Generator().manual_seed(0)
        work_dir.mkdir(parents=True, exist_ok=True)
        torch.save({"format": 1}, work_dir / "state.pt")
        item = torch.nn.functional.normalize(torch.randn(len(items_text), 8, generator=gen), dim=1)
        user = torch.nn.functional.normalize(torch.randn(len(users_text), 8, generator=gen), dim=1)
        return AlignResult(item, user, {"probe": 1.0}, work_dir / "state.pt")

    return fake


def test_cold_start_build_keeps_held_out_items_out_of_the_rqvae(tmp_path, synthetic_raw, monkeypatch):
    """Strict item cold start: the item RQ-VAE never trains on held-out items; their IDs are what `semid assign`
    gives a new item (the trained RQ-VAE applied to their aligned content vector, suffix after existing ones)."""
    import pipelines.build_semids as B
    from semid.ids import read_table, sid_columns
    from semid.rqvae import RQVAEConfig, load_rqvae

    split = {"cold_items": 0.1, "cold_item_mode": "random", "seed": 0}
    prepared = prepare(
        interactions=str(synthetic_raw["inter"]),
        items=str(synthetic_raw["item"]),
        users=str(synthetic_raw["user"]),
        columns=synthetic.columns(),
        out=str(tmp_path / "prepared"),
        split=data.SplitConfig(**split),
    )
    held = read_meta(prepared / S.ITEMS_FILE)["held_out_items"]
    assert len(held) == 12
    monkeypatch.setattr(B, "align", _fake_align([]))
    trained_on: list[int] = []
    real_train = B.train_rqvae
    monkeypatch.setattr(
        B, "train_rqvae", lambda emb, cfg: trained_on.append(emb.shape[0]) or real_train(emb, cfg)
    )
    rq = RQVAEConfig(levels=2, codebook_size=4, max_epochs=2, batch_size=64)
    out, _ = B.build(data_dir=str(prepared), out=str(tmp_path / "semids"), item_rqvae=rq, user_rqvae=rq)
    assert trained_on == [120 - 12, 200]  # items without the held-out ones; users all
    table, meta = read_table(out / S.ITEM_SIDS_FILE, key=S.ITEM)
    assert table.height == 120 and meta["held_out_assigned"]["count"] == 12 and meta["added"] == 12
    emb = pl.read_parquet(out / S.ITEM_EMB_FILE).filter(pl.col(S.ITEM).is_in(held)).sort(S.ITEM)
    codes = load_rqvae(out / S.ITEM_RQVAE_FILE).encode(
        torch.from_numpy(np.stack(emb[S.EMBEDDING].to_numpy()))
    )
    got = table.filter(pl.col(S.ITEM).is_in(held)).sort(S.ITEM).select(sid_columns(table))
    assert np.array_equal(got.to_numpy(), codes.numpy())  # the trained RQ-VAE's codes for their content
    trained_on.clear()
    B.build(
        data_dir=str(prepared),
        out=str(tmp_path / "semids_all"),
        item_rqvae=rq,
        user_rqvae=rq,
        assign_held_out=False,
    )
    assert trained_on == [120, 200]  # switched off: quantised with the others


def test_sigterm_during_a_run_is_a_failing_exit_status(tmp_path, tiny_pipeline, monkeypatch):
    """Lightning turns SIGTERM into a SystemExit without a code (status 0): a killed run must not look finished."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    import pipelines.run as R

    def killed(*args, **kwargs):
        raise SIGTERMException()

    monkeypatch.setattr(R, "_run_stages", killed)
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(tiny_pipeline))
    with pytest.raises(SystemExit) as exc:
        semid_main(["run", "--config", str(tmp_path / "p.yaml")])
    assert exc.value.code == 143
    assert not (tmp_path / "run" / ".lock").exists()  # the lock is released on the way out


def test_negative_tune_is_one_line_before_any_work(tmp_path, tiny_pipeline, capsys):
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(tiny_pipeline))
    with pytest.raises(SystemExit) as exc:
        semid_main(["run", "--config", str(tmp_path / "p.yaml"), "--tune", "-1"])
    assert exc.value.code == 2 and "--tune" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("command", ["fit", "tune"])
def test_sigterm_during_ctr_fit_or_tune_is_a_failing_exit_status(monkeypatch, command):
    """`ctr fit` and `ctr tune` stopped by SIGTERM exit 143, not Lightning's 0."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    import pipelines.train
    import pipelines.tune

    def killed(*args, **kwargs):
        raise SIGTERMException()

    monkeypatch.setattr(pipelines.train, "cli", killed)
    monkeypatch.setattr(pipelines.tune, "main", killed)
    with pytest.raises(SystemExit) as exc:
        ctr_main([command, "--config", "unused.yaml"])
    assert exc.value.code == 143

"""prepare: schema, temporal split without leakage, activity buckets, bad input, the real MovieLens data."""

from __future__ import annotations

import polars as pl
import pytest

from pipelines.prepare import prepare
from pipelines.semid_cli import main as semid_main
from semid import data, synthetic
from semid import schema as S
from semid.errors import InputError
from semid.io import read_meta


def _files(raw) -> data.RawFiles:
    return data.RawFiles(raw["inter"], raw["item"], raw["user"])


def test_schema_of_every_file(prepared_dir):
    for split in S.SPLITS:
        df = pl.read_parquet(prepared_dir / S.split_file(split))
        assert df.schema == S.INTERACTIONS
        assert df.height > 0
    items = pl.read_parquet(prepared_dir / S.ITEMS_FILE)
    users = pl.read_parquet(prepared_dir / S.USERS_FILE)
    for col, dtype in S.ITEMS_BASE.items():
        assert items.schema[col] == dtype
    for col, dtype in S.USERS_BASE.items():
        assert users.schema[col] == dtype
    assert items.schema["genre"] == S.FEATURE_DTYPE
    assert users.schema["age"] == S.FEATURE_DTYPE
    assert items[S.ITEM].to_list() == list(range(items.height))  # dense, sorted
    assert users[S.USER].to_list() == list(range(users.height))
    assert read_meta(prepared_dir / S.ITEMS_FILE)["features"] == ["genre"]
    assert read_meta(prepared_dir / S.USERS_FILE)["features"] == ["age", "gender"]


def test_ids_map_back_to_raw(synthetic_raw, prepared_dir):
    raw = pl.read_parquet(synthetic_raw["inter"]).sort(["timestamp", "user_id"])
    items = pl.read_parquet(prepared_dir / S.ITEMS_FILE)
    users = pl.read_parquet(prepared_dir / S.USERS_FILE)
    got = (
        pl.concat([pl.read_parquet(prepared_dir / S.split_file(s)) for s in S.SPLITS])
        .join(users.select(S.USER, S.RAW_USER), on=S.USER)
        .join(items.select(S.ITEM, S.RAW_ITEM), on=S.ITEM)
    )
    assert got.height == raw.height
    pairs_raw = sorted(zip(raw["user_id"], raw["item_id"], raw["timestamp"]))
    pairs_got = sorted(zip(got[S.RAW_USER], got[S.RAW_ITEM], got[S.TIMESTAMP]))
    assert pairs_raw == pairs_got
    # label = rating >= 4
    assert (got[S.LABEL] == (got[S.RATING] >= 4).cast(pl.Int8)).all()


def test_temporal_split_no_leakage_and_fractions(prepared_dir):
    tr, va, te = (pl.read_parquet(prepared_dir / S.split_file(s)) for s in S.SPLITS)
    assert tr[S.TIMESTAMP].max() <= va[S.TIMESTAMP].min()
    assert va[S.TIMESTAMP].max() <= te[S.TIMESTAMP].min()
    n = tr.height + va.height + te.height
    assert (tr.height, va.height, te.height) == (
        round(0.8 * n),
        round(0.1 * n),
        n - round(0.8 * n) - round(0.1 * n),
    )


def test_leave_last_out(synthetic_raw):
    cfg = data.PrepareConfig(split=data.SplitConfig(mode="leave_last_out"))
    with pytest.warns(UserWarning, match="GAUC"):  # one row per user in val/test
        p = data.build(_files(synthetic_raw), synthetic.columns(), cfg, name="s")
    tr, va, te = (p.splits[s] for s in S.SPLITS)
    assert te[S.USER].is_duplicated().sum() == 0 and va[S.USER].is_duplicated().sum() == 0
    last_train = tr.group_by(S.USER).agg(pl.col(S.TIMESTAMP).max().alias("t"))
    joined = te.join(last_train, on=S.USER)
    assert (joined[S.TIMESTAMP] >= joined["t"]).all()
    assert set(te[S.USER]) == set(va[S.USER])


def test_buckets_oracle(prepared_dir):
    items = pl.read_parquet(prepared_dir / S.ITEMS_FILE)
    train = pl.read_parquet(prepared_dir / S.split_file("train"))
    counts = dict(train.group_by(S.ITEM).len().iter_rows())
    assert items[S.TRAIN_COUNT].to_list() == [counts.get(i, 0) for i in items[S.ITEM]]
    active = sorted((i for i in counts), key=lambda i: (-counts[i], i))
    n_head, n_torso = -(-len(active) * 2 // 10), -(-len(active) * 5 // 10)
    n_torso -= n_head
    expected = {i: "head" for i in active[:n_head]}
    expected |= {i: "torso" for i in active[n_head : n_head + n_torso]}
    expected |= {i: "tail" for i in active[n_head + n_torso :]}
    got = dict(zip(items[S.ITEM], items[S.BUCKET]))
    for i, bucket in got.items():
        assert bucket == expected.get(i, "cold")
    assert set(got.values()) <= set(S.BUCKETS)


def _write_variant(tmp_path, raw, role, df):
    path = tmp_path / f"{role}.parquet"
    df.write_parquet(path)
    return {**raw, role: path}


def _expect_error(files, cols, match, column=None, cfg=None):
    with pytest.raises(InputError, match=match) as info:
        data.build(_files(files), cols, cfg or data.PrepareConfig(), name="bad")
    if column is not None:
        assert info.value.column == column
    assert info.value.fix
    return info.value


def test_bad_inputs(synthetic_raw, tmp_path):
    inter = pl.read_parquet(synthetic_raw["inter"])
    items = pl.read_parquet(synthetic_raw["item"])
    cols = synthetic.columns()
    _expect_error({**synthetic_raw, "inter": tmp_path / "nope.parquet"}, cols, "file not found")
    _expect_error(
        _write_variant(tmp_path, synthetic_raw, "inter", inter.drop("timestamp")),
        cols,
        "missing",
        "timestamp",
    )
    bad_ts = inter.with_columns(pl.col("timestamp").cast(pl.String).str.replace("^1", "x"))
    _expect_error(_write_variant(tmp_path, synthetic_raw, "inter", bad_ts), cols, "not Int64", "timestamp")
    dup = pl.concat([items, items.head(1)])
    _expect_error(_write_variant(tmp_path, synthetic_raw, "item", dup), cols, "duplicate item ids", "item_id")
    unknown = pl.concat([inter, inter.head(1).with_columns(pl.lit("ghost").alias("item_id"))])
    err = _expect_error(
        _write_variant(tmp_path, synthetic_raw, "inter", unknown), cols, "not in the items file"
    )
    assert "ghost" in str(err)
    blank = items.with_columns(pl.lit(None, pl.String).alias("title"), pl.lit(" ").alias("genre"))
    _expect_error(_write_variant(tmp_path, synthetic_raw, "item", blank), cols, "empty text", "title,genre")
    from dataclasses import replace

    labelled = inter.with_columns(pl.lit(2).alias("click"))
    _expect_error(
        _write_variant(tmp_path, synthetic_raw, "inter", labelled),
        replace(cols, label="click"),
        "labels must be 0 or 1",
        "click",
    )
    _expect_error(
        synthetic_raw,
        cols,
        "split is empty",
        cfg=data.PrepareConfig(split=data.SplitConfig(val_frac=0.0, test_frac=0.1)),
    )


def test_empty_template_value_is_unknown_not_error(synthetic_raw, tmp_path):
    items = pl.read_parquet(synthetic_raw["item"]).with_columns(pl.lit(None, pl.String).alias("genre"))
    files = _write_variant(tmp_path, synthetic_raw, "item", items)
    p = data.build(_files(files), synthetic.columns(), data.PrepareConfig(), name="s")
    assert p.items[S.TEXT].str.ends_with("Genres: unknown.").all()


def test_cli_error_exits_nonzero_and_writes_nothing(synthetic_raw, tmp_path, capsys):
    inter = pl.read_parquet(synthetic_raw["inter"]).drop("rating")
    bad = tmp_path / "inter.parquet"
    inter.write_parquet(bad)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        semid_main(
            ["prepare", "--interactions", str(bad), "--items", str(synthetic_raw["item"]), "--out", str(out)]
        )
    assert exc.value.code == 2
    assert "column 'rating'" in capsys.readouterr().err
    assert not out.exists()  # nothing written
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging left behind


def test_csv_input_via_cli(synthetic_raw, tmp_path):
    files = synthetic.write(synthetic.SyntheticConfig(seed=3), tmp_path / "csv", fmt="csv")
    cols = tmp_path / "cols.yaml"
    cols.write_text(
        "item_text_template: '{title}. Genres: {genre}.'\nitem_features: [genre]\nmulti_valued: [genre]\n"
        "user_features: [age, gender]\n"
    )
    out = tmp_path / "prep"
    semid_main(
        [
            "prepare",
            "--interactions", str(files["inter"]),
            "--items", str(files["item"]),
            "--users", str(files["user"]),
            "--columns", str(cols),
            "--out", str(out),
            "--split.val_frac", "0.2",
        ]
    )  # fmt: skip
    meta = read_meta(out / S.ITEMS_FILE)
    assert meta["config"]["split"]["val_frac"] == 0.2
    assert meta["splits"]["val"] == round(0.2 * meta["n_interactions"])


@pytest.mark.realdata
def test_real_ml100k(tmp_path):
    out = prepare(dataset="ml-100k", out=str(tmp_path / "ml-100k"))
    meta = read_meta(out / S.ITEMS_FILE)
    assert (meta["n_interactions"], meta["n_users"], meta["n_items"]) == (100_000, 943, 1_682)
    assert abs(meta["positive_rate"] - 0.55375) < 1e-9
    items = pl.read_parquet(out / S.ITEMS_FILE)
    assert (
        items.filter(pl.col(S.RAW_ITEM) == "1")[S.TEXT].item()
        == "Toy Story (1995). Genres: Animation, Children's, Comedy."
    )
    tr, te = (pl.read_parquet(out / S.split_file(s)) for s in ("train", "test"))
    assert tr[S.TIMESTAMP].max() <= te[S.TIMESTAMP].min()


@pytest.mark.realdata
def test_real_ml1m_counts(tmp_path):
    out = prepare(dataset="ml-1m", out=str(tmp_path / "ml-1m"))
    meta = read_meta(out / S.ITEMS_FILE)
    assert (meta["n_interactions"], meta["n_users"], meta["n_items"]) == (1_000_209, 6_040, 3_706)
    assert 0.57 < meta["positive_rate"] < 0.58
    assert sum(meta["item_buckets"].values()) == 3_706
    users = pl.read_parquet(out / S.USERS_FILE)
    assert (
        users.filter(pl.col(S.RAW_USER) == "1m_1")[S.TEXT].item().startswith("age: under 18; gender: female")
    )


def test_prepare_skips_when_unchanged_and_redoes_on_change(synthetic_raw, tmp_path, capsys):
    cols = tmp_path / "cols.yaml"
    cols.write_text("item_text_template: '{title}.'\n")
    common = ["prepare", "--interactions", str(synthetic_raw["inter"]), "--items", str(synthetic_raw["item"])]
    out = tmp_path / "p"
    semid_main([*common, "--columns", str(cols), "--out", str(out)])
    stamp = (out / S.ITEMS_FILE).stat().st_mtime_ns
    semid_main([*common, "--columns", str(cols), "--out", str(out)])
    assert "up to date" in capsys.readouterr().out
    assert (out / S.ITEMS_FILE).stat().st_mtime_ns == stamp
    semid_main([*common, "--columns", str(cols), "--out", str(out), "--label_threshold", "5"])
    assert read_meta(out / S.ITEMS_FILE)["config"]["label_threshold"] == 5


# -- issue 11: bad inputs that used to pass silently --------------------------------------------------------


def test_nan_rating_is_refused_not_label_1(synthetic_raw, tmp_path):
    inter = pl.read_parquet(synthetic_raw["inter"])
    nan = inter.with_columns(
        pl.when(pl.int_range(pl.len()) == 5).then(float("nan")).otherwise("rating").alias("rating")
    )
    _expect_error(_write_variant(tmp_path, synthetic_raw, "inter", nan), synthetic.columns(), "NaN", "rating")


def test_fractional_timestamps_refused_whole_floats_accepted(synthetic_raw, tmp_path):
    inter = pl.read_parquet(synthetic_raw["inter"])
    frac = inter.with_columns((pl.col("timestamp").cast(pl.Float64) + 0.5).alias("timestamp"))
    _expect_error(
        _write_variant(tmp_path, synthetic_raw, "inter", frac), synthetic.columns(), "not whole", "timestamp"
    )
    as_text = inter.with_columns((pl.col("timestamp").cast(pl.String) + ".25").alias("timestamp"))
    _expect_error(
        _write_variant(tmp_path, synthetic_raw, "inter", as_text),
        synthetic.columns(),
        "not whole",
        "timestamp",
    )
    whole = inter.with_columns(pl.col("timestamp").cast(pl.Float64))
    p = data.build(
        _files(_write_variant(tmp_path, synthetic_raw, "inter", whole)),
        synthetic.columns(),
        data.PrepareConfig(),
        name="s",
    )
    assert sorted(pl.concat(p.splits.values())[S.TIMESTAMP].to_list()) == sorted(inter["timestamp"].to_list())


def test_one_class_split_refused(synthetic_raw, tmp_path):
    inter = pl.read_parquet(synthetic_raw["inter"]).with_columns(pl.lit(5.0).alias("rating"))
    _expect_error(
        _write_variant(tmp_path, synthetic_raw, "inter", inter), synthetic.columns(), "only label \\[1\\]"
    )


def test_ten_row_dataset_refused(synthetic_raw, tmp_path):
    inter = pl.read_parquet(synthetic_raw["inter"]).head(10)
    _expect_error(_write_variant(tmp_path, synthetic_raw, "inter", inter), synthetic.columns(), "split")


def test_warns_when_gauc_rests_on_no_users(synthetic_raw):
    cfg = data.PrepareConfig(split=data.SplitConfig(mode="leave_last_out"))
    with pytest.warns(UserWarning, match="GAUC rests on no users"):
        p = data.build(_files(synthetic_raw), synthetic.columns(), cfg, name="s")
    assert p.meta["gauc_users"]["val"] == 0 and p.meta["gauc_users"]["train"] > 0


def test_missing_or_directory_input_fails_before_hashing(synthetic_raw, tmp_path, monkeypatch):
    def no_hash(path):
        raise AssertionError("hashed before the inputs were checked")

    monkeypatch.setattr("semid.data.prepared.sha256_file", no_hash)
    for bad, match in ((tmp_path / "nope.parquet", "file not found"), (tmp_path, "is a directory")):
        files = data.RawFiles(synthetic_raw["inter"], bad, synthetic_raw["user"])
        with pytest.raises(InputError, match=match) as info:
            data.fingerprint(files, synthetic.columns(), data.PrepareConfig())
        assert info.value.file == str(bad)


def _with_images(tmp_path, synthetic_raw, paths):
    items = pl.read_parquet(synthetic_raw["item"])
    items = items.with_columns(pl.Series("image", (paths * items.height)[: items.height], dtype=pl.String))
    folder = tmp_path / "data"
    folder.mkdir(exist_ok=True)
    items.write_parquet(folder / "item.parquet")
    return data.RawFiles(synthetic_raw["inter"], folder / "item.parquet", synthetic_raw["user"])


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink"])
def test_image_paths_outside_the_root_refused(synthetic_raw, tmp_path, kind):
    from dataclasses import replace

    secret = tmp_path / "secret.png"
    secret.write_bytes(b"not yours")
    (tmp_path / "data").mkdir()
    path = {"dotdot": "../secret.png", "absolute": str(secret), "symlink": "link.png"}[kind]
    if kind == "symlink":
        (tmp_path / "data" / "link.png").symlink_to(secret)
    files = _with_images(tmp_path, synthetic_raw, [path, None])
    cols = replace(synthetic.columns(), image_path="image")
    with pytest.raises(InputError, match="outside the image root") as info:
        data.build(files, cols, data.PrepareConfig(), name="s")
    assert info.value.column == "image" and info.value.file == str(files.item)
    if kind != "absolute":  # relative paths are taken from the root: they would name other files there
        return
    # the same image is fine once the root holds it
    p = data.build(files, replace(cols, image_root=str(tmp_path)), data.PrepareConfig(), name="s")
    assert set(p.items[S.IMAGE_PATH].drop_nulls()) == {str(secret.resolve())}


def test_image_paths_inside_the_root_resolve(synthetic_raw, tmp_path):
    from dataclasses import replace

    (tmp_path / "data" / "img").mkdir(parents=True)
    (tmp_path / "data" / "img" / "a.png").write_bytes(b"png")
    files = _with_images(tmp_path, synthetic_raw, ["img/a.png", "img/../img/a.png", ""])
    p = data.build(files, replace(synthetic.columns(), image_path="image"), data.PrepareConfig(), name="s")
    got = p.items[S.IMAGE_PATH].to_list()
    assert set(got) == {str((tmp_path / "data" / "img" / "a.png").resolve()), None}
    with pytest.raises(InputError, match="outside"):
        data.resolve_image_paths(["../../../../etc/passwd"], tmp_path / "data")

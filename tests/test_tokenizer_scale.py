"""benchmarks/tokenizer_scale.py end to end on --quick sizes (every measurement in its own process, the report
written where --out says), and its derived figures against hand-computed values."""

from __future__ import annotations

import re

import pytest

from benchmarks import tokenizer_scale as ts


def _rows(text: str, first_cell: str) -> list[list[str]]:
    """The cells of every markdown table row whose first cell is `first_cell`."""
    rows = [line.strip("|").split("|") for line in text.splitlines() if line.startswith("|")]
    return [[c.strip() for c in row] for row in rows if row[0].strip() == first_cell]


def _number(cell: str) -> float:
    return float(re.match(r"[-\d.,]+", cell).group(0).replace(",", ""))


def test_quick_run_writes_every_table(tmp_path):
    out = tmp_path / "tokenizer_scale.md"
    ts.main(["--quick", "--out", str(out), "--log", str(tmp_path / "lib.log")])
    text = out.read_text()
    assert text.startswith("# Tokenizer at catalogue scale")
    assert "Command: `python -m benchmarks.tokenizer_scale --quick" in text
    for name in ("torch ", "transformers ", "vector-quantize-pytorch ", "load average"):
        assert name in text

    (bare,) = _rows(text, "bare HF tokenizer + forward (`bare_forward`)")
    (enc,) = _rows(text, "`semid.encoder.encode`")
    assert _number(bare[2]) > 0 and _number(enc[2]) > 0  # items/s
    ratio = float(re.search(r"encode / bare items/s: x([\d.]+)", text).group(1))
    assert ratio == pytest.approx(_number(enc[2]) / _number(bare[2]), rel=0.02)

    peaks = []
    for n in ts.QUICK.sizes:
        rqvae, assign, memory = _rows(text, f"{n:,}")  # one row per size in each of the three tables
        assert rqvae[1] == "x".join(
            ["32" if n == 2000 else "40"] * 4
        )  # auto sizes of the 4-level item config
        assert _number(rqvae[3]) > 0  # s/epoch
        assert rqvae[11] == "1.000"  # unique full IDs after the dedup suffix
        assert _number(assign[7]) > 0 and _number(assign[8]) > 0  # items/s without / with text encoding
        assert all(_number(c) > 0 for c in memory[1:])
        assert [_number(c) for c in memory[1:]] == sorted(_number(c) for c in memory[1:])  # peak so far
        peaks.append(_number(memory[-1]))
    assert "reaches 24 GiB at N =" in text and "Measured vs extrapolated" in text
    assert all(p > 0.1 for p in peaks)  # at least the imported libraries, in GiB


def test_derived_figures():
    fit = ts.fit_memory([{"n": n, "peak_rss_gib": {"assign": 1.0 + 2e-6 * n}} for n in (1e5, 3e5, 1e6)])
    assert fit["a_gib"] == pytest.approx(1.0) and fit["gib_per_million"] == pytest.approx(2.0)
    assert fit["n_at_limit"] == pytest.approx(11.5e6)
    assert ts.fit_memory([{"n": 10, "peak_rss_gib": {"assign": 1.0}}]) is None

    run = {"train_s": {"1": 15.0, "3": 35.0}, "epochs": 3, "config": {"max_epochs": 100}}
    tf = ts.train_figures(run)
    assert (tf["per_epoch_s"], tf["fixed_s"], tf["default_total_s"]) == pytest.approx((10.0, 5.0, 1005.0))

    enc = {"texts": 100, "runs": {"bare": [1.0, 2.0, 3.0], "encode": [2.5, 2.0, 9.0]}}
    ef = ts.encode_figures(enc)
    assert ef["bare_items_s"] == pytest.approx(50.0) and ef["ratio"] == pytest.approx(40.0 / 50.0)
    assert ef["hours_1m_1thread"] == pytest.approx(1e6 / 40.0 / 3600)


def test_synthetic_vectors_are_unit_and_seeded():
    a, b = ts.synthetic_vectors(1000, seed=0), ts.synthetic_vectors(1000, seed=0)
    assert a.shape == (1000, 384) and a.dtype == b.dtype
    assert bool((a == b).all()) and not bool((a == ts.synthetic_vectors(1000, seed=1)).all())
    assert float((a.norm(dim=1) - 1).abs().max()) < 1e-5
    assert float((a @ a.T).mean()) > 0.2  # a shared direction, as sentence embeddings have


def test_out_that_is_not_an_earlier_report_is_refused_before_any_work(tmp_path):
    mine = tmp_path / "notes.md"
    mine.write_text("my own notes\n")
    with pytest.raises(SystemExit) as exit_:
        ts.main(["--quick", "--out", str(mine), "--log", str(tmp_path / "lib.log")])
    assert exit_.value.code == 2
    assert mine.read_text() == "my own notes\n" and not (tmp_path / "lib.log").exists()

"""Encoding under Lightning DDP on 2 CPU processes (gloo) gives the one-process vectors, in input order, and writes
the embedding cache once (semid.encoder.distributed)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import polars as pl
import pytest
import torch

from semid.encoder import EncoderConfig, distributed, encode, model_identity
from semid.encoder import cache as cache_module
from semid.errors import InputError
from semid.schema import EMBEDDING

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models run on one thread

WORDS = ["space", "robot", "love", "war", "ghost", "music", "ocean", "city", "spy", "king", "road"]
TEXTS = [" ".join(WORDS[: 1 + i % len(WORDS)]) + f" {i}" for i in range(31)] + ["the same text"] * 2
"""33 texts (odd), two of them equal; with batch_size 4: 9 length batches, 5 on rank 0 and 4 (16 rows) on rank 1."""


def _one_process(model: Path, texts: list[str] = TEXTS) -> torch.Tensor:
    return encode(texts, EncoderConfig(model=str(model), batch_size=4), progress=False)


def _two_ranks(model: Path, **fields: object) -> EncoderConfig:
    return EncoderConfig(model=str(model), batch_size=4, devices=2, accelerator="cpu", **fields)


def _no_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail if the distributed path quietly encodes everything in this process instead."""

    def refuse(*args: object, **kwargs: object) -> torch.Tensor:
        raise AssertionError("encoded in one process, not by the Lightning ranks")

    monkeypatch.setattr(distributed, "embed_all", refuse)


def test_two_ranks_give_the_one_process_vectors_in_order(
    tiny_bert_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_fallback(monkeypatch)
    monkeypatch.setattr(distributed, "GATHER_ROWS", 3)  # several gather rounds, forked ranks inherit it
    cfg = _two_ranks(tiny_bert_dir)
    assert distributed.resolve_strategy(cfg) == "ddp_fork"  # "auto" on CPU
    two = encode(TEXTS, cfg, progress=False)
    one = _one_process(tiny_bert_dir)
    assert two.shape == one.shape == (len(TEXTS), 32)
    torch.testing.assert_close(two, one, atol=1e-5, rtol=0)
    torch.testing.assert_close(two[-1], two[-2])  # the equal texts
    # vectors of different texts differ, so a shuffled order could not pass the comparison above
    assert torch.cdist(one[:-1], one[:-1]).add(torch.eye(len(TEXTS) - 1)).min() > 1e-3


def test_cache_is_written_once_with_the_one_process_vectors(
    tiny_bert_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_fallback(monkeypatch)
    cfg = _two_ranks(tiny_bert_dir)
    _, _, identity = model_identity(cfg)
    assert identity == model_identity(EncoderConfig(model=str(tiny_bert_dir)))[2]  # one cache for any devices
    first = encode(TEXTS[:20], cfg, cache=tmp_path, progress=False)  # encodes 20
    both = encode(TEXTS, cfg, cache=tmp_path, progress=False)  # encodes the 12 new distinct texts
    table = pl.read_parquet(cache_module.cache_file(tmp_path, identity))
    assert table.height == len(set(TEXTS))
    one = _one_process(tiny_bert_dir)
    torch.testing.assert_close(both, one, atol=1e-5, rtol=0)
    torch.testing.assert_close(first, one[:20], atol=1e-5, rtol=0)

    def refuse(*args: object, **kwargs: object) -> torch.Tensor:
        raise AssertionError("everything was cached: nothing should be encoded")

    monkeypatch.setattr(cache_module, "embed_distributed", refuse)
    torch.testing.assert_close(encode(TEXTS, cfg, cache=tmp_path, progress=False), both, atol=0, rtol=0)


def test_fewer_batches_than_ranks_encode_in_this_process(tiny_bert_dir: Path) -> None:
    two = encode(
        TEXTS[:3], _two_ranks(tiny_bert_dir, strategy="ddp_spawn"), progress=False
    )  # 1 batch: no spawn
    torch.testing.assert_close(two, _one_process(tiny_bert_dir, TEXTS[:3]), atol=0, rtol=0)


def test_bad_device_counts_are_input_errors() -> None:
    with pytest.raises(InputError, match="devices"):
        EncoderConfig(devices=0)
    with pytest.raises(InputError, match="num_nodes"):
        EncoderConfig(num_nodes=-1)


SCRIPT = """
import sys
from pathlib import Path

import torch

from semid.encoder import EncoderConfig, encode

model, out, cache = (Path(a) for a in sys.argv[1:4])
texts = {texts!r}
cfg = EncoderConfig(model=str(model), batch_size=4, devices=2, accelerator="cpu", strategy="ddp")
vectors = encode(texts, cfg, cache=cache, progress=False)
again = encode(texts, cfg, cache=cache, progress=False)  # every rank reads the cache rank 0 wrote (barrier)
assert torch.equal(vectors, again)
torch.save(vectors, out / f"rank{{torch.distributed.get_rank()}}.pt")
"""


@pytest.mark.skipif(
    os.environ.get("SEMID_SLOW") != "1", reason="two fresh interpreters (~35 s on 2 cores): set SEMID_SLOW=1"
)
def test_ddp_relaunch_gives_every_rank_the_vectors(tiny_bert_dir: Path, tmp_path: Path) -> None:
    """strategy="ddp": Lightning re-runs the calling script as rank 1; both ranks go on with all vectors, and
    rank 0 alone writes the cache. Run as a script in a subprocess: Lightning cannot re-run pytest."""
    script = tmp_path / "encode_ddp.py"
    script.write_text(textwrap.dedent(SCRIPT.format(texts=TEXTS)))
    out, cache = tmp_path / "out", tmp_path / "cache"
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, str(script), str(tiny_bert_dir), str(out), str(cache)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    one = _one_process(tiny_bert_dir)
    for rank in (0, 1):
        torch.testing.assert_close(torch.load(out / f"rank{rank}.pt"), one, atol=1e-5, rtol=0)
    (file,) = cache.glob("embeddings-*.parquet")
    assert pl.read_parquet(file)[EMBEDDING].to_numpy().shape == (len(set(TEXTS)), 32)

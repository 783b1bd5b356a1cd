"""Images end to end: a tiny random CLIP (word-level tokenizer built offline) through `build` and `assign` on
synthetic items with images, and the Qwen2-VL chat + image path of semid.encoder on a tiny random Qwen2-VL."""

from __future__ import annotations

import importlib.util
from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from pipelines.assign import assign
from pipelines.build_semids import build
from semid import data, synthetic
from semid import encoder as enc
from semid import schema as S
from semid.align import AlignConfig, AlignedEncoder, load_aligned_encoder
from semid.encoder import EncoderConfig, encode
from semid.errors import InputError
from semid.ids import read_table
from semid.io import read_meta
from semid.rqvae import RQVAEConfig, load_rqvae

HAS_TORCHVISION = importlib.util.find_spec("torchvision") is not None
RQ = RQVAEConfig(levels=2, codebook_size=4, max_epochs=15, batch_size=32, min_level0_utilization=0.25)
# user_max_length stays at its default (64 tokens) on purpose: beyond the tiny CLIP's 32 text positions
ALIGN = AlignConfig(max_epochs=2, max_pairs=400, batch_size=64, lr=1e-2, holdout=0.15)


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models run on one thread


def _noise_png(path: Path, seed: int, size: tuple[int, int] = (36, 40)) -> str:
    from PIL import Image

    rng = np.random.default_rng(seed)
    Image.fromarray((rng.random((*size, 3)) * 255).astype("uint8")).save(path)
    return str(path)


# -- CLIP through build / assign --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def image_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prepared synthetic dataset whose items have an image (a noise PNG) except every fifth one."""
    raw = tmp_path_factory.mktemp("raw_images")
    inter, items, users = synthetic.generate(
        synthetic.SyntheticConfig(n_users=60, n_items=30, n_interactions=1500)
    )
    (raw / "img").mkdir()
    paths = [None if k % 5 == 4 else f"img/i{k}.png" for k in range(items.height)]
    for k, p in enumerate(paths):
        if p is not None:
            _noise_png(raw / p, seed=k)
    items = items.with_columns(pl.Series("image", paths, dtype=pl.String))
    files = data.RawFiles(raw / "inter.parquet", raw / "item.parquet", raw / "user.parquet")
    for df, file in zip((inter, items, users), (files.inter, files.item, files.user)):
        df.write_parquet(file)
    cols = replace(synthetic.columns(), image_path="image")
    prepared = data.build(files, cols, data.PrepareConfig(), name="synthetic_images")
    return data.write(prepared, tmp_path_factory.mktemp("prepared_images") / "synthetic_images")


Built = tuple[Path, Path, Path]  # build output, prepared dir, embedding cache


@pytest.fixture(scope="module")
def built(clip_dir: Path, image_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Built:
    root = tmp_path_factory.mktemp("build_mm")
    # default max_length (128) on purpose: the token cap must follow the tokenizer's 32 positions
    out, _ = build(
        str(image_data),
        str(root / "semids"),
        encoder=EncoderConfig(model=str(clip_dir), batch_size=16),
        align_config=ALIGN,
        item_rqvae=RQ,
        user_rqvae=RQ,
        cache=str(root / "cache"),
    )
    return out, image_data, root / "cache"


def test_build_gives_the_same_ids_on_two_threads(
    built: Built, clip_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """`built` ran with the caller on 1 thread; the same build with the caller on 2 gives identical IDs and
    embeddings (alignment and RQ-VAE run on their configured thread count, see semid.determinism)."""
    out, image_data, _ = built
    root = tmp_path_factory.mktemp("build_mm_2threads")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        again, _ = build(
            str(image_data),
            str(root / "semids"),
            encoder=EncoderConfig(model=str(clip_dir), batch_size=16),
            align_config=ALIGN,
            item_rqvae=RQ,
            user_rqvae=RQ,
            cache=str(root / "cache"),
        )
    finally:
        torch.set_num_threads(threads)
    for name in (S.ITEM_SIDS_FILE, S.USER_SIDS_FILE, S.ITEM_EMB_FILE, S.USER_EMB_FILE):
        assert pl.read_parquet(again / name).equals(pl.read_parquet(out / name)), name


def _item_inputs(prepared_dir: Path) -> tuple[list[str], list[str | None]]:
    items = data.load(prepared_dir).items
    return items[S.TEXT].to_list(), items[S.IMAGE_PATH].to_list()


def test_build_embeds_items_from_text_and_image(built: Built) -> None:
    out, prepared_dir, cache = built
    prepared = data.load(prepared_dir)
    texts, images = _item_inputs(prepared_dir)
    has = torch.tensor([p is not None for p in images])
    assert 0 < int(has.sum()) < len(images)
    for table, key, n in (
        (S.ITEM_SIDS_FILE, S.ITEM, len(texts)),
        (S.USER_SIDS_FILE, S.USER, prepared.users.height),
    ):
        df, _ = read_table(out / table)
        assert df[key].to_list() == list(range(n))
        assert df.select(pl.all().exclude(key)).is_duplicated().sum() == 0  # full IDs unique
    meta = read_meta(out / S.ITEM_SIDS_FILE)
    probe = meta["probe"]
    assert probe["items_with_images"] == int(has.sum()) and probe["trained_layers"] == 0  # heads only
    assert probe["epochs"] >= 1  # the heads were trained
    assert (
        len(list(cache.glob("embeddings-*.parquet"))) == 2
    )  # items (text + image) and users (own token cap)

    emb = torch.from_numpy(pl.read_parquet(out / S.ITEM_EMB_FILE)[S.EMBEDDING].to_numpy().astype(np.float32))
    aligned = load_aligned_encoder(EncoderConfig(**meta["encoder"]), out / S.ALIGN_STATE_FILE)
    with_images = aligned.encode_items(texts, images)
    text_only = aligned.encode_items(texts)
    # the saved state reproduces the build's vectors, and only with the images
    torch.testing.assert_close(emb, with_images, atol=1e-5, rtol=1e-4)
    moved = (emb - text_only).norm(dim=1)
    assert moved[has].min() > 1e-3, moved
    assert moved[~has].max() < 1e-5, moved
    # another image for the same text: another vector
    k = int(torch.nonzero(has)[0])
    other = _noise_png(out.parent / "other.png", seed=1234)
    assert (aligned.encode_items([texts[k]], [other])[0] - emb[k]).norm() > 1e-3


def test_assign_with_image_keeps_existing_ids(
    built: Built, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out, prepared_dir, _ = built
    texts, images = _item_inputs(prepared_dir)
    old, old_meta = read_table(out / S.ITEM_SIDS_FILE)
    n = old.height
    _noise_png(tmp_path / "new.png", seed=99)
    new = pl.DataFrame(
        {
            S.ITEM: [n, n + 1],
            S.TEXT: ["The ghost of music 7. Genres: ghost music.", "A red car. Genres: road."],
            S.IMAGE_PATH: ["new.png", None],  # relative to the new items file
        }
    )
    new.write_parquet(tmp_path / "new_items.parquet")
    seen: list[list[str | None] | None] = []
    original = AlignedEncoder.encode_items

    def spy(self: AlignedEncoder, texts: list[str], images: list[str | None] | None = None) -> torch.Tensor:
        seen.append(images)
        return original(self, texts, images)

    monkeypatch.setattr(AlignedEncoder, "encode_items", spy)
    target = assign(str(out), str(tmp_path / "new_items.parquet"), out=str(tmp_path / "item_sids.parquet"))
    table, meta = read_table(target)
    assert seen == [[str(tmp_path / "new.png"), None]]
    assert table.height == n + 2 and meta["version"] == old_meta["version"] + 1
    assert table.head(n).equals(old)  # existing IDs untouched
    # the new rows carry the codes of the aligned text + image vectors
    aligned = load_aligned_encoder(EncoderConfig(**old_meta["encoder"]), out / S.ALIGN_STATE_FILE)
    emb = original(aligned, new[S.TEXT].to_list(), seen[0])
    codes = load_rqvae(out / S.ITEM_RQVAE_FILE).encode(emb)  # (2, L)
    got = table.tail(2).select(S.sid_column(0), S.sid_column(1)).to_numpy()
    assert np.array_equal(got, codes.numpy())


def test_assign_missing_image_raises_before_writing(built: Built, tmp_path: Path) -> None:
    out, _, _ = built
    before = (out / S.ITEM_SIDS_FILE).read_bytes()
    n = read_table(out / S.ITEM_SIDS_FILE)[0].height
    pl.DataFrame({S.ITEM: [n], S.TEXT: ["a blue boat"], S.IMAGE_PATH: ["gone.png"]}).write_parquet(
        tmp_path / "new_items.parquet"
    )
    with pytest.raises(InputError, match="do not exist") as info:
        assign(str(out), str(tmp_path / "new_items.parquet"))
    assert info.value.column == S.IMAGE_PATH and info.value.file == str(tmp_path / "gone.png")
    assert (out / S.ITEM_SIDS_FILE).read_bytes() == before


def test_text_encoder_ignores_images_with_a_warning(
    tiny_bert_dir: Path, image_data: Path, tmp_path: Path
) -> None:
    """A text encoder cannot see images: align warns and keeps training its top layer, as without images."""
    from semid.align import align, user_texts

    prepared = data.load(image_data)
    texts, images = _item_inputs(image_data)
    train = prepared.splits["train"]
    u_texts, _ = user_texts(prepared.users, prepared.items, train, n_recent=ALIGN.user_history)
    cfg = replace(ALIGN, max_epochs=1, max_pairs=128)
    enc_cfg = EncoderConfig(model=str(tiny_bert_dir), batch_size=32, max_length=32)
    with pytest.warns(UserWarning, match="takes no images"):
        with_images = align(
            texts, u_texts, train, enc_cfg, cfg, work_dir=tmp_path / "a", images=images, progress=False
        )
    plain = align(texts, u_texts, train, enc_cfg, cfg, work_dir=tmp_path / "b", progress=False)
    assert with_images.probe["trained_layers"] == 1 and with_images.probe["items_with_images"] == 0
    assert torch.equal(with_images.item_emb, plain.item_emb)


def test_cache_key_follows_image_content(clip_dir: Path, tmp_path: Path) -> None:
    """An image replaced under the same name is encoded again, not read back from the cache."""
    cfg = EncoderConfig(model=str(clip_dir))
    image = _noise_png(tmp_path / "item.png", seed=1)
    first = encode(["a red car"], cfg, images=[image], cache=tmp_path / "cache", progress=False)
    _noise_png(tmp_path / "item.png", seed=2, size=(30, 44))
    second = encode(["a red car"], cfg, images=[image], cache=tmp_path / "cache", progress=False)
    assert (first - second).norm() > 1e-3


# -- Qwen2-VL: chat template + image ------------------------------------------------------------------------

QWEN_SPECIALS = [
    "<|endoftext|>",
    "<unk>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
QWEN_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
)


def _qwen_parts(word_tokenizer):
    from transformers import Qwen2VLImageProcessor

    tok = word_tokenizer(QWEN_SPECIALS, model_max_length=512)
    tok.chat_template = QWEN_TEMPLATE
    images = Qwen2VLImageProcessor(min_pixels=28 * 28, max_pixels=56 * 56)  # 2x2..4x4 patches of 14 px
    return tok, images


def _qwen_processor_without_video(tok, images):
    """The real Qwen2VLProcessor (its __call__ expands <|image_pad|> per image grid) assembled without the
    video processor its constructor insists on: in transformers 5.x that one needs torchvision."""
    from transformers import Qwen2VLProcessor

    proc = Qwen2VLProcessor.__new__(Qwen2VLProcessor)
    proc.tokenizer, proc.image_processor, proc.video_processor = tok, images, None
    proc.chat_template = QWEN_TEMPLATE
    proc.image_token, proc.video_token = "<|image_pad|>", "<|video_pad|>"
    proc.image_token_id = tok.convert_tokens_to_ids(proc.image_token)
    proc.video_token_id = tok.convert_tokens_to_ids(proc.video_token)
    return proc


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory: pytest.TempPathFactory, word_tokenizer) -> Path:
    """Tiny random Qwen2-VL (2 text layers of width 32, 1 vision block) with tokenizer, chat template and image
    processor; the full processor is saved only where torchvision lets transformers build it."""
    from transformers import Qwen2VLConfig, Qwen2VLModel

    torch.manual_seed(0)
    tok, images = _qwen_parts(word_tokenizer)
    path = tmp_path_factory.mktemp("qwen2_vl")
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIALS}
    text = dict(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=512,
        bos_token_id=ids["<|im_start|>"],
        eos_token_id=ids["<|im_end|>"],
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 10000.0,
            "mrope_section": [2, 3, 3],
        },  # head 16
    )
    vision = dict(
        depth=1, embed_dim=32, hidden_size=32, num_heads=2, mlp_ratio=2, patch_size=14, spatial_merge_size=2
    )
    config = Qwen2VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    Qwen2VLModel(config).save_pretrained(path)
    if HAS_TORCHVISION:
        from transformers import Qwen2VLProcessor, Qwen2VLVideoProcessor

        Qwen2VLProcessor(
            image_processor=images,
            tokenizer=tok,
            video_processor=Qwen2VLVideoProcessor(),
            chat_template=QWEN_TEMPLATE,
        ).save_pretrained(path)
    else:
        tok.save_pretrained(path)
        images.save_pretrained(path)
        (path / "processor_config.json").write_text('{"processor_class": "Qwen2VLProcessor"}')
    for i in range(2):
        _noise_png(path / f"img{i}.png", seed=10 + i, size=(40, 48))
    return path


@pytest.mark.skipif(HAS_TORCHVISION, reason="torchvision installed: the processor loads")
def test_qwen2_vl_without_torchvision_is_a_clear_error(qwen_dir: Path) -> None:
    with pytest.raises(InputError, match="torchvision") as info:
        enc.ContentEncoder(EncoderConfig(model=str(qwen_dir)))
    assert Path(info.value.file) == qwen_dir


def test_qwen2_vl_chat_template_with_image(
    qwen_dir: Path, monkeypatch: pytest.MonkeyPatch, word_tokenizer
) -> None:
    if not HAS_TORCHVISION:  # the real processor class, built without its torchvision-only video processor
        from transformers import AutoProcessor

        proc = _qwen_processor_without_video(*_qwen_parts(word_tokenizer))
        monkeypatch.setattr(AutoProcessor, "from_pretrained", lambda *args, **kwargs: proc)
    cfg = EncoderConfig(model=str(qwen_dir), pooling="last")
    model = enc.ContentEncoder(cfg)
    assert model.kind == "vlm" and model.accepts_images
    texts = ["a red car", "the blue boat of the king"]
    img0, img1 = str(qwen_dir / "img0.png"), str(qwen_dir / "img1.png")
    mixed = encode(texts, cfg, images=[img0, None], encoder=model, progress=False)
    plain = encode(texts, cfg, encoder=model, progress=False)
    other = encode(texts, cfg, images=[img1, None], encoder=model, progress=False)
    assert mixed.shape == (2, 32) and mixed.isfinite().all()
    torch.testing.assert_close(mixed.norm(dim=1), torch.ones(2))
    assert (mixed[0] - plain[0]).norm() > 1e-3  # the image moved the item's vector
    assert (mixed[0] - other[0]).norm() > 1e-4  # and another image moves it elsewhere
    # the row without an image: the chat-wrapped text alone (causal model, right padding, last-token pooling)
    torch.testing.assert_close(mixed[1], plain[1], atol=1e-5, rtol=1e-4)

"""Shared fixtures: seeded synthetic raw files, a prepared dataset directory built by the real `prepare`, tiny random
models saved as local folders (BERT, CLIP, a chat Llama), and a one-thread torch setting for modules of tiny
models."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on an oversubscribed CPU OpenMP spin-waiting makes them
    20-50x slower. A module opts in with `pytestmark = pytest.mark.usefixtures("one_thread")`; the setting is
    restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def synthetic_raw(tmp_path_factory):
    from semid import synthetic

    return synthetic.write(synthetic.SyntheticConfig(), tmp_path_factory.mktemp("raw"))


@pytest.fixture(scope="session")
def prepared_dir(synthetic_raw, tmp_path_factory):
    """A prepared synthetic dataset (200 users, 120 items, 6,000 interactions, temporal 80/10/10 split)."""
    from semid import data, synthetic

    files = data.RawFiles(synthetic_raw["inter"], synthetic_raw["item"], synthetic_raw["user"])
    prepared = data.build(files, synthetic.columns(), data.PrepareConfig(), name="synthetic")
    return data.write(prepared, tmp_path_factory.mktemp("prepared") / "synthetic")


def _minilm_tokenizer():
    from transformers import AutoTokenizer

    from semid.encoder import default_model_path

    return AutoTokenizer.from_pretrained(default_model_path())


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory):
    """A tiny random BERT (2 layers, width 32) with the default encoder's tokenizer, saved as a local HF folder.
    The one tiny text encoder of the suite (encoder, align, pipeline tests)."""
    from transformers import BertConfig, BertModel

    path = tmp_path_factory.mktemp("tiny_bert")
    tokenizer = _minilm_tokenizer()
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


_VOCAB = (  # the words of synthetic item and user texts, and of the test texts; the rest reads as <unk>
    "space robot love war crime ghost music sport family magic ocean desert city history spy school animal "
    "future king road the of genres recently liked user age gender male female a red car blue boat . , : ; | -"
)
WORDS = [*_VOCAB.split(), *(str(i) for i in range(100))]


def _word_tokenizer(specials: list[str], *, model_max_length: int, wrap: tuple[str, str] | None = None):
    """A word-level fast tokenizer over WORDS, built offline with `tokenizers` (unknown words -> <unk>);
    `wrap` = (bos, eos) added around every text, as CLIP's tokenizer does."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(dict.fromkeys([*specials, *WORDS]))}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    if wrap is not None:
        bos, eos = wrap
        tk.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A {eos}", special_tokens=[(bos, vocab[bos]), (eos, vocab[eos])]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tk,
        unk_token="<unk>",
        pad_token=specials[0],
        additional_special_tokens=[s for s in specials if s not in ("<unk>", specials[0])],
        model_max_length=model_max_length,
    )


@pytest.fixture(scope="session")
def word_tokenizer():
    """The builder of word-level tokenizers over WORDS (CLIP, Qwen2-VL fixtures)."""
    return _word_tokenizer


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory):
    """The one tiny random CLIP of the suite: CLIPModel + CLIPProcessor (word-level tokenizer, 32 text positions
    like CLIP's 77), and two noise images img0.png / img1.png in the folder."""
    import numpy as np
    from PIL import Image
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    torch.manual_seed(0)
    specials = ["<pad>", "<unk>", "<|startoftext|>", "<|endoftext|>"]
    tok = _word_tokenizer(specials, model_max_length=32, wrap=("<|startoftext|>", "<|endoftext|>"))
    path = tmp_path_factory.mktemp("clip")
    text = dict(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=32,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.convert_tokens_to_ids("<|startoftext|>"),
        eos_token_id=tok.convert_tokens_to_ids("<|endoftext|>"),  # pooled at the first end-of-text token
    )
    vision = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
    )
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(path)
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=images, tokenizer=tok).save_pretrained(path)
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray((rng.random((40, 48, 3)) * 255).astype("uint8")).save(path / f"img{i}.png")
    return path


CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _chat_tokenizer():
    """A byte-level BPE tokenizer (320 tokens) with ChatML special tokens and chat template, trained offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    corpus = [
        '{"themes": ["space", "war"], "audience": "teens"}',
        "Toy Story (1995). Animation, Comedy.",
    ] * 20
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    raw.train_from_iterator(corpus, trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=raw, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|im_end|>"
    )
    tok.chat_template = CHATML
    return tok


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    """(folder, model, tokenizer): the one tiny random causal LM of the suite, a 2-layer width-32 Llama with
    grouped KV heads and a ChatML byte-level BPE tokenizer, saved as safetensors (LLM layer and knowledge tests)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = _chat_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    folder = tmp_path_factory.mktemp("tiny_llama")
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder, model, tok

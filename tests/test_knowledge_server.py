"""The OpenAI-compatible server backend against a server started on 127.0.0.1 inside the test: chat, structured
answers, embeddings order, retries on 5xx, timeouts, and a cached re-run that sends no request."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from werkzeug import Request, Response

from semid.errors import InputError
from semid.knowledge import LLM, GenerationParams, LLMCache, LLMConfig
from semid.knowledge.server import ServerBackend

pytest.importorskip("pytest_httpserver")

SCHEMA = {
    "type": "object",
    "properties": {"genres": {"type": "array", "items": {"type": "string"}}},
    "required": ["genres"],
}


@pytest.fixture(scope="session")
def httpserver_listen_address():
    """Loopback only: the tests never reach another host."""
    return ("127.0.0.1", 0)


def _chat(request: Request) -> Response:
    body = request.get_json()
    prompt = body["messages"][0]["content"]
    if "response_format" in body:
        content = json.dumps({"genres": [prompt.upper()]})
    else:
        content = f" echo: {prompt} "
    return Response(json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}))


def _embeddings(request: Request) -> Response:
    inputs = request.get_json()["input"]
    data = [{"index": i, "embedding": [float(len(t)), float(i)]} for i, t in enumerate(inputs)]
    return Response(json.dumps({"data": data[::-1]}))  # out of order on purpose: the client sorts by index


def _cfg(httpserver, **overrides) -> LLMConfig:
    return LLMConfig(model="tiny", url=httpserver.url_for("/"), batch_size=2, **overrides)


def test_chat_structured_and_embeddings(httpserver, tmp_path):
    httpserver.expect_request("/v1/chat/completions", method="POST").respond_with_handler(_chat)
    httpserver.expect_request("/v1/embeddings", method="POST").respond_with_handler(_embeddings)
    llm = LLM(_cfg(httpserver), LLMCache(tmp_path / "c.sqlite"), progress=False)
    assert isinstance(llm.backend, ServerBackend)
    assert llm.generate(["hi", "there"]) == ["echo: hi", "echo: there"]
    assert llm.generate(["toy"], SCHEMA, task="facets") == [{"genres": ["TOY"]}]
    sent = [json.loads(req.data) for req, _ in httpserver.log if req.path == "/v1/chat/completions"]
    assert sent[-1]["response_format"]["json_schema"]["schema"] == SCHEMA
    assert sent[0]["max_tokens"] == GenerationParams().max_new_tokens
    vectors = llm.hidden(["a", "bbb", "cc"])
    np.testing.assert_array_equal(vectors[:, 0], [1, 3, 2])

    requests_before = len(httpserver.log)
    again = LLM(_cfg(httpserver), LLMCache(tmp_path / "c.sqlite", "read-only"), progress=False)
    assert again.generate(["hi", "there"]) == ["echo: hi", "echo: there"]
    np.testing.assert_array_equal(again.hidden(["a", "bbb", "cc"]), vectors)
    assert len(httpserver.log) == requests_before  # a full cache hit never reaches the server


def test_retries_transient_errors_then_succeeds(httpserver):
    httpserver.expect_ordered_request("/v1/embeddings").respond_with_data("busy", status=503)
    httpserver.expect_ordered_request("/v1/embeddings").respond_with_handler(_embeddings)
    backend = ServerBackend(_cfg(httpserver, retries=2))
    assert backend.hidden(["abc"]).tolist() == [[3.0, 0.0]]
    assert len(httpserver.log) == 2


def test_client_errors_are_not_retried_and_name_the_fix(httpserver):
    httpserver.expect_request("/v1/chat/completions").respond_with_data("no such model", status=404)
    backend = ServerBackend(_cfg(httpserver, retries=3))
    with pytest.raises(InputError, match="HTTP 404: no such model"):
        backend.generate(["x"])
    assert len(httpserver.log) == 1


def test_a_hanging_server_times_out(httpserver):
    def slow(request: Request) -> Response:
        time.sleep(1.0)
        return _embeddings(request)

    httpserver.expect_request("/v1/embeddings").respond_with_handler(slow)
    backend = ServerBackend(_cfg(httpserver, timeout_s=0.2, retries=1))
    start = time.perf_counter()
    with pytest.raises(InputError, match="failed after 2 tries: ReadTimeout"):
        backend.hidden(["x"])
    assert time.perf_counter() - start < 2.0


def test_missing_api_key_variable_is_a_clear_error(httpserver, monkeypatch):
    monkeypatch.delenv("SEMID_TEST_KEY", raising=False)
    with pytest.raises(InputError, match="SEMID_TEST_KEY"):
        ServerBackend(_cfg(httpserver, api_key_env="SEMID_TEST_KEY"))
    monkeypatch.setenv("SEMID_TEST_KEY", "secret")
    httpserver.expect_request(
        "/v1/embeddings", headers={"Authorization": "Bearer secret"}
    ).respond_with_handler(_embeddings)
    assert ServerBackend(_cfg(httpserver, api_key_env="SEMID_TEST_KEY")).hidden(["ab"]).shape == (1, 2)

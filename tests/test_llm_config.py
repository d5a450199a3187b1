"""Where an LLM API key may go (issue 12, problem 1): only to the base URL it was entered with.

The operator configures the server's endpoint (environment or a config file); a dashboard session may
override it in its own state. These tests run real HTTP listeners and look at the headers they receive."""
from __future__ import annotations

import dataclasses

import pytest

from backend import labels as labels_mod
from backend.labels import LLMConfig, LLMError, chat, operator_llm_config, same_endpoint, session_llm_config
from tests.fake_llm import FakeChatServer

HI = [{"role": "user", "content": "hi"}]


@pytest.fixture()
def listeners():
    """Fake servers answering 'ok' (tests.fake_llm); `.seen_auth` lists the Authorization header of each request."""
    servers: list[FakeChatServer] = []

    def make() -> FakeChatServer:
        servers.append(FakeChatServer())
        return servers[-1]

    yield make
    for server in servers:
        server.close()


def test_a_session_key_goes_only_to_its_own_url(listeners):
    a, b = listeners(), listeners()
    session_a = session_llm_config(None, a.url, "m", "sk-A")
    assert chat(session_a, HI) == "ok" and a.seen_auth == ["Bearer sk-A"]
    moved = dataclasses.replace(session_a, base_url=b.url)  # the same config pointed elsewhere carries no key
    assert moved.api_key is None and chat(moved, HI) == "ok" and b.seen_auth == [None]
    assert "sk-A" not in repr(session_a)


def test_the_operator_key_goes_only_to_the_operator_url(listeners, monkeypatch):
    operator, other = listeners(), listeners()
    monkeypatch.setenv("SAEDASH_LLM_BASE_URL", operator.url + "/")  # a trailing slash is the same endpoint
    monkeypatch.setenv("SAEDASH_LLM_MODEL", "m")
    monkeypatch.setenv("SAEDASH_LLM_API_KEY", "sk-operator")
    op = operator_llm_config()
    chat(session_llm_config(op), HI)  # no session settings: the operator's endpoint and key
    chat(session_llm_config(op, model="other-model"), HI)  # same URL, another model: still the operator's key
    chat(session_llm_config(op, base_url=other.url), HI)  # another URL, no key entered: no key at all
    assert operator.seen_auth == ["Bearer sk-operator"] * 2 and other.seen_auth == [None]


def test_redirects_are_refused_so_a_key_cannot_follow_them(listeners):
    target, redirector = listeners(), listeners()
    redirector.redirect_to = target.url
    with pytest.raises(LLMError, match="HTTP 307"):
        chat(LLMConfig(redirector.url, "m", "sk-A"), HI)
    assert redirector.seen_auth == ["Bearer sk-A"] and target.seen_auth == []


def test_operator_config_file(tmp_path, monkeypatch):
    for var in ("SAEDASH_LLM_BASE_URL", "SAEDASH_LLM_MODEL", "SAEDASH_LLM_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("SAEDASH_LLM_CONFIG", raising=False)
    assert operator_llm_config() is None
    path = tmp_path / "llm.toml"
    path.write_text('[llm]\nbase_url = "http://127.0.0.1:8000/v1"\nmodel = "m"\napi_key = "sk-file"\ntimeout_s = 5\n')
    monkeypatch.setenv("SAEDASH_LLM_CONFIG", str(path))
    cfg = operator_llm_config()
    assert cfg == LLMConfig("http://127.0.0.1:8000/v1", "m", "sk-file", timeout_s=5)
    path.write_text('base_url = "http://127.0.0.1:8000/v1"\nmodle = "typo"\n')
    with pytest.raises(LLMError, match="needs base_url and model"):
        operator_llm_config()


def test_endpoints_and_refusals():
    assert same_endpoint("http://Host:8000/v1/", "http://host:8000/v1")
    assert not same_endpoint("http://host:8000/v1", "http://host:8001/v1")
    assert not same_endpoint("http://host/v1", "https://host/v1") and not same_endpoint(None, "http://host/v1")
    for url in ("", "localhost:8000", "file:///etc/passwd", "ftp://host/v1"):
        with pytest.raises(LLMError):
            LLMConfig(url, "m")
    with pytest.raises(LLMError):
        LLMConfig("http://host/v1", " ")
    assert session_llm_config(None) is None and session_llm_config(None, "http://host/v1") is None
    assert labels_mod.LLMConfig("http://h/v1", "m", "  ").api_key is None  # a blank key is no key

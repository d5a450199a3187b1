"""Hypotheses from diff findings, written and checked by a local fake OpenAI-compatible server."""
from __future__ import annotations

import math
import re

import pytest

from backend.analysis.findings import Finding
from backend.analysis.hypotheses import (
    ChatReply,
    HypothesisConfig,
    check_hypotheses,
    parse_hypotheses,
    run_hypotheses,
    sample_doc_ids,
)
from backend.labels import LLMConfig, LLMError
from tests.fake_llm import FakeChatServer, last_prompt

CANNED = (
    "Here are my hypotheses:\n"
    "1. Documents in A more often contain links to websites.\n"
    "2. Documents in B are more likely to use angry, negative wording.\n"
    "3. Documents in A more often mention the weather.\n"
)
KEYWORDS = {"links": "http", "negative": "hate", "weather": "rain"}  # what the fake judge looks for
USAGE = {"prompt_tokens": 50, "completion_tokens": 7, "total_tokens": 57}


def hypothesis_server() -> FakeChatServer:
    """Canned hypotheses (`propose_reply`) for the proposal, keyword matching for the checks, with usage."""

    def answer(body: dict) -> str:
        prompt = last_prompt(body)
        if not prompt.startswith("Hypothesis:"):
            return server.propose_reply
        prop = re.search(r"^Property to look for in each document: (.*)$", prompt, flags=re.M).group(1)
        word = next(k for name, k in KEYWORDS.items() if name in prop)
        docs = re.findall(r"^Document (\d+): (.*)$", prompt, flags=re.M)
        return "\n".join(f"{i}: {'yes' if word in text else 'no'}" for i, text in docs)

    server = FakeChatServer(answer, usage=USAGE)
    server.propose_reply = CANNED
    return server


@pytest.fixture()
def llm():
    fake = hypothesis_server()
    yield fake
    fake.close()


def corpora() -> tuple[dict[int, str], dict[int, str]]:
    """A: 70% links, 20% hate, 50% rain; B: 10% links, 60% hate, 50% rain (doc ids overlap on purpose)."""
    def doc(side: str, i: int, link: bool, hate: bool, rain: bool) -> str:
        return " ".join([side, "document", str(i)] + ["see http://t.co/x"] * link + ["i hate it"] * hate
                        + ["rain today"] * rain)

    docs_a = {i: doc("alpha", i, i % 10 < 7, i % 10 < 2, i % 2 == 0) for i in range(30)}
    docs_b = {i: doc("beta", i, i % 10 < 1, i % 10 < 6, i % 2 == 0) for i in range(30)}
    return docs_a, docs_b


FINDINGS = [
    Finding(side="a", label="links (t.co URLs)", feature_ids=(5, 6, 7), share_a=0.7, share_b=0.1, diff=0.6,
            adj_diff=None, q_value=1e-9, length_confounded=False, is_formatting=False, examples_a=(0, 1),
            examples_b=(0,), score=0.6),
    Finding(side="b", label="negative wording", feature_ids=(9,), share_a=0.2, share_b=0.6, diff=-0.4,
            adj_diff=None, q_value=1e-6, length_confounded=False, is_formatting=False, examples_a=(), examples_b=(2, 3),
            score=-0.4),
]


def test_hypotheses_against_a_fake_server(llm):
    docs_a, docs_b = corpora()
    cfg = LLMConfig(base_url=llm.url, model="fake-model", api_key="sk-test", timeout_s=5)
    config = HypothesisConfig(n_hypotheses=3, sample_size=40, batch_size=7)
    report = run_hypotheses(FINDINGS, docs_a, docs_b, docs_a, docs_b, cfg, config, name_a="phone", name_b="web")

    links, negative, weather = report.hypotheses
    assert links.text == "Documents in A more often contain links to websites." and links.side == "a"
    assert negative.side == "b" and negative.property == "use angry, negative wording"
    # shares are the fake judge's answers over every document (the sample covers both corpora)
    assert (links.n_a, links.n_b) == (30, 30) and report.sample_size == 40
    assert links.share_a == pytest.approx(0.7) and links.share_b == pytest.approx(0.1) and links.supported
    assert negative.share_a == pytest.approx(0.2) and negative.share_b == pytest.approx(0.6) and negative.supported
    assert weather.share_a == pytest.approx(0.5) and weather.share_b == pytest.approx(0.5) and not weather.supported
    assert set(links.matches_a) == {i for i, t in docs_a.items() if "http" in t}

    n_calls = 1 + 3 * math.ceil(60 / 7)
    assert report.n_calls == n_calls == len(llm.requests)
    assert report.prompt_tokens == 50 * n_calls and report.completion_tokens == 7 * n_calls
    assert report.total_tokens == 57 * n_calls and not report.tokens_estimated
    assert report.seconds > 0

    propose = llm.requests[0]
    assert propose["path"] == "/v1/chat/completions" and propose["auth"] == "Bearer sk-test"
    assert propose["body"]["model"] == "fake-model" and propose["body"]["max_tokens"] == config.propose_max_tokens
    prompt = propose["body"]["messages"][-1]["content"]
    assert "A (phone) and B (web)" in prompt
    assert "More common in A: links (t.co URLs) — 70% vs 10% of documents (3 features)" in prompt
    assert f"Example from A: {docs_a[1]}" in prompt and f"Example from B: {docs_b[3]}" in prompt
    # checks are blind: a batch mixes A and B documents
    check = llm.requests[1]["body"]["messages"][-1]["content"]
    sides = [text.split()[0] for text in re.findall(r"^Document \d+: (.*)$", check, flags=re.M)]
    assert len(sides) == 7 and set(sides) == {"alpha", "beta"}
    frame = report.to_frame()
    assert list(frame["supported"]) == [True, True, False] and list(frame["n_b"]) == [30, 30, 30]


def test_sample_size_bounds_the_check_and_plain_callables_serve(llm):
    docs_a, docs_b = corpora()
    served: list[str] = []

    def reader_model(messages: list[dict[str, str]]) -> str:  # stands in for the reader model: text only
        served.append(messages[-1]["content"])
        return llm.answer({"messages": messages})

    hyps = parse_hypotheses(CANNED)
    checked = check_hypotheses(hyps[:1], docs_a, docs_b, reader_model, sample_size=10, batch_size=4, seed=3)
    (links,) = checked
    assert (links.n_a, links.n_b) == (10, 10)
    assert links.share_a == pytest.approx(len(links.matches_a) / 10)
    assert set(links.matches_a) <= set(sample_doc_ids(list(docs_a), 10, 3))
    assert all("http" in docs_a[d] for d in links.matches_a) and len(served) == math.ceil(20 / 4)

    report = run_hypotheses(FINDINGS, docs_a, docs_b, docs_a, docs_b, reader_model,
                            HypothesisConfig(n_hypotheses=2, sample_size=5, batch_size=10))
    assert len(report.hypotheses) == 2 and report.n_calls == 3 and report.tokens_estimated
    assert report.prompt_tokens >= sum(len(s) for s in served[-3:]) // 4 > 0 and report.completion_tokens > 0

    usage = run_hypotheses(FINDINGS, docs_a, docs_b, docs_a, docs_b,
                           lambda m: ChatReply(llm.answer({"messages": m}), 11, 2), HypothesisConfig(sample_size=5))
    assert usage.prompt_tokens == 11 * usage.n_calls and not usage.tokens_estimated


def test_unusable_replies_and_server_errors(llm):
    docs_a, docs_b = corpora()
    cfg = LLMConfig(base_url=llm.url, model="m", timeout_s=5)
    llm.propose_reply = "I cannot help with that."
    with pytest.raises(LLMError, match="no hypothesis"):
        run_hypotheses(FINDINGS, docs_a, docs_b, docs_a, docs_b, cfg)
    llm.status = 500
    with pytest.raises(LLMError, match="HTTP 500"):
        run_hypotheses(FINDINGS, docs_a, docs_b, docs_a, docs_b, cfg)
    with pytest.raises(ValueError):
        HypothesisConfig(n_hypotheses=0)
    with pytest.raises(ValueError):
        run_hypotheses([], docs_a, docs_b, docs_a, docs_b, cfg)

"""A diff's findings labelled by the configured LLM (a fake OpenAI server), the offline label kept beside it."""
from __future__ import annotations

import re
from types import SimpleNamespace

import pytest

from backend import finding_labels as FL
from backend import labels as L
from backend.analysis.findings import Finding
from tests.fake_llm import FakeChatServer, last_prompt
from tests.test_labels import PLANTED, pyws  # noqa: F401  (the fixture)

ENV = ("SAEDASH_LLM_BASE_URL", "SAEDASH_LLM_MODEL", "SAEDASH_LLM_API_KEY", "SAEDASH_LLM_CONFIG")


def answer(body: dict) -> str:
    """Labels a feature after the first marked token; predicts 'yes' for held-out samples that mention python."""
    prompt = last_prompt(body)
    if prompt.startswith(L.LABEL_PROMPT[:40]):
        marked = re.search(r"<<(.+?)>>", prompt.split("Activating samples:")[1])
        return f"Label: mentions of {marked.group(1).strip() if marked else 'nothing'}"
    samples = re.findall(r"^Sample (\d+): (.*)$", prompt, flags=re.M)
    return "\n".join(f"{i}: {'yes' if 'python' in t else 'no'}" for i, t in samples)


@pytest.fixture()
def server(monkeypatch):
    fake = FakeChatServer(answer)
    for var in ENV:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SAEDASH_LLM_BASE_URL", fake.url)
    monkeypatch.setenv("SAEDASH_LLM_MODEL", "fake-model")
    yield fake
    fake.close()


def test_the_configured_llm_labels_the_findings_beside_their_offline_labels(pyws, server):  # noqa: F811
    res = pyws.diff("py", column="topic", value_a="code")
    summary = res.summary(n_per_side=4)
    leads = [f.lead for f in summary]
    assert PLANTED in leads  # fires on every "python" document: the planted finding of side A
    calls: list[tuple[int, int]] = []
    table = pyws.label_findings(res, "py", progress=lambda d, t: calls.append((d, t)), n_show=2, n_holdout=2)
    assert list(table.columns) == FL.FINDING_LABEL_COLUMNS
    assert table["feature_id"].tolist() == leads and table["side"].tolist() == [f.side for f in summary]
    n_leads = len(set(leads))
    assert calls[-1] == (n_leads, n_leads) and len(calls) == n_leads
    row = table.set_index("feature_id").loc[PLANTED]
    assert row["llm_label"] == "mentions of python" and row["llm_score"] == pytest.approx(1.0)
    stored = L.feature_labels(pyws, PLANTED).set_index("source")
    assert row["offline_label"] == stored.loc["auto", "label"] and row["offline_label"].startswith("python")
    assert row["offline_score"] == pytest.approx(float(stored.loc["auto", "score"]))
    assert row["llm_label"] == stored.loc["llm", "label"] and not table["cached"].any()
    assert L.labels(pyws, "py")[PLANTED] == "mentions of python"  # the findings now read the LLM's label

    asked = len(server.requests)
    assert asked >= n_leads
    again = pyws.label_findings(res, "py")
    assert len(server.requests) == asked and again["cached"].all()  # stored: nothing asked again
    assert again[["llm_label", "offline_label"]].equals(table[["llm_label", "offline_label"]])


def test_without_an_llm_the_findings_are_not_labelled_and_it_says_how(pyws, monkeypatch):  # noqa: F811
    for var in ENV:
        monkeypatch.delenv(var, raising=False)
    assert FL.configured_llm(pyws)[0] is None and "not worth reading" in FL.configured_llm(pyws)[1]
    res = pyws.diff("py", column="topic", value_a="code")
    with pytest.raises(L.LLMError, match="SAEDASH_LLM_BASE_URL"):
        pyws.label_findings(res, "py")


def test_hypotheses_without_an_llm_use_the_configured_one_or_say_how(pyws, monkeypatch):  # noqa: F811
    """ws.hypotheses(res, None, …) asks the configured LLM, as label_findings does; with none it says how to set one
    (it raised "'NoneType' object is not callable")."""
    from backend.analysis.hypotheses import HypothesisConfig

    for var in ENV:
        monkeypatch.delenv(var, raising=False)
    res = pyws.diff("py", column="topic", value_a="code")
    with pytest.raises(L.LLMError, match="Hypotheses are written only with an LLM: .*SAEDASH_LLM_BASE_URL"):
        pyws.hypotheses(res, None, "py")
    asked: list[str] = []

    def fake(messages):
        prompt = messages[-1]["content"]
        asked.append(prompt)
        if not prompt.startswith("Hypothesis:"):
            return "1. Documents in A more often mention python.\n"
        docs = re.findall(r"^Document (\d+): (.*)$", prompt, flags=re.M)
        return "\n".join(f"{i}: {'yes' if 'python' in t else 'no'}" for i, t in docs)

    monkeypatch.setattr(FL, "configured_llm", lambda ctx: (fake, "a fake chat function"))
    report = pyws.hypotheses(res, None, "py", config=HypothesisConfig(n_hypotheses=1, sample_size=10))
    (hyp,) = report.hypotheses
    assert asked and hyp.share_a > hyp.share_b


def finding(side: str, lead: int) -> Finding:
    return Finding(side=side, label="x", feature_ids=(lead,), share_a=0.5, share_b=0.1, diff=0.4, adj_diff=None,
                   q_value=0.01, length_confounded=False, is_formatting=False, examples_a=(), examples_b=(), score=0.4)


def test_side_b_findings_are_labelled_in_the_corpus_where_they_fire():
    a, b = SimpleNamespace(corpus_id=1, name="a"), SimpleNamespace(corpus_id=2, name="b")
    groups = FL._corpus_groups([finding("a", 5), finding("b", 7), finding("a", 9), finding("b", 5), finding("a", 5)], a, b)
    assert [(c.name, ids) for c, ids in groups] == [("a", [5, 9]), ("b", [7, 5])]


def test_a_finding_whose_lead_names_nothing_is_labelled_through_the_member_that_names_it():
    """The LLM labels the feature the finding is read by (`naming_feature`), not a lead whose label names nothing."""
    a = SimpleNamespace(corpus_id=1, name="a")
    vague = Finding(side="a", label="number / constant", feature_ids=(4, 8), share_a=0.5, share_b=0.1, diff=0.4,
                    adj_diff=None, q_value=0.01, length_confounded=False, is_formatting=False, examples_a=(),
                    examples_b=(), score=0.4, feature_labels=("varied tokens: constant / harmonic", "number / constant"))
    assert FL._corpus_groups([vague, finding("a", 5)], a, a)[0][1] == [8, 5]

"""Feature labels: automatic labels from where features fire, hand labels, LLM labels against a local server."""
from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from backend import features as F
from backend import labels as L
from backend.label_text import split_label
from tests.fake_llm import FakeChatServer, last_prompt
from tests.test_features import plant

PYTHON_DOCS = pd.DataFrame({
    "text": [
        "python code with a function", "the python function will return a value", "i love python",
        "a python error in the file", "the movie was great and funny", "a terrible boring film",
        "the dog and the cat in the house", "police and crime in the city at night", "hello world",
        "the music at the ending was great", "the actor and the actress were good", "i hate this film",
    ],
    "topic": ["code"] * 4 + ["movie"] * 2 + ["other"] * 6,
})
PLANTED = 63


@pytest.fixture()
def pyws(tiny_workspace):
    """Embedded corpus where feature 63 fires exactly at the token 'python' of the python documents."""
    ws = tiny_workspace
    ws.add_corpus("py", PYTHON_DOCS, "text")
    ws.embed("py")
    enc = ws.reader.encode_documents(PYTHON_DOCS["text"].tolist(), ws.embed_config.formatting, ws.embed_config.max_tokens)
    py_id = ws.reader.tokenizer.convert_tokens_to_ids("python")
    pos = {d: e.ids.index(py_id) for d, e in enumerate(enc) if py_id in e.ids}
    assert len(pos) == 4
    plant(ws, "py", PLANTED, {d: 5.0 - 0.5 * d for d in pos}, pos)
    ws.finalize("py")
    return ws


def test_planted_feature_label_comes_from_its_top_tokens(pyws):
    label = L.labels(pyws, "py")[PLANTED]
    assert label.startswith('python — "') and "«python»" in label
    tokens = F.feature_top_tokens(pyws, "py", PLANTED)
    assert tokens["token"].iloc[0] == "python" and tokens["count"].iloc[0] == 4
    ctx = F.feature_contexts(pyws, "py", PLANTED)
    assert (ctx["token"] == "python").all() and ctx["doc_id"].tolist() == [0, 1, 2, 3]
    assert ctx["after"].iloc[0].strip().startswith("code")
    # every auto label that names words names that feature's own most frequent argmax token (when it is a word);
    # a label naming what the contexts share ("after articles and determiners (actor / film)") lists the words of
    # the contexts that share it, which need not hold the commonest token
    top = pyws.store.query_df("SELECT feature_id, arg_max(token, count) tok FROM feature_top_tokens WHERE corpus_id = ? "
                              "GROUP BY feature_id", [pyws.store.corpus_id("py")])
    labs = L.labels(pyws, "py")
    for fid, tok in top.itertuples(index=False):
        if re.search(r"\w", tok) and tok != "[UNK]" and "(" not in split_label(labs[fid])[0]:
            assert tok in labs[fid], (tok, labs[fid])


def test_auto_labels_pick_distinctive_ngrams():
    vocab = ["the", "special", "effects", "movie", "and", "of", "python", "code"]
    ids = {w: i for i, w in enumerate(vocab)}

    def decode(t: tuple[int, ...]) -> str:
        return " ".join(vocab[i] for i in t)

    windows = [[ids[w] for w in s.split()] for s in
               ["the special effects of the movie", "and the special effects", "special effects and the movie"]]
    ctx = L.ContextSet(feature_id=np.array([7, 7, 7]), rank=np.arange(3), doc_id=np.arange(3), act=np.ones(3, np.float32),
                       token_id=np.array([ids["movie"], ids["effects"], ids["movie"]]), windows=windows,
                       centers=np.array([5, 3, 4]))
    background = [[ids[w] for w in s.split()] for s in ["the python code", "and the code", "the and of", "python and the"]]
    df = L.auto_labels(ctx, background, decode)
    label = df.set_index("feature_id").loc[7, "label"]
    assert label == 'movie / effects — "the special effects of the «movie»"'  # firing words, strongest context
    assert df["score"].iloc[0] == pytest.approx(1.0)  # both named words together explain every top context


def test_hand_label_wins_and_survives_relabelling(pyws):
    f = int(F.feature_table(pyws, "py", limit=1)["feature_id"][0])
    auto = L.labels(pyws, "py")[f]
    L.set_hand_label(pyws, f, "my own label")
    assert L.labels(pyws, "py")[f] == "my own label"
    pyws.finalize("py")  # re-runs automatic labelling
    L.write_labels(pyws.store, pd.DataFrame({"feature_id": [f], "label": ["llm says"], "score": [0.9]}), "llm",
                   pyws.store.corpus_id("py"), replace_all=False)
    assert L.labels(pyws, "py")[f] == "my own label"
    rows = L.feature_labels(pyws, f)
    assert rows["source"].tolist() == ["hand", "llm", "auto"] and rows["label"].iloc[2] == auto
    assert F.feature_detail(pyws, "py", f).label == "my own label"
    assert F.feature_table(pyws, "py", sort_by="feature_id", descending=False).set_index("feature_id").loc[f, "label"] == "my own label"
    L.set_hand_label(pyws, f, "")
    assert L.labels(pyws, "py")[f] == "llm says"
    with pytest.raises(ValueError):
        L.write_labels(pyws.store, pd.DataFrame({"feature_id": [f], "label": ["x"]}), "hand", None)


# -- LLM labels against a local OpenAI-compatible server -------------------------------------------
def labelling_server() -> FakeChatServer:
    """Labels every feature 'the word python'; as a judge says yes to samples with 'python' in them, or no
    to every sample once `mode` is 'no'."""

    def answer(body: dict) -> str:
        prompt = last_prompt(body)
        if "predict whether" not in prompt:
            return "Label: the word python"
        samples = re.findall(r"^Sample (\d+): (.*)$", prompt, flags=re.M)
        yes = lambda t: server.mode == "smart" and "python" in t  # noqa: E731
        return "\n".join(f"{i}: {'yes' if yes(t) else 'no'}" for i, t in samples)

    server = FakeChatServer(answer)
    server.mode = "smart"
    return server


@pytest.fixture()
def llm():
    fake = labelling_server()
    yield fake
    fake.close()


def test_llm_label_and_score(pyws, llm):
    cfg = L.LLMConfig(base_url=llm.url, model="fake-model", api_key="sk-test", timeout_s=5)
    df = L.llm_label_features(pyws, "py", [PLANTED], cfg, n_show=2, n_negative=2, n_holdout=2)
    row = df.iloc[0]
    assert row["label"] == "the word python" and row["n_scored"] == 4
    assert row["score"] == pytest.approx(1.0) and row["f1"] == pytest.approx(1.0)
    label_req, score_req = llm.requests
    assert label_req["path"] == "/v1/chat/completions" and label_req["auth"] == "Bearer sk-test"
    assert label_req["body"]["model"] == "fake-model"
    prompt = label_req["body"]["messages"][-1]["content"]
    assert "<<python>>" in prompt  # active tokens are marked in the shown samples
    assert "<<" not in score_req["body"]["messages"][-1]["content"]  # held-out samples are not
    stored = L.feature_labels(pyws, PLANTED)
    assert stored.iloc[0]["source"] == "llm" and stored.iloc[0]["score"] == pytest.approx(1.0)
    assert L.labels(pyws, "py")[PLANTED] == "the word python"

    llm.mode = "no"  # a label that predicts nothing scores at chance on the balanced held-out set
    df = L.llm_label_features(pyws, "py", [PLANTED], cfg, n_show=2, n_negative=2, n_holdout=2, force=True)
    assert df["score"].iloc[0] == pytest.approx(0.5) and df["f1"].iloc[0] == 0.0
    assert L.feature_labels(pyws, PLANTED).query("source == 'llm'")["score"].tolist() == pytest.approx([0.5])


def test_llm_errors_and_config(pyws, llm, monkeypatch, closed_url):
    for var in ("SAEDASH_LLM_BASE_URL", "SAEDASH_LLM_MODEL", "SAEDASH_LLM_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    assert L.LLMConfig.from_env() is None
    with pytest.raises(L.LLMError, match="off"):
        L.llm_label_features(pyws, "py", [PLANTED])
    monkeypatch.setenv("SAEDASH_LLM_BASE_URL", llm.url)
    monkeypatch.setenv("SAEDASH_LLM_MODEL", "m")
    assert L.LLMConfig.from_env() == L.LLMConfig(llm.url, "m", None)
    llm.status = 500
    with pytest.raises(L.LLMError, match="HTTP 500"):
        L.llm_label_features(pyws, "py", [PLANTED])
    with pytest.raises(L.LLMError, match="Cannot reach"):
        L.chat(L.LLMConfig(closed_url, "m", timeout_s=2), [{"role": "user", "content": "hi"}])


def test_parse_helpers():
    assert L.parse_label('Label: "Python code"\nbecause...') == "Python code"
    assert L.parse_predictions("1: yes\n2: no\n3. YES\n9: yes", 4).tolist() == [True, False, True, False]
    acc, f1 = L.score_predictions(np.array([1, 0, 1, 0], bool), np.array([1, 1, 0, 0], bool))
    assert acc == 0.5 and f1 == 0.5


# -- LLM labels from a chat function (the reader model as labeller), cached in the workspace ----------
class FakeChat:
    """A ChatFn: labels every feature 'the word python' and predicts 'yes' exactly for samples holding 'python'.

    Replies as backend.reader_llm.reader_chat does (a ChatReply with token counts)."""

    def __init__(self) -> None:
        self.prompts: list[str] = []

    def __call__(self, messages):
        from backend.analysis.hypotheses import ChatReply

        prompt = messages[-1]["content"]
        self.prompts.append(prompt)
        if prompt.startswith(L.LABEL_PROMPT[:40]):
            return ChatReply("Label: the word python", prompt_tokens=10, completion_tokens=4)
        samples = re.findall(r"^Sample (\d+): (.*)$", prompt, flags=re.M)
        return ChatReply("\n".join(f"{i}: {'yes' if 'python' in t else 'no'}" for i, t in samples), 10, 4)


def test_llm_labels_from_a_chat_function_with_progress_and_cache(pyws):
    cid = pyws.store.corpus_id("py")
    other = int(pyws.store.query_one(
        "SELECT feature_id FROM feature_stats WHERE corpus_id = ? AND n_docs_active >= 4 AND feature_id <> ? "
        "ORDER BY feature_id LIMIT 1", [cid, PLANTED])[0])
    fake, calls = FakeChat(), []
    df = L.llm_label_features(pyws, "py", [PLANTED, other, PLANTED], fake, progress=lambda d, t: calls.append((d, t)),
                              n_show=2, n_negative=2, n_holdout=2)
    assert calls == [(1, 2), (2, 2)]  # after each (distinct) feature
    assert df["feature_id"].tolist() == [PLANTED, other] and not df["cached"].any()
    assert len(fake.prompts) == 4  # label + score per feature
    first = df.set_index("feature_id").loc[PLANTED]
    assert first["label"] == "the word python" and first["score"] == pytest.approx(1.0)
    assert "<<python>>" in fake.prompts[0]
    assert L.labels(pyws, "py")[PLANTED] == "the word python"
    scores = df.set_index("feature_id")["score"]

    # second call: nothing is asked again, the stored labels and scores come back in the asked order
    calls.clear()
    again = pyws.label_features("py", [other, PLANTED], llm=fake, progress=lambda d, t: calls.append((d, t)))
    assert len(fake.prompts) == 4 and calls == [(1, 2), (2, 2)]
    assert again["feature_id"].tolist() == [other, PLANTED] and again["cached"].all()
    assert again.set_index("feature_id")["label"].to_dict() == df.set_index("feature_id")["label"].to_dict()
    assert again.set_index("feature_id")["score"].to_numpy() == pytest.approx(scores.loc[[other, PLANTED]].to_numpy(),
                                                                              nan_ok=True)
    # force asks again (only the features given)
    forced = pyws.label_features("py", [PLANTED], llm=fake, force=True)
    assert len(fake.prompts) == 5 and not forced["cached"].any()  # 4 documents fire: all shown, none held out
    assert len(L.feature_labels(pyws, PLANTED).query("source == 'llm'")) == 1  # replaced, not added

    # a hand label still wins over the LLM label, which stays stored
    L.set_hand_label(pyws, PLANTED, "my python")
    assert L.labels(pyws, "py")[PLANTED] == "my python"
    assert pyws.label_features("py", [PLANTED], llm=fake)["label"].tolist() == ["the word python"]
    assert len(fake.prompts) == 5


def test_label_features_without_an_llm_says_how(pyws, monkeypatch):
    for var in ("SAEDASH_LLM_BASE_URL", "SAEDASH_LLM_MODEL", "SAEDASH_LLM_API_KEY", "SAEDASH_LLM_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(L.LLMError, match="reader_chat"):
        pyws.label_features("py", [PLANTED])
    with pytest.raises(L.LLMError, match="chat function"):
        pyws.label_features("py", [PLANTED], llm="http://not-a-config")

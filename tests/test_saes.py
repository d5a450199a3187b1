"""SAELens format round trips, pairing checks, and TopK training on tiny activations."""
from __future__ import annotations

import json
import re

import pytest
import torch

from backend.config import DEFAULT_MODEL
from backend.models import ModelDims, model_dims, read_gguf_metadata
from backend.saes import (
    SAEError, cache_sae, check_pairing, check_sae_fits_model, load_sae, sae_info, save_fp16, verify_sae_folder,
    weights_hash, weights_sha256,
)
from backend.training import TrainConfig, collect_activations, evaluate, to_sae_lens, train_topk
from tests.tiny import HOOK


def test_saved_by_sae_lens_loaded_by_us(tiny_sae, tmp_path):
    tiny_sae.save_model(tmp_path / "s")  # sae_lens's own writer
    ours = load_sae(tmp_path / "s", device="cpu")
    x = torch.randn(5, 32)
    assert torch.allclose(ours.encode(x), tiny_sae.encode(x))
    info = sae_info(ours, tmp_path / "s")
    assert (info.hook_name, info.d_in, info.d_sae, info.architecture) == (HOOK, 32, 64, "topk")


def test_trained_by_us_loaded_by_sae_lens(tiny_reader, tmp_path):
    from sae_lens import SAE

    cfg = TrainConfig(d_sae=48, k=4, n_tokens=400, epochs=2, batch_size=64, holdout_frac=0.1, dead_after_tokens=10**9)
    texts = ["the movie was great and funny", "python code with a function", "the dog and the cat"] * 40
    acts = collect_activations(tiny_reader, HOOK, texts, cfg)
    assert acts.shape[1] == 32 and len(acts) == 400
    sae, scale, report = train_topk(acts, cfg)
    out = to_sae_lens(sae, scale, tiny_reader.name, HOOK, "raw", report, cfg)
    out.save_model(tmp_path / "t")
    loaded = SAE.load_from_disk(str(tmp_path / "t"))
    # the folded scale means the saved SAE reads raw residuals: same latents as the trainer on scaled input
    x = acts[:16].float()
    _, idx, pre = sae(x * scale)
    dense = torch.zeros(16, 48).scatter_(1, idx, pre.gather(1, idx).relu())
    assert torch.allclose(loaded.encode(x), dense, atol=1e-4)
    recon_trainer, _, _ = sae(x * scale)
    assert torch.allclose(loaded.decode(loaded.encode(x)), recon_trainer / scale, atol=1e-3)
    assert 0 < report.fve < 1 and 0 < report.l0 <= 4
    assert json.loads((tmp_path / "t" / "cfg.json").read_text())["metadata"]["hook_name"] == HOOK


def test_training_improves_fve_with_more_epochs(tiny_reader):
    texts = ["the movie was great", "a terrible boring film", "python code error", "police crime city night"] * 30
    base = TrainConfig(d_sae=32, k=4, n_tokens=300, batch_size=32, holdout_frac=0.2, dead_after_tokens=10**9, lr=3e-3)
    acts = collect_activations(tiny_reader, HOOK, texts, base)
    f1 = train_topk(acts, TrainConfig(**{**base.__dict__, "epochs": 1}))[2].fve
    f8 = train_topk(acts, TrainConfig(**{**base.__dict__, "epochs": 8}))[2].fve
    assert f8 > f1


def test_fp16_save_loads_and_pairing_is_checked(tiny_sae, tmp_path):
    save_fp16(tiny_sae.to(torch.float32), tmp_path / "h")
    assert tiny_sae.W_dec.dtype == torch.float32  # the caller's SAE is not turned to fp16 in place
    sae16 = load_sae(tmp_path / "h", device="cpu", dtype="float32")
    assert sae16.W_dec.dtype == torch.float32
    info = sae_info(sae16, tmp_path / "h")
    with pytest.raises(SAEError, match="width 32"):
        check_pairing(info, info.model_name, 576)
    with pytest.raises(SAEError, match="trained on"):
        check_pairing(info, "gpt2", 32)
    check_pairing(info, info.model_name, 32)


def test_missing_or_malformed_sae_folder(tmp_path):
    with pytest.raises(SAEError, match="cfg.json"):
        (tmp_path / "empty").mkdir()
        load_sae(tmp_path / "empty")
    with pytest.raises(SAEError, match="No SAE"):
        load_sae(tmp_path / "nope")


def test_evaluate_counts_dead_latents():
    from backend.training import TopKTrainer

    sae = TopKTrainer(4, 8, 2, torch.zeros(4))
    with torch.no_grad():
        sae.W_enc.zero_()
        sae.W_enc[0, 0] = 1.0
        sae.W_enc[1, 1] = 1.0
        sae.b_enc.copy_(torch.tensor([0, 0, -5, -5, -5, -5, -5, -5.0]))
    x = torch.rand(20, 4) + 0.1
    fve, l0, fires = evaluate(sae, x)
    assert int((fires == 0).sum()) == 6 and l0 == 2.0


# -- issue 12, problem 4: an SAE that cannot read the model is refused at `create`, from configs alone ------
def _sae_for(model_name: str, d_in: int = 32, hook: str = HOOK):
    from sae_lens import TopKSAE, TopKSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    meta = SAEMetadata(model_name=model_name, hook_name=hook, model_from_pretrained_kwargs={})
    return TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=16, k=2, dtype="float32", device="cpu", metadata=meta))


def test_check_sae_fits_model(tiny_sae, tmp_path):
    info = sae_info(tiny_sae, "in-memory")
    check_sae_fits_model(info, n_layers=2, d_model=32)
    check_sae_fits_model(info, n_layers=None, d_model=None)  # unknown offline: nothing to compare
    with pytest.raises(SAEError, match="width 32 but 'm' has d_model 576"):
        check_sae_fits_model(info, 30, 576, "'m'")
    with pytest.raises(SAEError, match="layer 1, but the model has 1 layers"):
        check_sae_fits_model(info, 1, 32)
    odd = sae_info(_sae_for("m", hook="blocks.1.attn.hook_z"), "in-memory")
    with pytest.raises(SAEError, match="hook cannot be read"):
        check_sae_fits_model(odd, 2, 32)


def test_model_dims_from_configs_without_weights(tiny_model_dir, tmp_path):
    assert model_dims(str(tiny_model_dir)) == ModelDims(n_layers=2, d_model=32)
    assert model_dims(str(tmp_path / "no-such-model")) is None  # unknown here: the load checks later
    cached = tmp_path / "models" / DEFAULT_MODEL
    cached.mkdir(parents=True)
    (cached / "config.json").write_text(json.dumps({"num_hidden_layers": 7, "hidden_size": 64}))
    assert model_dims(DEFAULT_MODEL, cache_dir=tmp_path) == ModelDims(7, 64)  # the cached config comes first
    (cached / "config.json").write_text(json.dumps({"text_config": {"num_hidden_layers": 18, "hidden_size": 640}}))
    assert model_dims(DEFAULT_MODEL, cache_dir=tmp_path) == ModelDims(18, 640)


def test_builtin_model_dims_from_the_gguf_header(tmp_path):
    from backend.models import BUILTIN_MODELS, ModelNotAvailable, _find_gguf

    try:
        gguf = _find_gguf(BUILTIN_MODELS[DEFAULT_MODEL])
    except ModelNotAvailable:
        pytest.skip("the default model's GGUF package is not installed")
    meta = read_gguf_metadata(gguf)
    assert meta["general.architecture"] == "llama"
    # SmolLM2-135M: 30 blocks of width 576 (its published config.json); no cache in tmp_path, so from the GGUF
    assert model_dims(DEFAULT_MODEL, cache_dir=tmp_path) == ModelDims(30, 576)


@pytest.mark.parametrize("d_in,hook,message", [(48, HOOK, "width 48"),
                                                (32, "blocks.99.hook_resid_post", "layer 99, but .* has 2 layers")])
def test_create_refuses_an_sae_that_does_not_fit(tiny_model_dir, tmp_path, d_in, hook, message):
    from backend.workspace import Workspace, WorkspaceSpec

    folder = tmp_path / "sae"
    _sae_for(str(tiny_model_dir), d_in, hook).save_model(folder)
    path = tmp_path / "ws.duckdb"
    with pytest.raises(SAEError, match=message):
        Workspace.create(path, WorkspaceSpec(model=str(tiny_model_dir), sae=str(folder)), device="cpu")
    assert not path.exists()  # refused before the file is made


# -- issue 12, problem 3: changed weights are detected; SAEs are cached by content; no silent overwrite ----
def _other_weights_same_shape(folder):
    sae = load_sae(folder, device="cpu")
    with torch.no_grad():
        sae.W_enc.mul_(-1.0)
    sae.save_model(folder)


def test_changed_weights_are_refused(tiny_sae, tmp_path):
    folder = tmp_path / "s"
    tiny_sae.save_model(folder)
    recorded = sae_info(load_sae(folder, device="cpu"), folder).sha256
    verify_sae_folder(folder, recorded)
    verify_sae_folder(folder, weights_sha256(folder))  # the full digest works too
    load_sae(folder, device="cpu", expected_sha256=recorded)
    _other_weights_same_shape(folder)
    with pytest.raises(SAEError, match="not the ones this workspace was built with"):
        verify_sae_folder(folder, recorded)
    with pytest.raises(SAEError, match="not the ones"):
        load_sae(folder, device="cpu", expected_sha256=recorded)
    with pytest.raises(SAEError, match="not a sha256"):
        verify_sae_folder(folder, "abc")


def test_cache_sae_is_content_addressed(tiny_sae, tmp_path):
    src = tmp_path / "src"
    tiny_sae.save_model(src)
    digest = weights_hash(src)
    x = torch.randn(3, 32)
    original = load_sae(src, device="cpu").encode(x)
    cached = cache_sae(src, tmp_path / "cache")
    assert cached == tmp_path / "cache" / digest
    assert sorted(p.name for p in cached.iterdir()) == sorted(p.name for p in src.iterdir())
    mtime = (cached / "sae_weights.safetensors").stat().st_mtime_ns
    assert cache_sae(src, tmp_path / "cache") == cached  # already there: not copied again
    assert (cached / "sae_weights.safetensors").stat().st_mtime_ns == mtime
    _other_weights_same_shape(src)  # retrained in place: a new entry, the old one untouched
    assert cache_sae(src, tmp_path / "cache") != cached
    verify_sae_folder(cached, digest)
    import shutil

    shutil.rmtree(src)  # the original is gone: the cached copy still loads
    assert torch.allclose(load_sae(cached, device="cpu", expected_sha256=digest).encode(x), original)
    (cached / "sae_weights.safetensors").write_bytes(b"damaged")
    with pytest.raises(SAEError, match="not the ones"):
        verify_sae_folder(cached, digest)


def test_training_never_overwrites_an_sae_unless_asked(tiny_sae, tiny_reader, tmp_path):
    from backend.config import DEFAULT_SAE_DIR, DEFAULT_HOOK, DEFAULT_MODEL as MODEL
    from backend.training import TrainingError, output_dir, train_sae_for_model

    new = output_dir(None, MODEL, DEFAULT_HOOK, root=tmp_path / "trained")
    assert new.parent == tmp_path / "trained" and not new.exists() and "blocks-15-hook-resid-post" in new.name
    assert output_dir(None, MODEL, DEFAULT_HOOK).resolve() != DEFAULT_SAE_DIR.resolve()
    if (DEFAULT_SAE_DIR / "cfg.json").exists():
        with pytest.raises(TrainingError, match="shipped default SAE"):
            output_dir(DEFAULT_SAE_DIR, MODEL, DEFAULT_HOOK)
    existing = tmp_path / "mine"
    tiny_sae.save_model(existing)
    before = weights_hash(existing)
    with pytest.raises(TrainingError, match="--overwrite"):
        output_dir(existing, MODEL, DEFAULT_HOOK)
    assert output_dir(existing, MODEL, DEFAULT_HOOK, overwrite=True) == existing
    assert output_dir(tmp_path / "fresh", MODEL, DEFAULT_HOOK) == tmp_path / "fresh"
    with pytest.raises(TrainingError, match="needs --out"):
        output_dir(None, MODEL, DEFAULT_HOOK, overwrite=True)
    cfg = TrainConfig(d_sae=16, k=2, n_tokens=100, epochs=1, batch_size=32, dead_after_tokens=10**9)
    with pytest.raises(TrainingError, match="already holds an SAE"):
        train_sae_for_model(tiny_reader, HOOK, ["the dog and the cat"] * 20, existing, cfg)
    assert weights_hash(existing) == before


# -- issue 11: an SAE naming a model by its Hugging Face id pairs with our built-in name --------------------
def _info(model_name: str | None, d_in: int = 640):
    from backend.saes import SAEInfo

    return SAEInfo(source="release:x", model_name=model_name, hook_name="blocks.6.hook_resid_post", d_in=d_in,
                   d_sae=16, architecture="jumprelu", formatting="raw", sha256=None, report=None)


@pytest.mark.parametrize("recorded, ours, d_model", [
    ("google/gemma-3-270m", "gemma-3-270m", 640),            # SAELens release SAEs (Gemma Scope 2)
    ("gemma-3-270m", "gemma-3-270m", 640),
    ("HuggingFaceTB/SmolLM2-135M-Instruct", "smollm2-135m-instruct", 576),
    ("huggingfacetb/smollm2-135m-instruct", "smollm2-135m-instruct", 576),  # ids compare case-insensitively
    ("smollm2-135m-instruct", "HuggingFaceTB/SmolLM2-135M-Instruct", 576),
    (None, "gemma-3-270m", 640),                             # an SAE that records no model is not refused
])
def test_an_sae_pairs_with_its_model_under_either_name(recorded, ours, d_model):
    from backend.saes import same_model

    check_pairing(_info(recorded, d_model), ours, d_model)
    assert same_model(recorded, ours)


@pytest.mark.parametrize("recorded, ours, d_model", [
    ("google/gemma-3-270m", "smollm2-135m-instruct", 640),
    ("HuggingFaceTB/SmolLM2-135M-Instruct", "gemma-3-270m", 576),
    ("google/gemma-2-2b", "gemma-3-270m", 640),
    ("HuggingFaceTB/SmolLM2-360M-Instruct", "smollm2-135m-instruct", 576),
])
def test_an_sae_for_another_model_is_still_refused(recorded, ours, d_model):
    with pytest.raises(SAEError, match=rf"trained on '{re.escape(recorded)}', not '{re.escape(ours)}'"):
        check_pairing(_info(recorded, d_model), ours, d_model)
    check_pairing(_info(recorded, d_model), ours, d_model, allow_other_model=True)  # what a workspace that chose it allows


def test_create_pairs_a_release_style_sae_by_hugging_face_id(tiny_sae, tmp_path, monkeypatch):
    """Workspace.create (no reader loaded) takes an SAE recording SmolLM2's HF id for our built-in name."""
    from backend import models
    from backend.workspace import Workspace, WorkspaceSpec
    from tests.tiny import make_tiny_sae

    monkeypatch.setattr(models, "model_dims", lambda name, cache_dir=None: ModelDims(30, 32))
    monkeypatch.setattr("backend.workspace.model_dims", lambda name, cache_dir=None: ModelDims(30, 32))
    for recorded, ok in (("HuggingFaceTB/SmolLM2-135M-Instruct", True), ("google/gemma-3-270m", False)):
        folder = tmp_path / recorded.replace("/", "_")
        make_tiny_sae(recorded).save_model(folder)
        target = tmp_path / f"{folder.name}.duckdb"
        spec = WorkspaceSpec(model="smollm2-135m-instruct", sae=str(folder))
        if ok:
            Workspace.create(target, spec, device="cpu").close()
            assert target.exists()
        else:
            with pytest.raises(SAEError, match="trained on 'google/gemma-3-270m'"):
                Workspace.create(target, spec, device="cpu")
            assert not target.exists()


def test_resolve_sae_source_takes_keys_folders_and_release_ids(tiny_sae_dir, tmp_path):
    from backend.config import SHIPPED_SAES
    from backend.saes import resolve_sae_source

    for key, entry in SHIPPED_SAES.items():
        if entry.present:
            assert resolve_sae_source(key) == str(entry.folder)
    assert resolve_sae_source(f"  {tiny_sae_dir} ") == str(tiny_sae_dir)
    assert resolve_sae_source("gemma-scope-2-270m-pt-res:layer_12_width_16k_l0_medium") == (
        "gemma-scope-2-270m-pt-res:layer_12_width_16k_l0_medium")
    (tmp_path / "file.txt").write_text("x")
    for bad, message in (("", "Choose an SAE"), ("nosuch", "No SAE 'nosuch'"), (str(tmp_path / "file.txt"), "is a file"),
                         (str(tmp_path), "not a SAELens SAE folder"), ("some/dir:x", "No SAE")):
        with pytest.raises(SAEError, match=message):
            resolve_sae_source(bad)


def test_sae_name_names_shipped_saes_by_key(tiny_sae_dir):
    from backend.config import SHIPPED_SAES
    from backend.saes import sae_name

    for entry in SHIPPED_SAES.values():
        assert sae_name(str(entry.folder)) == f"{entry.key} ({entry.folder.name})"
    assert sae_name(str(tiny_sae_dir), "/somewhere/.cache/saes/0123") == tiny_sae_dir.name
    assert sae_name("gemma-scope-2-270m-pt-res:layer_12") == "gemma-scope-2-270m-pt-res:layer_12"

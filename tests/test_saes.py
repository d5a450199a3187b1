"""SAELens format round trips, pairing checks, and TopK training on tiny activations."""
from __future__ import annotations

import json

import pytest
import torch

from backend.saes import SAEError, check_pairing, load_sae, sae_info, save_fp16
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

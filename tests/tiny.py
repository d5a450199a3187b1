"""Tiny, deterministic model and SAE for unit tests (built from configs, no downloads)."""
from __future__ import annotations

from pathlib import Path

import torch

WORDS = (
    "the a an and or but of to in on at for with is was are were be been it this that these those i you he she we "
    "they movie film plot story actor actress great good bad terrible boring funny love hate fresh rotten scene "
    "character director script music ending beginning script war love family city night day money police crime "
    "dog cat house car water fire python code function return value error file data list string number "
    "hello world test document text . , ! ? ' \" ( ) : ; - < > / = script img src onerror alert"
).split()
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "[UNK]", "[PAD]"]
CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
D_MODEL = 32
HOOK = "blocks.1.hook_resid_post"


def make_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS + sorted(set(WORDS)))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.decoder = decoders.WordPiece(prefix="##")  # joins with spaces
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|im_end|>", unk_token="[UNK]", pad_token="[PAD]",
        additional_special_tokens=["<|im_start|>"],
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def make_tiny_model_dir(folder: Path, seed: int = 0, n_layers: int = 2, initializer_range: float | None = None) -> Path:
    """A Llama (2 layers by default) with the tiny tokenizer, saved as a local HF folder (fp32 safetensors).
    A larger `initializer_range` (0.3) makes sampled and greedy text vary from token to token."""
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = Path(folder)
    if (folder / "config.json").exists():
        return folder
    tok = make_tokenizer()
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=D_MODEL, intermediate_size=64, num_hidden_layers=n_layers, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5, tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        **({} if initializer_range is None else {"initializer_range": initializer_range}),
    )
    cfg.architectures = ["LlamaForCausalLM"]
    model = LlamaForCausalLM(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder), safe_serialization=True)
    tok.save_pretrained(str(folder))
    return folder


def make_tiny_sae(model_name: str, d_sae: int = 64, k: int = 4, seed: int = 0, hook: str = HOOK):
    """A TopK SAE with fixed (seeded) weights for the tiny model."""
    from sae_lens import TopKSAE, TopKSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    meta = SAEMetadata(model_name=model_name, hook_name=hook, model_from_pretrained_kwargs={})
    sae = TopKSAE(TopKSAEConfig(d_in=D_MODEL, d_sae=d_sae, k=k, dtype="float32", device="cpu", metadata=meta))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        w = torch.randn(d_sae, D_MODEL, generator=g)
        w = w / w.norm(dim=1, keepdim=True)
        sae.W_dec.copy_(w)
        sae.W_enc.copy_(w.t())
        sae.b_enc.copy_(torch.linspace(-0.1, 0.1, d_sae))
        sae.b_dec.zero_()
    return sae

"""The reader model as the LLM that writes labels and hypotheses, when it is able to.

A user on a GPU with a 1-8B instruct reader gets LLM labels and hypotheses with no server and no
key. A small reader (the default 135M model) writes labels that are not worth reading, so it is not
offered: `reader_llm_status` says why, and the page shows that reason.

`reader_chat(reader)` returns a `ChatFn` (messages → `ChatReply`), the same protocol the OpenAI-compatible
endpoint serves (backend.llm.endpoint_chat), so labels and hypotheses take either."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from backend.chat import ChatFn, ChatReply, Messages
from backend.errors import UnavailableError
from backend.models import ReaderModel
from backend.runtime import runtime_for

MIN_LABELLER_PARAMS = 1_000_000_000  # below ~1B, instruct models write labels that are mostly noise


@dataclass(frozen=True)
class ReaderLLMStatus:
    """Whether the reader can serve as the labelling LLM, and why not."""

    usable: bool
    reason: str
    n_params: int


def count_parameters(reader: ReaderModel) -> int:
    return int(sum(p.numel() for p in reader.model.parameters()))


def reader_llm_status(reader: ReaderModel, min_params: int = MIN_LABELLER_PARAMS) -> ReaderLLMStatus:
    """Usable when the reader is an instruct (chat-template) model of at least `min_params` parameters."""
    n = count_parameters(reader)
    if not getattr(reader.tokenizer, "chat_template", None):
        return ReaderLLMStatus(False, f"The reader model {reader.name!r} is not an instruct model (it has no chat "
                                      "template), so it cannot follow labelling instructions.", n)
    if n < min_params:
        return ReaderLLMStatus(False, f"The reader model {reader.name!r} has {n / 1e6:,.0f}M parameters; models under "
                                      f"{min_params / 1e9:g}B write labels that are not worth reading. Use an "
                                      "OpenAI-compatible server, or a 1-8B instruct reader model.", n)
    return ReaderLLMStatus(True, f"The reader model {reader.name!r} ({n / 1e9:.1f}B parameters) writes the labels.", n)


def reader_chat(reader: ReaderModel, max_new_tokens: int = 200, min_params: int = MIN_LABELLER_PARAMS) -> ChatFn:
    """A ChatFn served by the reader's own HF model (greedy decoding, under the model lock)."""
    status = reader_llm_status(reader, min_params)
    if not status.usable:
        raise UnavailableError(status.reason)
    runtime = runtime_for(reader)

    def chat(messages: Messages) -> ChatReply:
        ids = reader.tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=True)
        ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
        prompt = torch.tensor([list(ids)], device=runtime.device)
        with runtime.lock, torch.inference_mode():
            out = runtime.hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=max_new_tokens,
                                      do_sample=False, eos_token_id=sorted(runtime.stop_token_ids()) or None,
                                      pad_token_id=getattr(reader.tokenizer, "pad_token_id", None)
                                      or getattr(reader.tokenizer, "eos_token_id", None))
        new = out[0, prompt.shape[1]:].tolist()
        text = reader.tokenizer.decode(new, skip_special_tokens=True).strip()
        return ChatReply(text, prompt_tokens=int(prompt.shape[1]), completion_tokens=len(new))

    return chat

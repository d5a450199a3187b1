"""The reader model as labeller: refused when too small (with the reason), served as a ChatFn otherwise."""
from __future__ import annotations

import pytest

from backend.errors import UnavailableError
from backend.reader_llm import reader_chat, reader_llm_status

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_small_reader_is_not_offered_and_says_why(tiny_reader):
    status = reader_llm_status(tiny_reader)
    assert not status.usable and "not worth reading" in status.reason and status.n_params > 0
    with pytest.raises(UnavailableError, match="not worth reading"):
        reader_chat(tiny_reader)


def test_a_reader_without_chat_template_is_refused(tiny_reader, monkeypatch):
    monkeypatch.setattr(tiny_reader.tokenizer, "chat_template", None)
    status = reader_llm_status(tiny_reader, min_params=0)
    assert not status.usable and "not an instruct model" in status.reason


def test_a_capable_reader_answers_as_a_chat_function(tiny_reader):
    chat = reader_chat(tiny_reader, max_new_tokens=5, min_params=0)
    reply = chat([{"role": "user", "content": "the movie was great"}])
    assert isinstance(reply.text, str)
    assert 0 < reply.completion_tokens <= 5 and reply.prompt_tokens > 3
    again = chat([{"role": "user", "content": "the movie was great"}])
    assert again.text == reply.text  # greedy: the same question gets the same answer

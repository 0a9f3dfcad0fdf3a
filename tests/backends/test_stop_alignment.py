"""A stop string that ends inside a token: text and token ids must agree in every
backend (the hf backend's own test is in test_hf.py; the openai backend's with the
server's /detokenize against the in-test server in test_openai.py). Here the vLLM
backend's reading of an engine output, and the openai backend's reading of a server's
choice with a local tokenizer, both shaped as vLLM returns them (text cut after the stop
string, the token it ends in kept), with a real tokenizer; no vLLM or server needed."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest

pytest.importorskip("transformers")

from test_hf import _build_tokenizer

from ttc.backends._text import ChatCodec, continuation_text
from ttc.backends.openai import OpenAIBackend, OpenAIBackendConfig
from ttc.backends.vllm import VLLMBackend, VLLMBackendConfig
from ttc.types import Sampling


def _cut_inside_a_token() -> tuple[Any, list[int], list[int], int, str, Callable[..., str]]:
    """A real tokenizer, a prompt, generated ids, and a stop string that ends one
    character into generated token `j` (of two characters or more, not the first)."""
    tok = _build_tokenizer(with_bos=False)
    special = frozenset(int(i) for i in tok.all_special_ids)
    prompt = tok("the cat sat", add_special_tokens=False)["input_ids"]
    generated = tok(" on the mat and the dog", add_special_tokens=False)["input_ids"]

    def text(ids: list[int]) -> str:
        return continuation_text(tok, prompt, ids, special=special)

    j = next(
        j
        for j in range(1, len(generated))
        if len(text(generated[: j + 1])) - len(text(generated[:j])) >= 2
    )
    stop = text(generated[: j + 1])[: len(text(generated[:j])) + 1]
    return tok, prompt, generated, j, stop, text


def test_vllm_output_cut_inside_a_token_is_read_as_agreeing_text_and_ids() -> None:
    tok, prompt, generated, j, stop, text = _cut_inside_a_token()
    backend = VLLMBackend(VLLMBackendConfig())
    backend._codec = ChatCodec(tok)
    completion = SimpleNamespace(
        token_ids=generated[: j + 1],
        text=stop,
        finish_reason="stop",
        stop_reason=stop,
        logprobs=None,
    )
    g = backend._generation(
        SimpleNamespace(outputs=[completion]), Sampling(stop=(stop,)), prompt=prompt
    )
    assert g.finish_reason == "stop" and g.text == stop
    assert text(list(g.token_ids)) == g.text
    assert list(g.token_ids[:j]) == generated[:j]


def test_openai_choice_cut_inside_a_token_is_read_with_the_local_tokenizer() -> None:
    tok, prompt, generated, j, stop, text = _cut_inside_a_token()
    backend = OpenAIBackend(OpenAIBackendConfig())
    backend._codec = ChatCodec(tok)  # what `backend.tokenizer=<model>` sets up
    choice = {
        "index": 0,
        "text": stop,
        "finish_reason": "stop",
        "stop_reason": stop,
        "token_ids": generated[: j + 1],
        "logprobs": {"token_logprobs": [-0.5] * (j + 1)},
    }
    s = Sampling(stop=(stop,), logprobs=True)
    g = backend._generation(choice, s, prompt=lambda: prompt)
    assert g.finish_reason == "stop" and g.text == stop
    assert text(list(g.token_ids)) == g.text
    assert list(g.token_ids[:j]) == generated[:j]
    assert g.logprobs is not None and len(g.logprobs) == len(g.token_ids)

"""A stop string that ends inside a token: text and token ids must agree in every
backend (the hf backend's own test is in test_hf.py; the openai backend's against the
in-test server in test_openai.py). Here the vLLM backend's reading of an engine output,
shaped as vLLM returns it (text cut after the stop string, the token it ends in kept),
with a real tokenizer; vLLM itself is not needed."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

pytest.importorskip("transformers")

from test_hf import _build_tokenizer

from ttc.backends._text import ChatCodec, continuation_text
from ttc.backends.vllm import VLLMBackend, VLLMBackendConfig
from ttc.types import Sampling


def test_vllm_output_cut_inside_a_token_is_read_as_agreeing_text_and_ids() -> None:
    tok = _build_tokenizer(with_bos=False)
    backend = VLLMBackend(VLLMBackendConfig())
    backend._codec = ChatCodec(tok)
    special = frozenset(int(i) for i in tok.all_special_ids)
    prompt = tok("the cat sat", add_special_tokens=False)["input_ids"]
    generated = tok(" on the mat and the dog", add_special_tokens=False)["input_ids"]

    def text(ids: list[int]) -> str:
        return continuation_text(tok, prompt, ids, special=special)

    # a token of two characters or more, not the first: the stop string ends after its
    # first character
    j = next(
        j
        for j in range(1, len(generated))
        if len(text(generated[: j + 1])) - len(text(generated[:j])) >= 2
    )
    stop = text(generated[: j + 1])[: len(text(generated[:j])) + 1]
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

"""Prompt rendering and tokenization shared by every backend (`hf`, `vllm`, `openai`).

`ChatCodec` wraps a Hugging Face tokenizer with ttc's rules:
chat problems go through the model's chat template (a system prompt is prepended when the
config has one and the chat has none), base models get the prompt as written, and `encode`
adds BOS only when the tokenizer's own encoding would and the text lacks it. The same
rules on both sides mean `hf`, `vllm` and `openai` see identical prompt token ids for the
same model, so runs are comparable.

`ByteCodec` is the documented last resort of the OpenAI backend when neither a local
tokenizer nor the server's `/tokenize` is available: one id per UTF-8 byte (exact round
trip, counts about 4x a real tokenizer's).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar, Protocol

from ttc.errors import BackendError
from ttc.types import Problem


class Codec(Protocol):
    """What a backend needs to turn problems into prompts and prompts into token ids."""

    def render(self, problem: Problem) -> str: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, token_ids: Sequence[int]) -> str: ...


class CodecBackend:
    """Mixin for backends that render and tokenize through a codec set up by `start()`:
    `render`, `encode` and `decode` delegate to `self._codec`."""

    name: ClassVar[str]
    _codec: Codec | None

    def _require_codec(self) -> Codec:
        if self._codec is None:
            raise BackendError(
                f"the {self.name} backend is not started", hint="await backend.start()"
            )
        return self._codec

    def render(self, problem: Problem) -> str:
        return self._require_codec().render(problem)

    def encode(self, text: str) -> list[int]:
        return self._require_codec().encode(text)

    def decode(self, token_ids: Sequence[int]) -> str:
        return self._require_codec().decode(token_ids)


def problem_messages(problem: Problem, system: str | None) -> list[dict[str, str]]:
    """The chat of a problem (its prompt as one user turn when it has no messages)."""
    messages = [dict(m) for m in problem.messages]
    if not messages:
        if problem.prompt is None:
            raise BackendError(f"problem '{problem.id}' has neither messages nor prompt")
        messages = [{"role": "user", "content": problem.prompt}]
    if system and messages[0].get("role") != "system":
        messages.insert(0, {"role": "system", "content": system})
    return messages


def plain_prompt(problem: Problem, system: str | None) -> str:
    """A base model's prompt: the prompt as written, or the conversation as paragraphs."""
    if problem.prompt is not None:
        body = problem.prompt
    elif problem.messages:
        body = "\n\n".join(m["content"] for m in problem.messages)
    else:
        raise BackendError(f"problem '{problem.id}' has neither messages nor prompt")
    return f"{system}\n\n{body}" if system else body


def render_problem(tokenizer: Any, problem: Problem, system: str | None) -> str:
    """The prompt text of a problem: through the chat template when the tokenizer has one,
    else the base-model prompt."""
    if getattr(tokenizer, "chat_template", None):
        messages = problem_messages(problem, system)
        return str(
            tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        )
    return plain_prompt(problem, system)


class ChatCodec:
    """A local Hugging Face tokenizer with ttc's rendering and BOS rules."""

    def __init__(self, tokenizer: Any, *, system_prompt: str | None = None) -> None:
        self.tokenizer = tokenizer
        self.system_prompt = system_prompt
        self.bos_id: int | None = tokenizer.bos_token_id
        # A tokenizer that prepends BOS on its own says so by doing it.
        probe = tokenizer("a", add_special_tokens=True)["input_ids"]
        self.needs_bos = self.bos_id is not None and probe[:1] == [self.bos_id]

    @classmethod
    def load(
        cls,
        model_dir: str | os.PathLike[str],
        *,
        system_prompt: str | None = None,
        trust_remote_code: bool = False,
    ) -> ChatCodec:
        from transformers import AutoTokenizer

        try:
            tok = AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=trust_remote_code)
        except Exception as exc:
            raise BackendError(
                f"could not load a tokenizer from {model_dir}: {type(exc).__name__}: {exc}",
                hint="point `tokenizer` at a model alias, directory or hub id with a tokenizer",
            ) from exc
        return cls(tok, system_prompt=system_prompt)

    @property
    def eos_token_ids(self) -> frozenset[int]:
        eos = self.tokenizer.eos_token_id
        return frozenset() if eos is None else frozenset({int(eos)})

    def render(self, problem: Problem) -> str:
        return render_problem(self.tokenizer, problem, self.system_prompt)

    def encode(self, text: str) -> list[int]:
        ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        # Chat templates often write the BOS text themselves; add it only when missing.
        if self.needs_bos and self.bos_id is not None and ids[:1] != [self.bos_id]:
            ids.insert(0, self.bos_id)
        return ids

    def decode(self, token_ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(token_ids), skip_special_tokens=True))


class ByteCodec:
    """One id per UTF-8 byte: exact round trip, token counts are byte counts."""

    def __init__(self, *, system_prompt: str | None = None) -> None:
        self.system_prompt = system_prompt

    def render(self, problem: Problem) -> str:
        return plain_prompt(problem, self.system_prompt)

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, token_ids: Sequence[int]) -> str:
        return bytes(t & 0xFF for t in token_ids).decode("utf-8", errors="replace")


def mix_seed(seed: int, sample: int, *, bits: int = 63) -> int:
    """The seed of sample `sample` of a request seeded `seed`.

    Sample j of seed s must not equal sample 0 of seed s + j (what `seed + j` would give),
    so the two are hashed together.
    """
    digest = hashlib.blake2b(f"{seed}:{sample}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << bits) - 1)


def model_dir_of(spec: str, *, cache: str | None = None) -> Path:
    """A plain HF directory for a model spec (alias, .gguf, directory or hub id)."""
    from ttc.backends.models import resolve_model_dir

    return resolve_model_dir(spec, cache=cache)


def continuation_text(
    tokenizer: Any, prompt: Sequence[int], new: Sequence[int], *, special: frozenset[int]
) -> str:
    """The text `new` adds after `prompt`.

    Decoding `new` alone loses a leading space with SentencePiece-style tokenizers, so
    decode it behind a few prompt tokens and cut their text off."""
    tail = [t for t in prompt[-8:] if t not in special][-4:]
    if not tail:
        return str(tokenizer.decode(list(new), skip_special_tokens=True))
    head = str(tokenizer.decode(tail, skip_special_tokens=True))
    full = str(tokenizer.decode([*tail, *new], skip_special_tokens=True))
    if full.startswith(head):
        return full[len(head) :]
    return str(tokenizer.decode(list(new), skip_special_tokens=True))


def agree_at_stop(
    token_ids: Sequence[int],
    text: str,
    *,
    decode: Callable[[Sequence[int]], str],
    encode_piece: Callable[[str], list[int]],
) -> tuple[tuple[int, ...], str, int]:
    """Token ids and text of a generation a stop string ended, made to agree.

    Engines stop when the stop string appears in the decoded text and cut the text right
    after it; when it ends inside a token, that token stays whole in the ids (its tail is
    in the ids, not the text). Keep the tokens whose text lies within `text` and spell
    the rest of `text` (the cut token's head) with `encode_piece`. Should that not decode
    back to `text`, keep the whole token and its whole text instead (the text then runs
    past the stop string, but ids and text still agree). Returns (ids, text, kept): the
    first `kept` ids are the generated ones, the rest re-encoded.
    """
    ids = tuple(int(t) for t in token_ids)
    if decode(ids) == text:
        return ids, text, len(ids)
    k = len(ids)
    while k > 0 and not text.startswith(decode(ids[:k])):
        k -= 1
    rest = text[len(decode(ids[:k])) :]
    fixed = ids[:k] + tuple(int(t) for t in encode_piece(rest)) if rest else ids[:k]
    if decode(fixed) == text:
        return fixed, text, k
    return ids, decode(ids), len(ids)


def realign(values: list[Any], kept: int, total: int, fill: Callable[[int], Any]) -> list[Any]:
    """Per-token values for ids whose first `kept` were generated and the rest re-encoded
    (`agree_at_stop`): the cut token's value stays with the first re-encoded id, the
    others get `fill(position)`."""
    if not values or (total == len(values) and kept == total):
        return values
    out = values[:kept]
    for i in range(kept, total):
        out.append(values[kept] if i == kept and kept < len(values) else fill(i))
    return out

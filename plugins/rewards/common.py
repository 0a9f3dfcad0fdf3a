"""Helpers the reward models share: the question a problem asks, a bounded cache of
step scores keyed by the exact prefix that produced them, and model loading."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ttc.types import Problem

if TYPE_CHECKING:
    import torch


def question_of(problem: Problem) -> str:
    """The question text: `metadata["question"]` (prompted tasks keep it there), else the
    prompt, else the last user message."""
    question = problem.metadata.get("question")
    if isinstance(question, str) and question:
        return question
    if problem.prompt is not None:
        return problem.prompt
    users = [m["content"] for m in problem.messages if m.get("role") == "user"]
    return users[-1] if users else ""


def digest(*parts: Any) -> str:
    """A short stable key for a tuple of texts / token ids."""
    h = hashlib.blake2b(digest_size=16)
    for part in parts:
        h.update(repr(part).encode())
        h.update(b"\x00")
    return h.hexdigest()


class ScoreCache:
    """An LRU of scores by key (the key names the exact input that was scored)."""

    def __init__(self, max_entries: int = 200_000) -> None:
        self.max_entries = max_entries
        self._items: OrderedDict[str, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: str) -> float | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: str, value: float) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.max_entries:
            self._items.popitem(last=False)


def load_reward_model(
    spec: str,
    *,
    auto_class: str,
    device: str,
    dtype: str,
    trust_remote_code: bool,
    cache: str | None,
) -> tuple[Any, Any, Any, torch.device]:
    """(model, tokenizer, model_dir, device) for a reward model: resolved like a policy
    model (alias, GGUF, directory or hub id; see `ttc.backends.models`) and loaded with
    the transformers auto class named `auto_class`, in eval mode."""
    import transformers

    from ttc.backends.models import pick_device, pick_dtype, resolve_model_dir
    from ttc.errors import BackendError

    model_dir = resolve_model_dir(spec, cache=cache)
    dev = pick_device(device)
    torch_dtype = pick_dtype(dtype, dev)
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(
            model_dir, trust_remote_code=trust_remote_code
        )
        cls = getattr(transformers, auto_class)
        model = cls.from_pretrained(
            model_dir, dtype=torch_dtype, trust_remote_code=trust_remote_code
        )
    except Exception as exc:
        raise BackendError(
            f"could not load reward model from {model_dir} as {auto_class}: "
            f"{type(exc).__name__}: {exc}",
            hint="check reward.model and reward.family (and reward.trust_remote_code for "
            "models with custom code)",
        ) from exc
    model.to(dev)
    model.eval()
    return model, tokenizer, model_dir, dev


def pad_id(tokenizer: Any) -> int:
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if candidate is not None:
            return int(candidate)
    return 0


def encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids of a text segment, no special tokens added (templates write their own)."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def token_id(tokenizer: Any, token: str) -> int:
    """The id of a token written as text: the vocabulary entry when there is one, else the
    last id of its encoding (SentencePiece may prefix a word-boundary piece)."""
    tid = tokenizer.convert_tokens_to_ids(token)
    unk = getattr(tokenizer, "unk_token_id", None)
    if isinstance(tid, int) and tid >= 0 and tid != unk:
        return tid
    ids = encode(tokenizer, token)
    if not ids:
        raise ValueError(f"token {token!r} encodes to nothing")
    return ids[-1]


def steps_text(steps: Sequence[str]) -> str:
    return "".join(steps)

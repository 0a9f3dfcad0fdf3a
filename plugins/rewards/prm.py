"""`prm`: process reward models from the hub, scored incrementally and in batches.

Four families, each with the input layout and read-out of its model card:

- `qwen` (Qwen2.5-Math-PRM): a chat (system, user question, assistant steps), each step
  followed by the separator token `<extra_0>`; the step's score is the positive-class
  probability of the token-classification head at its separator.
- `math_shepherd` (peiyi9979/math-shepherd-mistral-7b-prm): question, then each step
  followed by the step tag `ки`; the score is softmax over the LM logits of `+` and `-`
  at the tag, probability of `+`.
- `rlhflow` (RLHFlow/Llama3.1-8B-PRM-*): chat turns, the user gives a step (the first one
  after the question) and the assistant answers `+`; the score is P(`+`) against `-`
  from the logits that predict the assistant's answer.
- `skywork` (Skywork-o1-Open-PRM-Qwen-2.5): BOS, question and each step followed by a
  newline token; a value head (`v_head.summary`, read from the checkpoint) gives
  `sigmoid(value)` at each newline.

Where steps end in a separator token (`qwen`, `math_shepherd`, `skywork`), every step is
tokenized on its own and the pieces are concatenated; `rlhflow` conversations are
tokenized whole (templates end headers with whitespace that tokenizers may merge with
what follows). Either way a step's score depends only on the tokens up to its read-out
position (the models are causal), which makes scoring incremental twice over: scores are
cached by that exact token prefix (a branch that grew by one step only needs the new
one), and the KV of scored prefixes is kept in a bounded prefix cache, so the new step
runs on top of its parent's KV (the longest common token prefix). Only
tokens actually run through the model are reported (`ScoreResult.tokens`).

All requests of a call (every branch of every running problem) are batched, left-padded,
`batch_size` rows per forward.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from ttc.config import RewardConfig, bounded
from ttc.errors import BackendError
from ttc.interfaces import RewardModel
from ttc.plugins.rewards.common import (
    ScoreCache,
    digest,
    encode,
    load_reward_model,
    question_of,
    token_id,
)
from ttc.types import ModelArchitecture, ModelPass, ScoreRequest, ScoreResult

if TYPE_CHECKING:
    import torch

KV = list[tuple["torch.Tensor", "torch.Tensor"]]

FAMILIES = ["qwen", "math_shepherd", "rlhflow", "skywork"]

QWEN_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."


@dataclass
class PRMConfig(RewardConfig):
    name: str = "prm"
    aggregate: str = bounded("min", choices=["last", "min", "prod", "mean"])
    model: str = "Qwen/Qwen2.5-Math-PRM-7B"
    """Hub id, local directory (or GGUF / alias) of the process reward model."""
    family: str = bounded("qwen", choices=FAMILIES, help="input layout and read-out")
    batch_size: int = bounded(8, ge=1, help="sequences per forward")
    max_batch_tokens: int = bounded(16384, ge=1, help="padded tokens per forward")
    prefix_cache_tokens: int = bounded(
        32768, ge=0, help="tokens of PRM KV kept for incremental scoring (0: off)"
    )
    device: str = "auto"
    dtype: str = bounded("auto", choices=["auto", "float32", "bfloat16", "float16"])
    trust_remote_code: bool = False
    """Needed by hub checkpoints with custom model code (e.g. Qwen2.5-Math-PRM)."""
    cache_dir: str | None = None
    strip_steps: bool = True
    """Strip whitespace around each step (the policy's step delimiter) before scoring."""
    system_prompt: str = QWEN_SYSTEM
    """The `qwen` family's system message."""
    separator: str = "<extra_0>"
    """The `qwen` family's step separator token."""
    step_tag: str = "ки"
    """The `math_shepherd` family's step tag."""
    good_token: str = "+"
    bad_token: str = "-"


@dataclass(frozen=True, slots=True)
class Layout:
    """A branch as the PRM reads it: token ids, and per step the position whose output
    gives the step's score."""

    ids: tuple[int, ...]
    positions: tuple[int, ...]


class Family:
    """How one PRM family lays out a question and steps, and reads a score."""

    name: ClassVar[str] = ""
    head: ClassVar[str] = "classes"
    """`classes` (2-class head, class 1), `tokens` (P(good) vs bad from the LM head) or
    `value` (sigmoid of a value head)."""
    auto_class: ClassVar[str] = "AutoModelForTokenClassification"

    def __init__(self, tokenizer: Any, config: PRMConfig) -> None:
        self.tok = tokenizer
        self.config = config

    def step(self, text: str) -> str:
        return text.strip() if self.config.strip_steps else text

    def layout(self, question: str, steps: Sequence[str]) -> Layout:
        raise NotImplementedError

    def _chat(self, messages: list[dict[str, str]], *, generation_prompt: bool) -> str:
        return str(
            self.tok.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=generation_prompt
            )
        )


class QwenFamily(Family):
    name = "qwen"
    head = "classes"

    def layout(self, question: str, steps: Sequence[str]) -> Layout:
        sep = token_id(self.tok, self.config.separator)
        messages = [
            {"role": "system", "content": self.config.system_prompt},
            {"role": "user", "content": question},
        ]
        if getattr(self.tok, "chat_template", None):
            prefix = self._chat(messages, generation_prompt=True)
        else:
            prefix = f"{self.config.system_prompt}\n{question}\n"
        ids = encode(self.tok, prefix)
        positions = []
        for s in steps:
            ids += [*encode(self.tok, self.step(s)), sep]
            positions.append(len(ids) - 1)
        return Layout(tuple(ids), tuple(positions))


class MathShepherdFamily(Family):
    name = "math_shepherd"
    head = "tokens"
    auto_class = "AutoModelForCausalLM"

    def layout(self, question: str, steps: Sequence[str]) -> Layout:
        tag = token_id(self.tok, self.config.step_tag)
        ids = []
        bos = self.tok.bos_token_id
        if bos is not None:
            ids.append(int(bos))
        ids += encode(self.tok, question + " ")
        positions = []
        for k, s in enumerate(steps):
            ids += [*encode(self.tok, ("\n" if k else "") + self.step(s) + " "), tag]
            positions.append(len(ids) - 1)
        return Layout(tuple(ids), tuple(positions))


class RLHFlowFamily(Family):
    name = "rlhflow"
    head = "tokens"
    auto_class = "AutoModelForCausalLM"

    def layout(self, question: str, steps: Sequence[str]) -> Layout:
        # The whole conversation is tokenized at once, as the model card does: templates
        # end headers with whitespace that some tokenizers merge with what follows.
        conversation: list[dict[str, str]] = []
        answers = []  # character offset of each assistant "+"
        for k, s in enumerate(steps):
            content = f"{question} {self.step(s)}" if k == 0 else self.step(s)
            conversation.append({"role": "user", "content": content})
            answers.append(len(self._chat(conversation, generation_prompt=True)))
            conversation.append({"role": "assistant", "content": self.config.good_token})
        if not steps:
            return Layout((), ())
        text = self._chat(conversation, generation_prompt=False)
        enc = self.tok(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = list(enc["input_ids"]), list(enc["offset_mapping"])
        positions = []
        for at in answers:
            # the token that starts at the answer; the logits before it predict it
            i = next(j for j, (a, b) in enumerate(offsets) if b > at and a <= at)
            positions.append(i - 1)
        return Layout(tuple(ids), tuple(positions))


class SkyworkFamily(Family):
    name = "skywork"
    head = "value"
    auto_class = "AutoModel"

    def layout(self, question: str, steps: Sequence[str]) -> Layout:
        newline = encode(self.tok, "\n")[-1]
        bos = self.tok.bos_token or ""
        ids = encode(self.tok, bos + question + "\n")
        positions = []
        for s in steps:
            ids += [*encode(self.tok, self.step(s)), newline]
            positions.append(len(ids) - 1)
        return Layout(tuple(ids), tuple(positions))


FAMILY_CLASSES: dict[str, type[Family]] = {
    f.name: f for f in (QwenFamily, MathShepherdFamily, RLHFlowFamily, SkyworkFamily)
}


class ProcessRewardModel(RewardModel):
    name = "prm"
    config: PRMConfig

    def __init__(self, config: PRMConfig) -> None:
        super().__init__(config)
        self.family: Family | None = None
        self.model: Any = None
        self.base: Any = None
        self.readout: Any = None
        self.device: Any = None
        self.scores = ScoreCache()
        self.prefix_cache: Any = None
        self._arch: ModelArchitecture | None = None
        self._lock = threading.Lock()

    # -- loading ----------------------------------------------------------------------
    async def start(self) -> None:
        import asyncio

        await asyncio.to_thread(self.load)

    def load(self) -> None:
        if self.model is not None:
            return
        family_cls = FAMILY_CLASSES[self.config.family]
        auto = family_cls.auto_class
        if family_cls.head == "classes" and self.config.trust_remote_code:
            auto = "AutoModel"  # custom PRM classes register under AutoModel
        model, tokenizer, model_dir, device = load_reward_model(
            self.config.model,
            auto_class=auto,
            device=self.config.device,
            dtype=self.config.dtype,
            trust_remote_code=self.config.trust_remote_code,
            cache=self.config.cache_dir,
        )
        self.attach(model, tokenizer, model_dir=model_dir)
        self.device = device

    def attach(self, model: Any, tokenizer: Any, *, model_dir: Any = None) -> None:
        """Use an already loaded model and tokenizer (tests, or a shared model)."""

        family = FAMILY_CLASSES[self.config.family](tokenizer, self.config)
        base = model.base_model if model.base_model is not None else model
        if family.head == "classes":
            head = getattr(model, "score", None) or getattr(model, "classifier", None)
            if head is None:
                raise BackendError(f"PRM {self.config.model} has no classification head")
            readout: Any = head
        elif family.head == "tokens":
            weight = model.get_output_embeddings().weight
            pair = [token_id(tokenizer, self.config.good_token)]
            pair.append(token_id(tokenizer, self.config.bad_token))
            readout = weight[pair].detach()  # [2, hidden]: only these logits matter
        else:
            readout = _value_head(model, model_dir)
        self.family, self.model, self.base, self.readout = family, model, base, readout
        from ttc.backends.models import architecture_of

        self._arch = architecture_of(model.config, model)
        self.device = next(model.parameters()).device
        from ttc.backends.prefix_cache import PrefixCache

        self.prefix_cache = PrefixCache(self.config.prefix_cache_tokens)

    async def close(self) -> None:
        if self.prefix_cache is not None:
            self.prefix_cache.clear()
        self.model = self.base = self.readout = None

    # -- scoring ----------------------------------------------------------------------
    def layout(self, request: ScoreRequest) -> Layout:
        assert self.family is not None
        return self.family.layout(question_of(request.problem), request.steps)

    @property
    def architecture(self) -> ModelArchitecture | None:
        """The PRM's own shape (known once loaded)."""
        return self._arch

    def _jobs(
        self, layouts: Sequence[Layout], keys: Sequence[Sequence[str]]
    ) -> dict[tuple[int, ...], int]:
        """The sequences that must run (some step lacks a cached score), each with the
        first position needing a score."""
        jobs: dict[tuple[int, ...], int] = {}
        for lay, ks in zip(layouts, keys, strict=True):
            pairs = zip(lay.positions, ks, strict=True)
            missing = [p for p, k in pairs if self.scores.get(k) is None]
            if missing:
                jobs[lay.ids] = min(jobs.get(lay.ids, missing[0]), missing[0])
        return jobs

    def _plan(
        self, requests: Sequence[ScoreRequest]
    ) -> tuple[list[Layout], list[list[str]], dict[tuple[int, ...], int]]:
        layouts = [self.layout(r) for r in requests]
        keys = [[digest(lay.ids[: p + 1]) for p in lay.positions] for lay in layouts]
        return layouts, keys, self._jobs(layouts, keys)

    def worst_case(self, requests: Sequence[ScoreRequest]) -> list[ModelPass]:
        """Every sequence with an unscored step, run whole (its KV prefix may be gone)."""
        if self.model is None:
            self.load()
        _, _, jobs = self._plan(requests)
        return [ModelPass(prompt=len(ids)) for ids in jobs]

    def score_batch(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult]:
        import torch

        if self.model is None:
            self.load()
        layouts, keys, jobs = self._plan(requests)
        computed: dict[tuple[int, ...], ModelPass] = {}
        if jobs:
            with self._lock, torch.inference_mode():
                computed = self._run(jobs, {lay.ids: lay for lay in layouts})
        out = []
        for lay, ks in zip(layouts, keys, strict=True):
            scores = tuple(float(self.scores.get(k) or 0.0) for k in ks)
            done = computed.pop(lay.ids, None)  # a sequence's cost is reported once
            passes = () if done is None else (done,)
            out.append(
                ScoreResult(step_scores=scores, tokens=sum(p.tokens for p in passes), passes=passes)
            )
        return out

    def _run(
        self, jobs: dict[tuple[int, ...], int], layouts: dict[tuple[int, ...], Layout]
    ) -> dict[tuple[int, ...], ModelPass]:
        """Run every job's sequence from its cached prefix; store its step scores.
        Returns the pass each sequence took (its length, and how much came cached)."""
        hits = {ids: self.prefix_cache.lookup(ids, limit=first) for ids, first in jobs.items()}
        order = sorted(jobs, key=lambda ids: len(ids) - hits[ids][0])
        groups: list[list[tuple[int, ...]]] = [[]]
        for ids in order:
            group = groups[-1]
            width = len(ids) - hits[ids][0]
            if group and (
                len(group) >= self.config.batch_size
                or (len(group) + 1) * width > self.config.max_batch_tokens
            ):
                groups.append(group := [])
            group.append(ids)
        computed: dict[tuple[int, ...], ModelPass] = {}
        for group in groups:
            hidden, kvs = self._forward([(ids, *hits[ids]) for ids in group])
            for ids, h, kv in zip(group, hidden, kvs, strict=True):
                cached = hits[ids][0]
                computed[ids] = ModelPass(prompt=len(ids), cached=cached)
                lay = layouts[ids]
                rows = [p for p in lay.positions if p >= cached]
                values = self._read(h[[p - cached for p in rows]])
                for p, v in zip(rows, values, strict=True):
                    self.scores.put(digest(ids[: p + 1]), v)
                if self.prefix_cache.max_tokens:
                    self.prefix_cache.insert(ids, kv)
        return computed

    def _forward(
        self, rows: list[tuple[tuple[int, ...], int, KV | None]]
    ) -> tuple[list[torch.Tensor], list[KV]]:
        """Last hidden states of each row's new tokens (`[new, hidden]`) and each row's
        full KV; rows are `(ids, cached length, cached KV)`, laid out
        `[pad, cached KV, pad, new tokens]`."""
        from transformers import DynamicCache

        from ttc.kernels import kv as kvops

        dev = self.device
        new = [ids[c:] for ids, c, _ in rows]
        cached = [c for _, c, _ in rows]
        max_c, max_s = max(cached), max(len(s) for s in new)
        input_ids, mask, positions = kvops.left_padded_inputs(cached, new)
        cache = DynamicCache()
        if max_c:
            held = kvops.stack_left_padded([kv for _, _, kv in rows], cached, max_c)
            for layer, (keys, values) in enumerate(held):
                cache.update(keys, values, layer)
        out = self.base(
            input_ids=input_ids.to(dev),
            attention_mask=mask.to(dev),
            position_ids=positions.to(dev),
            past_key_values=cache,
            use_cache=True,
        )
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        valid = mask.bool().to(dev)
        hs = [hidden[r, max_s - len(s) :] for r, s in enumerate(new)]
        kvs = [kvops.row_kv(cache, r, valid[r]) for r in range(len(rows))]
        return hs, kvs

    def _read(self, hidden: torch.Tensor) -> list[float]:
        """Step scores from the hidden states at read-out positions (`[k, hidden]`)."""
        import torch

        assert self.family is not None
        if self.family.head == "classes":
            logits = self.readout(hidden).float()
            return torch.softmax(logits, dim=-1)[:, 1].tolist()
        if self.family.head == "tokens":
            logits = hidden.float() @ self.readout.float().T  # [k, 2]: good, bad
            return torch.softmax(logits, dim=-1)[:, 0].tolist()
        weight, bias = self.readout
        value = hidden.float() @ weight.float().T + bias.float()
        return torch.sigmoid(value[:, 0]).tolist()


def _value_head(model: Any, model_dir: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The Skywork value head (`v_head.summary` weight and bias): an attribute of the
    model when it has one, else read from the checkpoint's safetensors files."""
    import torch

    device = next(model.parameters()).device
    head = getattr(getattr(model, "v_head", None), "summary", None)
    if head is not None:
        return head.weight.detach(), head.bias.detach()
    if model_dir is not None:
        from pathlib import Path

        from safetensors import safe_open

        found: dict[str, torch.Tensor] = {}
        for path in sorted(Path(model_dir).glob("*.safetensors")):
            with safe_open(str(path), framework="pt") as f:
                for key in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                    if "v_head" in key:
                        found[key.rsplit(".", 1)[-1]] = f.get_tensor(key)
        if "weight" in found:
            weight = found["weight"].to(device)
            bias = found.get("bias", torch.zeros(weight.shape[0])).to(device)
            return weight, bias
    raise BackendError(
        "the skywork PRM family needs a value head (v_head.summary.*) in the checkpoint",
        hint="point reward.model at a Skywork-o1-Open-PRM checkpoint",
    )

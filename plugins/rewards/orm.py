"""`orm`: outcome reward models (sequence classification), one score per solution.

The model (any `AutoModelForSequenceClassification` checkpoint) reads the question and
the whole solution so far, as a user/assistant chat when its tokenizer has a chat
template, else as `question\\n\\nsolution`. A one-logit head gives `sigmoid(logit)`, a
multi-class head the probability of its last class. The score is the branch's last step
score; earlier steps keep the score their prefix got when it was scored (or this one when
it never was), so `aggregate=last` (the default) ranks by the whole solution. Scores are
cached by text: scoring the same solution twice costs nothing the second time.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ttc.config import RewardConfig, bounded
from ttc.interfaces import RewardModel
from ttc.plugins.rewards.common import (
    ScoreCache,
    digest,
    encode,
    load_reward_model,
    pad_id,
    question_of,
)
from ttc.types import ModelArchitecture, ModelPass, ScoreRequest, ScoreResult


@dataclass
class ORMConfig(RewardConfig):
    name: str = "orm"
    aggregate: str = bounded("last", choices=["last", "min", "prod", "mean"])
    model: str = "Skywork/Skywork-Reward-V2-Qwen3-0.6B"
    """Hub id or local directory of a sequence-classification reward model."""
    batch_size: int = bounded(8, ge=1, help="sequences per forward")
    max_length: int = bounded(4096, ge=16, help="tokens kept (from the left end)")
    device: str = "auto"
    dtype: str = bounded("auto", choices=["auto", "float32", "bfloat16", "float16"])
    trust_remote_code: bool = False
    cache_dir: str | None = None


class OutcomeRewardModel(RewardModel):
    name = "orm"
    config: ORMConfig

    def __init__(self, config: ORMConfig) -> None:
        super().__init__(config)
        self.model: Any = None
        self.tokenizer: Any = None
        self.device: Any = None
        self.scores = ScoreCache()
        self._arch: ModelArchitecture | None = None
        self._lock = threading.Lock()

    async def start(self) -> None:
        import asyncio

        await asyncio.to_thread(self.load)

    def load(self) -> None:
        if self.model is not None:
            return
        model, tokenizer, _, _ = load_reward_model(
            self.config.model,
            auto_class="AutoModelForSequenceClassification",
            device=self.config.device,
            dtype=self.config.dtype,
            trust_remote_code=self.config.trust_remote_code,
            cache=self.config.cache_dir,
        )
        self.attach(model, tokenizer)

    def attach(self, model: Any, tokenizer: Any) -> None:
        from ttc.backends.models import architecture_of

        self.model, self.tokenizer = model, tokenizer
        self.device = next(model.parameters()).device
        self._arch = architecture_of(model.config, model)

    async def close(self) -> None:
        self.model = None

    def text_ids(self, question: str, solution: str) -> list[int]:
        tok = self.tokenizer
        if getattr(tok, "chat_template", None):
            chat = [
                {"role": "user", "content": question},
                {"role": "assistant", "content": solution},
            ]
            text = str(tok.apply_chat_template(chat, tokenize=False))
            ids = encode(tok, text)
        else:
            ids = list(tok(f"{question}\n\n{solution}")["input_ids"])
        return ids[-self.config.max_length :]

    @property
    def architecture(self) -> ModelArchitecture | None:
        """The ORM's own shape (known once loaded)."""
        return self._arch

    def _plan(
        self, requests: Sequence[ScoreRequest]
    ) -> tuple[list[list[str]], dict[str, list[int]]]:
        """Each request's prefix keys, and the solutions not yet scored (key -> ids)."""
        q = [question_of(r.problem) for r in requests]
        prefix_keys = [
            [digest(qq, "".join(r.steps[: k + 1])) for k in range(len(r.steps))]
            for qq, r in zip(q, requests, strict=True)
        ]
        todo: dict[str, list[int]] = {}
        for qq, r, keys in zip(q, requests, prefix_keys, strict=True):
            if keys and self.scores.get(keys[-1]) is None and keys[-1] not in todo:
                todo[keys[-1]] = self.text_ids(qq, "".join(r.steps))
        return prefix_keys, todo

    def worst_case(self, requests: Sequence[ScoreRequest]) -> list[ModelPass]:
        """One whole pass per solution not scored yet."""
        if self.model is None:
            self.load()
        _, todo = self._plan(requests)
        return [ModelPass(prompt=len(ids)) for ids in todo.values()]

    def score_batch(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult]:
        import torch

        if self.model is None:
            self.load()
        prefix_keys, todo = self._plan(requests)
        tokens: dict[str, int] = {}
        if todo:
            with self._lock, torch.inference_mode():
                items = list(todo.items())
                for i in range(0, len(items), self.config.batch_size):
                    chunk = items[i : i + self.config.batch_size]
                    values = self._forward([ids for _, ids in chunk])
                    for (key, ids), value in zip(chunk, values, strict=True):
                        self.scores.put(key, value)
                        tokens[key] = len(ids)
        out = []
        for keys in prefix_keys:
            if not keys:
                out.append(ScoreResult(step_scores=()))
                continue
            last = float(self.scores.get(keys[-1]) or 0.0)
            scores = tuple(
                last if (v := self.scores.get(k)) is None else float(v) for k in keys[:-1]
            )
            n = tokens.pop(keys[-1], 0)
            passes = (ModelPass(prompt=n),) if n else ()
            out.append(ScoreResult(step_scores=(*scores, last), tokens=n, passes=passes))
        return out

    def _forward(self, batch: list[list[int]]) -> list[float]:
        import torch

        pad = getattr(self.model.config, "pad_token_id", None)
        if pad is None and len(batch) > 1:
            # The head finds each row's last token by the pad id: without one, run alone.
            return [v for ids in batch for v in self._forward([ids])]
        width = max(len(ids) for ids in batch)
        fill = pad if pad is not None else pad_id(self.tokenizer)
        input_ids = torch.full((len(batch), width), fill, dtype=torch.long)
        mask = torch.zeros(len(batch), width, dtype=torch.long)
        for r, ids in enumerate(batch):  # right padding: classifiers read the last real token
            input_ids[r, : len(ids)] = torch.tensor(ids)
            mask[r, : len(ids)] = 1
        logits = self.model(
            input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device)
        ).logits.float()
        if logits.shape[-1] == 1:
            return torch.sigmoid(logits[:, 0]).tolist()
        return torch.softmax(logits, dim=-1)[:, -1].tolist()

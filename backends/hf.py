"""The transformers backend: batched sampling with a KV cache on CPU or one GPU.

`generate_batch` receives the requests of many problems at once and decodes all their
samples as one batch, with its own loop over the model's forward and a `DynamicCache`:

- Each distinct prompt is prefilled once; its KV is then gathered into one row per sample
  (KV forking), so `n` samples cost one prefill.
- A bounded prefix cache keeps the KV of recent prompts and finished branches, keyed by
  token ids. A new prompt reuses the KV of its longest common prefix with any held entry,
  so continuing a branch (earlier prompt + generated tokens + more) prefills only the new
  tokens.
- Rows are left-padded; attention masks and explicit position ids make every row
  compute what it would compute alone. Finished rows leave the batch at once.

Usage accounting (per request, per prefill pass):
`prompt_tokens` is the prompt length, counted once however many samples share it (again
only when a request is split over several batches by `max_batch_sequences`);
`cached_prompt_tokens` is the part of it whose KV was not computed: taken from the prefix
cache, or shared with an identical prompt in the same batch. At least the last prompt
token is always computed (its logits start decoding), so a fully cached prompt reports
`len(prompt) - 1` cached.

Torch and transformers are imported inside methods: importing this module stays cheap.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from ttc.backends._text import (
    ChatCodec,
    agree_at_stop,
    continuation_text,
    realign,
    render_problem,
)
from ttc.backends.prefix_cache import PrefixCache
from ttc.config import BackendConfig, bounded
from ttc.errors import BackendError
from ttc.interfaces import Backend
from ttc.progress import tokens_generated
from ttc.types import (
    FinishReason,
    GenerateRequest,
    GenerateResult,
    Generation,
    ModelArchitecture,
    Problem,
    Sampling,
    Usage,
)

if TYPE_CHECKING:
    import torch

    from ttc.backends.models import LoadedModel
    from ttc.kernels.kv import KV


@dataclass
class HFBackendConfig(BackendConfig):
    name: str = "hf"
    model: str = "smollm2-135m"
    """Alias (smollm2-135m, gemma3-270m), local .gguf file, model directory or hub id."""
    device: str = "auto"
    """auto (CUDA when available, else CPU), cpu, cuda or cuda:N."""
    dtype: str = bounded(
        "auto",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="weights and activations; auto is float32 on CPU, bfloat16 on CUDA",
    )
    max_batch_sequences: int = bounded(
        256, ge=1, help="sequences decoded together; larger calls run in several batches"
    )
    max_prefill_tokens: int = bounded(
        8192, ge=1, help="padded prompt tokens per prefill forward (bounds prefill memory)"
    )
    prefix_cache_tokens: int = bounded(
        8192, ge=0, help="tokens of KV the prefix cache holds (0 disables it)"
    )
    attention: str = bounded(
        "auto",
        choices=["auto", "cascade", "plain"],
        help="decode attention: cascade reads a prompt's KV once for all its samples "
        "(ttc.kernels.attention), plain forks it into every row; auto: cascade on CUDA "
        "for models that support it",
    )
    kernels: str = bounded(
        "auto",
        choices=["auto", "reference", "triton"],
        help="ttc.kernels paths: auto (Triton on CUDA, torch reference elsewhere), or one "
        "of them everywhere (triton on CPU needs TRITON_INTERPRET=1)",
    )
    seed: int = 0
    """Seeds the per-sample seeds of requests whose sampling has no seed."""
    system_prompt: str | None = None
    """Prepended as a system message when a chat problem has none."""
    trust_remote_code: bool = False
    cache_dir: str | None = None
    """Where converted models live; default $TTC_CACHE_DIR or ~/.cache/ttc."""


# -- decoding state -------------------------------------------------------------------------


@dataclass(slots=True)
class _Piece:
    """Samples `start .. start + n` of one request, decoded in one batch."""

    req: int
    start: int
    n: int


@dataclass(slots=True)
class _Row:
    """One sequence being decoded."""

    req: int
    sample: int
    prompt: tuple[int, ...]
    sampling: Sampling
    max_new: int
    generator: torch.Generator
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top: list[tuple[tuple[int, float], ...]] = field(default_factory=list)
    text: str = ""
    finish: FinishReason | None = None
    stop_reason: str | None = None


@dataclass(slots=True)
class _Tally:
    """What one request cost and produced so far."""

    prompt_tokens: int = 0
    cached_tokens: int = 0
    generations: dict[int, Generation] = field(default_factory=dict)


def _mix_seed(seed: int, sample: int) -> int:
    # Sample j of a request with seed s must not equal sample 0 of seed s + j.
    digest = hashlib.blake2b(f"{seed}:{sample}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


class HFBackend(Backend):
    """Transformers models with batched KV-cache decoding, KV forking and prefix caching."""

    name: ClassVar[str] = "hf"
    batches_itself: ClassVar[bool] = False

    config: HFBackendConfig

    def __init__(self, config: HFBackendConfig) -> None:
        super().__init__(config)
        self._loaded: LoadedModel | None = None
        self._lock = threading.Lock()
        self._rng = random.Random(config.seed)
        self.prefix_cache = PrefixCache(config.prefix_cache_tokens)
        self.eos_token_ids: frozenset[int] = frozenset()
        """Token ids that end a generation with `finish_reason="eos"`."""
        self._codec: ChatCodec | None = None
        """Tokenization with the BOS rule every backend shares (set by `load`)."""
        self._special_ids: frozenset[int] = frozenset()
        self._max_positions: int | None = None

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        await asyncio.to_thread(self.load)

    def load(self) -> None:
        """Load model and tokenizer (synchronously; `start` runs this in a thread)."""
        if self._loaded is not None:
            return
        from ttc.backends.models import load_model

        cfg = self.config
        loaded = load_model(
            cfg.model,
            device=cfg.device,
            dtype=cfg.dtype,
            trust_remote_code=cfg.trust_remote_code,
            cache=cfg.cache_dir,
        )
        tok = loaded.tokenizer
        eos: set[int] = set()
        for source in (tok.eos_token_id, loaded.model.generation_config.eos_token_id):
            if isinstance(source, int):
                eos.add(source)
            elif isinstance(source, list | tuple):
                eos.update(int(i) for i in source)
        self.eos_token_ids = frozenset(eos)
        self._codec = ChatCodec(tok)
        self._special_ids = frozenset(int(i) for i in tok.all_special_ids)
        text_cfg = loaded.model.config.get_text_config()
        self._max_positions = getattr(text_cfg, "max_position_embeddings", None)
        self._loaded = loaded

    async def close(self) -> None:
        self.prefix_cache.clear()
        loaded, self._loaded = self._loaded, None
        if loaded is not None and loaded.device.type == "cuda":
            import torch

            del loaded
            torch.cuda.empty_cache()

    def _require(self) -> LoadedModel:
        if self._loaded is None:
            raise BackendError(
                "the hf backend is not started", hint="await backend.start() (or call load())"
            )
        return self._loaded

    @property
    def architecture(self) -> ModelArchitecture | None:
        return None if self._loaded is None else self._loaded.architecture

    # -- text -----------------------------------------------------------------------------
    def render(self, problem: Problem) -> str:
        # the config is read at each call: its system prompt may change after loading
        return render_problem(self._require().tokenizer, problem, self.config.system_prompt)

    def _require_codec(self) -> ChatCodec:
        self._require()  # the not-started error
        assert self._codec is not None  # set by `load` together with the model
        return self._codec

    def encode(self, text: str) -> list[int]:
        return self._require_codec().encode(text)

    def decode(self, token_ids: Sequence[int]) -> str:
        return self._require_codec().decode(token_ids)

    def _continuation(self, prompt: Sequence[int], new: Sequence[int]) -> str:
        """The text `new` adds after `prompt` (see `continuation_text`)."""
        tok = self._require().tokenizer
        return continuation_text(tok, prompt, new, special=self._special_ids)

    # -- generation -----------------------------------------------------------------------
    def generate_batch(self, requests: Sequence[GenerateRequest]) -> list[GenerateResult]:
        import torch

        loaded = self._require()
        started = time.perf_counter()
        prompts = [self._prompt_ids(r) for r in requests]
        tallies = [_Tally() for _ in requests]
        with self._lock, torch.inference_mode():
            base_seeds = [
                r.sampling.seed if r.sampling.seed is not None else self._rng.getrandbits(63)
                for r in requests
            ]
            for chunk in self._plan(requests):
                self._run_chunk(loaded, chunk, requests, prompts, base_seeds, tallies)
        latency = time.perf_counter() - started
        results = []
        for req, tally in zip(requests, tallies, strict=True):
            gens = tuple(tally.generations[j] for j in range(req.sampling.n))
            usage = Usage(
                prompt_tokens=tally.prompt_tokens,
                cached_prompt_tokens=tally.cached_tokens,
                completion_tokens=sum(len(g.token_ids) for g in gens),
                latency_s=latency,
            )
            results.append(GenerateResult(generations=gens, usage=usage))
        return results

    def next_token_logprobs(
        self, prompts: Sequence[Sequence[int]], candidates: Sequence[int]
    ) -> list[tuple[list[float], Usage]]:
        """Log-probabilities of the `candidates` token ids as the next token after each
        prompt (e.g. "Yes"/"No" for a judge), with what each prompt's prefill cost. Uses
        and fills the prefix cache like generation does."""
        import torch

        loaded = self._require()
        ids = [tuple(int(t) for t in p) for p in prompts]
        if not ids:
            return []
        if any(not p for p in ids):
            raise BackendError("a next-token request has an empty prompt")
        started = time.perf_counter()
        with self._lock, torch.inference_mode():
            logits, _, cached = self._prefill(loaded, ids)
            picked = torch.log_softmax(logits.float(), dim=-1)[:, list(candidates)]
        latency = time.perf_counter() - started
        return [
            (row, Usage(prompt_tokens=len(p), cached_prompt_tokens=c, latency_s=latency))
            for row, p, c in zip(picked.tolist(), ids, cached, strict=True)
        ]

    def _prompt_ids(self, request: GenerateRequest) -> tuple[int, ...]:
        if request.prompt_token_ids is not None:
            ids = tuple(int(t) for t in request.prompt_token_ids)
        else:
            ids = tuple(self.encode(request.prompt))
        if not ids:
            raise BackendError("a generate request has an empty prompt")
        if self._max_positions is not None and len(ids) >= self._max_positions:
            raise BackendError(
                f"prompt of {len(ids)} tokens does not fit the model's context of "
                f"{self._max_positions} tokens",
                hint="shorten the prompt or lower the strategy's depth",
            )
        if request.sampling.n < 1 or request.sampling.max_tokens < 1:
            raise BackendError(
                f"sampling needs n >= 1 and max_tokens >= 1, got n={request.sampling.n}, "
                f"max_tokens={request.sampling.max_tokens}"
            )
        return ids

    def _plan(self, requests: Sequence[GenerateRequest]) -> list[list[_Piece]]:
        """Pack requests' samples into batches of at most `max_batch_sequences` rows.

        A request larger than that is split; its later pieces find the prompt in the
        prefix cache (when enabled), so it is still prefilled once.
        """
        cap = self.config.max_batch_sequences
        chunks: list[list[_Piece]] = []
        current: list[_Piece] = []
        used = 0
        for i, req in enumerate(requests):
            start = 0
            while start < req.sampling.n:
                if used == cap:
                    chunks.append(current)
                    current, used = [], 0
                take = min(req.sampling.n - start, cap - used)
                current.append(_Piece(i, start, take))
                used += take
                start += take
        if current:
            chunks.append(current)
        return chunks

    def _run_chunk(
        self,
        loaded: LoadedModel,
        chunk: list[_Piece],
        requests: Sequence[GenerateRequest],
        prompts: list[tuple[int, ...]],
        base_seeds: list[int],
        tallies: list[_Tally],
    ) -> None:
        import torch

        # Identical prompts in one batch share one prefill row.
        unique: dict[tuple[int, ...], int] = {}
        for piece in chunk:
            ids = prompts[piece.req]
            tally = tallies[piece.req]
            tally.prompt_tokens += len(ids)
            if ids in unique:
                tally.cached_tokens += len(ids)
            else:
                unique[ids] = len(unique)
        uniq = list(unique)
        logits, row_kv, cached = self._prefill(loaded, uniq)
        first_piece: dict[int, bool] = {}
        for piece in chunk:
            src = unique[prompts[piece.req]]
            if src not in first_piece:
                first_piece[src] = True
                tallies[piece.req].cached_tokens += cached[src]

        rows: list[_Row] = []
        src_index: list[int] = []
        for piece in chunk:
            req = requests[piece.req]
            ids = prompts[piece.req]
            room = req.sampling.max_tokens
            if self._max_positions is not None:
                room = min(room, self._max_positions - len(ids))
            for j in range(piece.start, piece.start + piece.n):
                gen = torch.Generator()
                gen.manual_seed(_mix_seed(base_seeds[piece.req], j))
                rows.append(_Row(piece.req, j, ids, req.sampling, room, gen))
                src_index.append(unique[ids])
        self._decode(loaded, rows, src_index, logits, row_kv, tallies)

    def _prefill(
        self, loaded: LoadedModel, prompts: list[tuple[int, ...]]
    ) -> tuple[torch.Tensor, list[KV], list[int]]:
        """Last-position logits, per-prompt KV and cached-token counts for `prompts`.

        Prompts are grouped so that one forward holds at most `max_prefill_tokens` padded
        tokens. Each row is laid out `[pad, cached prefix KV, pad, new tokens]`.
        """
        import torch
        from transformers import DynamicCache

        from ttc.kernels import kv as kvops

        hits = [self.prefix_cache.lookup(ids, limit=len(ids) - 1) for ids in prompts]
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]) - hits[i][0])
        groups: list[list[int]] = [[]]
        for i in order:  # sorted by new tokens, so each group's padding is small
            group = groups[-1]
            width = len(prompts[i]) - hits[i][0]
            if group and (len(group) + 1) * width > self.config.max_prefill_tokens:
                groups.append(group := [])
            group.append(i)

        logits: list[torch.Tensor | None] = [None] * len(prompts)
        kv_out: list[KV | None] = [None] * len(prompts)
        dev = loaded.device
        for group in groups:
            cached_len = [hits[i][0] for i in group]
            new = [prompts[i][c:] for i, c in zip(group, cached_len, strict=True)]
            max_c = max(cached_len)
            input_ids, mask, positions = kvops.left_padded_inputs(cached_len, new)
            cache = DynamicCache()
            if max_c:
                past = [hits[i][1] for i in group]
                for layer, (keys, values) in enumerate(
                    kvops.stack_left_padded(past, cached_len, max_c)
                ):
                    cache.update(keys, values, layer)
            out = loaded.model(
                input_ids=input_ids.to(dev),
                attention_mask=mask.to(dev),
                position_ids=positions.to(dev),
                **cache_kwarg(loaded.model, cache),
                use_cache=True,
                logits_to_keep=1,
            )
            last = out.logits[:, -1, :].float()
            valid = mask.bool()
            for r, i in enumerate(group):
                logits[i] = last[r]
                kv_out[i] = kvops.row_kv(cache, r, valid[r].to(dev))
                if self.prefix_cache.max_tokens and cached_len[r] < len(prompts[i]):
                    self.prefix_cache.insert(prompts[i], kv_out[i])  # type: ignore[arg-type]
        stacked = torch.stack([t for t in logits if t is not None])
        return stacked, [kv for kv in kv_out if kv is not None], [h[0] for h in hits]

    def _decode(
        self,
        loaded: LoadedModel,
        rows: list[_Row],
        src_index: list[int],
        logits: torch.Tensor,
        row_kv: list[KV],
        tallies: list[_Tally],
    ) -> None:
        """Sample every row to completion; rows leave the batch as they finish."""
        import torch

        from ttc.backends.decode_kv import CascadeKV, ForkedKV
        from ttc.kernels.sampling import SamplingParams, draw_uniforms, sample, top_logprobs

        dev = loaded.device
        impl = self.config.kernels
        kv: ForkedKV | CascadeKV
        if self._cascade(loaded):
            # Each prompt's KV once, its samples' rows next to each other.
            order = sorted(range(len(rows)), key=lambda r: src_index[r])
            rows = [rows[r] for r in order]
            src_index = [src_index[r] for r in order]
            kv = CascadeKV(row_kv, src_index, dev, impl=impl)
        else:
            # Fork: left-pad the distinct prompts' KV to one length, then gather one row
            # per sample (the prompt KV is copied, never recomputed).
            kv = ForkedKV(row_kv, src_index, dev)
        positions = torch.tensor([len(row.prompt) for row in rows], device=dev)
        logits = logits.index_select(0, torch.tensor(src_index, device=dev))
        # The fused sampling kernel on CUDA, its torch reference elsewhere.
        params = SamplingParams.build([row.sampling for row in rows], dev)

        active = list(rows)
        insert_budget = self.prefix_cache.max_tokens
        while True:
            uniforms = draw_uniforms(params, [row.generator for row in active], dev)
            tokens, token_lps = sample(logits, params, uniforms, impl=impl)  # type: ignore[arg-type]
            token_list = tokens.tolist()
            tokens_generated(len(token_list))  # the live progress line moves per step
            lp_list = token_lps.tolist() if token_lps is not None else None
            top = None
            if params.want_logprobs and params.top_logprobs:
                top = top_logprobs(logits, params.top_logprobs)
            top_rows = _top_rows(top, active)
            keep: list[int] = []
            for i, row in enumerate(active):
                if top_rows is not None:
                    row.top.append(top_rows[i])
                self._advance(row, token_list[i], None if lp_list is None else lp_list[i])
                if row.finish is None:
                    keep.append(i)
                    continue
                tallies[row.req].generations[row.sample] = self._finish(row)
                # A finished branch is what a strategy continues next: keep its KV.
                fed = len(row.prompt) + len(row.tokens) - 1
                if row.finish != "eos" and 0 < fed <= insert_budget:
                    insert_budget -= fed
                    self.prefix_cache.insert((*row.prompt, *row.tokens[:-1]), kv.row_kv(i))
            if not keep:
                return
            if len(keep) < len(active):
                idx = torch.tensor(keep, device=dev)
                active = [active[i] for i in keep]
                positions, tokens = positions[idx], tokens[idx]
                params = params.select(idx)
                kv.keep(idx)
            logits = kv.step(loaded.model, tokens, positions)
            positions = positions + 1

    def _cascade(self, loaded: LoadedModel) -> bool:
        """Whether decoding uses the shared-prefix attention (see `attention`)."""
        from ttc.backends.decode_kv import supports_cascade

        mode = self.config.attention
        if mode == "plain":
            return False
        ok = supports_cascade(loaded.model)
        if mode == "cascade" and not ok:
            raise BackendError(
                "backend.attention=cascade needs a model whose layers all attend to the "
                "whole context through transformers' attention interface",
                hint="use backend.attention=auto or plain for this model",
            )
        return ok and (mode == "cascade" or loaded.device.type == "cuda")

    def _advance(self, row: _Row, token: int, logprob: float | None) -> None:
        row.tokens.append(token)
        if logprob is not None:
            row.logprobs.append(logprob)
        if token in self.eos_token_ids:
            row.finish = "eos"
            return
        if row.sampling.stop:
            text = self._continuation(row.prompt, row.tokens)
            end, matched = -1, None
            for stop in row.sampling.stop:
                at = text.find(stop)
                if at >= 0 and (end < 0 or at + len(stop) < end):
                    end, matched = at + len(stop), stop
            if matched is not None:
                row.text, row.finish, row.stop_reason = text[:end], "stop", matched
                return
        if len(row.tokens) >= row.max_new:
            row.finish = "length"

    def _finish(self, row: _Row) -> Generation:
        ids = tuple(row.tokens)
        logprobs, top = list(row.logprobs), list(row.top)
        if row.finish == "eos":
            row.text = self._continuation(row.prompt, row.tokens[:-1])
        elif row.finish == "length":
            row.text = self._continuation(row.prompt, row.tokens)
        elif row.finish == "stop":  # the stop string may end inside the last token
            tok = self._require().tokenizer
            ids, row.text, kept = agree_at_stop(
                row.tokens,
                row.text,
                decode=lambda t: self._continuation(row.prompt, t),
                encode_piece=lambda t: list(tok(t, add_special_tokens=False)["input_ids"]),
            )
            logprobs = realign(logprobs, kept, len(ids), lambda i: 0.0)
            top = realign(top, kept, len(ids), lambda i: ((ids[i], 0.0),))
        assert row.finish is not None
        return Generation(
            token_ids=ids,
            text=row.text,
            finish_reason=row.finish,
            logprobs=tuple(logprobs) if row.sampling.logprobs else None,
            top_logprobs=tuple(top) if row.sampling.top_logprobs else None,
            stop_reason=row.stop_reason,
        )


def _top_rows(
    top: tuple[torch.Tensor, torch.Tensor] | None, rows: list[_Row]
) -> list[tuple[tuple[int, float], ...]] | None:
    """Each row's top-k `(id, logprob)` pairs, cut to the k it asked for."""
    if top is None:
        return None
    values, ids = top[0].tolist(), top[1].tolist()
    return [
        tuple(
            zip(
                ids[i][: r.sampling.top_logprobs], values[i][: r.sampling.top_logprobs], strict=True
            )
        )
        for i, r in enumerate(rows)
    ]


def cache_kwarg(model: Any, cache: Any) -> dict[str, Any]:
    """The KV cache as the keyword the model's forward takes: `cache` in transformers
    releases that renamed `past_key_values` (the old name logs a deprecation warning
    at every run)."""
    import inspect

    kind = type(model)
    name = _CACHE_KWARG.get(kind)
    if name is None:
        params = inspect.signature(model.forward).parameters
        name = "cache" if "cache" in params else "past_key_values"
        _CACHE_KWARG[kind] = name
    return {name: cache}


_CACHE_KWARG: dict[type, str] = {}

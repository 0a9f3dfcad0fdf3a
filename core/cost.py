"""Cost model: FLOPs, bytes moved and roofline time per token, from the model's shape.

FLOPs. A decoder-only transformer spends, on the token at position `t` (t tokens before
it, so it attends to t + 1 keys including itself),

    2 * N_matmul + 4 * layers * (t + 1) * heads * head_dim          [FLOPs]

where `N_matmul` is the number of weights taking part in matrix multiplies: per layer the
attention projections `hidden * head_dim * (heads + 2 * kv_heads)` (Q, K, V) plus
`heads * head_dim * hidden` (O) and a gated MLP `3 * hidden * intermediate`, plus the LM
head `hidden * vocab` (2 FLOPs per multiply-add). The attention term is QK^T and AV, each
`2 * (t + 1) * heads * head_dim` per layer. Embedding lookups and norms are not counted
(no multiplies worth counting). Without `intermediate` the architecture's parameter count
stands in: `2 * (params - vocab * hidden) + 2 * hidden * vocab` ("2 * params" for a model
with tied embeddings).

Prefill and decode run the same FLOPs per token; they differ in bytes. Kinetics-style
memory term (Sadhukhan et al., "Kinetics: Rethinking Test-Time Scaling Laws", 2025):

- decode reads all weights once per step, shared by the `batch` sequences decoded
  together, plus each sequence's KV cache: `params * bytes_per_param / batch +
  kv_bytes_per_token * t` bytes per decoded token;
- prefill reads the weights once per forward and the KV of the cached context once, and
  writes the KV of the new tokens.

Effective FLOPs (`eflops`) put both on one scale: `FLOPs + I * bytes`, where `I` is the
hardware's arithmetic intensity (peak FLOP/s over memory bandwidth, FLOPs per byte). A
hardware profile also turns FLOPs and bytes into a roofline time estimate,
`max(FLOPs / peak, bytes / bandwidth)` seconds. Budgets can then be set in tokens,
`flops` or `eflops` (see `ttc.budget`).

Every figure this module reports names its unit: method names end in the unit or say it
in their docstring, and `CostModel.report` returns `Figure`s (value and unit).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ttc.types import ModelArchitecture, ModelPass

if TYPE_CHECKING:
    from ttc.interfaces import Backend, RewardModel


@dataclass(frozen=True, slots=True)
class Figure:
    """A number with its unit."""

    value: float
    unit: str

    def __str__(self) -> str:
        return f"{self.value:.4g} {self.unit}"


@dataclass(frozen=True, slots=True)
class HardwareProfile:
    """Peak dense compute and memory bandwidth of one accelerator (or a CPU socket)."""

    name: str
    peak_flops: float
    """FLOP/s, dense, at the dtype the profile names."""
    bandwidth: float
    """Bytes/s of main (HBM or DRAM) memory."""
    dtype: str = "bfloat16"

    @property
    def intensity(self) -> float:
        """Arithmetic intensity of the roofline's ridge point, FLOPs per byte."""
        return self.peak_flops / self.bandwidth

    def seconds(self, flops: float, bytes_moved: float) -> float:
        """Roofline time estimate in seconds: compute- or memory-bound, whichever is slower."""
        return max(flops / self.peak_flops, bytes_moved / self.bandwidth)


HARDWARE: dict[str, HardwareProfile] = {
    # A generic server CPU socket (16 cores, AVX-512 FMA, fp32; DDR5): order of magnitude.
    "cpu": HardwareProfile("cpu", peak_flops=1.0e12, bandwidth=100e9, dtype="float32"),
    # NVIDIA datasheet figures, dense (no sparsity), SXM parts.
    "a100": HardwareProfile("a100", peak_flops=312e12, bandwidth=2.039e12),
    "h100": HardwareProfile("h100", peak_flops=989.4e12, bandwidth=3.35e12),
    "h200": HardwareProfile("h200", peak_flops=989.4e12, bandwidth=4.8e12),
}
"""Built-in hardware profiles, by name."""

DEFAULT_HARDWARE = "h100"
"""The profile effective FLOPs and roofline times use unless told otherwise."""


def hardware(name: str) -> HardwareProfile:
    try:
        return HARDWARE[name.lower()]
    except KeyError:
        raise KeyError(
            f"unknown hardware profile '{name}'; known: {', '.join(sorted(HARDWARE))}"
        ) from None


@dataclass(frozen=True)
class CostModel:
    arch: ModelArchitecture | None
    hw: HardwareProfile = field(default_factory=lambda: HARDWARE[DEFAULT_HARDWARE])

    @property
    def known(self) -> bool:
        return self.arch is not None

    # -- FLOPs ------------------------------------------------------------------------
    def matmul_params(self) -> float:
        """Weights taking part in matrix multiplies per token (count)."""
        a = self.arch
        if a is None:
            return 0.0
        head = a.hidden * a.vocab
        if a.intermediate is None:
            return max(a.params - a.vocab * a.hidden, 0) + head
        d = a.dim_per_head
        attn = a.hidden * d * (a.heads + 2 * a.kv_heads) + a.heads * d * a.hidden
        mlp = 3 * a.hidden * a.intermediate
        return float(a.layers * (attn + mlp) + head)

    def _dense_per_token(self) -> float:
        return 2.0 * self.matmul_params()

    def _attn_coeff(self) -> float:
        a = self.arch
        if a is None:
            return 0.0
        return 4.0 * a.layers * a.heads * a.dim_per_head

    def flops_per_token(self, *, context: int) -> float:
        """FLOPs of one token at position `context` (it sees `context` earlier tokens)."""
        if self.arch is None:
            return 0.0
        return self._dense_per_token() + self._attn_coeff() * (context + 1)

    def forward_flops(self, n_tokens: int, *, context_before: int) -> float:
        """FLOPs of running `n_tokens` consecutive tokens whose first one sees
        `context_before` earlier tokens (from the KV cache)."""
        if n_tokens <= 0 or self.arch is None:
            return 0.0
        k, c0 = n_tokens, context_before
        # token i (0-based) attends to c0 + i + 1 keys: sum = k * c0 + k (k + 1) / 2
        keys = k * c0 + k * (k + 1) / 2.0
        return k * self._dense_per_token() + self._attn_coeff() * keys

    def prefill_flops(self, n_tokens: int, *, context_before: int = 0) -> float:
        """FLOPs of prefilling `n_tokens` prompt tokens on top of `context_before` cached."""
        return self.forward_flops(n_tokens, context_before=context_before)

    def decode_flops(self, n_tokens: int, *, context_before: int) -> float:
        """FLOPs of decoding `n_tokens` tokens one by one after `context_before` tokens."""
        return self.forward_flops(n_tokens, context_before=context_before)

    def generation_flops(
        self,
        *,
        prompt_len: int,
        computed_prompt: int,
        completion_lens: Sequence[int],
        prefills: int = 1,
    ) -> float:
        """FLOPs of one request: `computed_prompt` uncached prompt tokens are prefilled,
        then every sample decodes its completion on top of the full prompt.

        `prefills` is how many sequences computed those tokens: 1 where the samples share
        one prefill, `n` where every sample is its own engine sequence
        (`Backend.prompt_tokens_per_sample`; `computed_prompt` may then reach
        `n * prompt_len`). The computed tokens are spread evenly over the prefills, each
        on top of the rest of its prompt from the cache (never a negative context)."""
        prefills = max(prefills, 1)
        share, extra = divmod(max(computed_prompt, 0), prefills)
        flops = 0.0
        for size, count in ((share + 1, extra), (share, prefills - extra)):
            tokens = min(size, prompt_len)
            if count and tokens > 0:
                flops += count * self.prefill_flops(tokens, context_before=prompt_len - tokens)
        for n in completion_lens:
            flops += self.decode_flops(n, context_before=prompt_len)
        return flops

    def pass_flops(self, p: ModelPass) -> float:
        """FLOPs of one model pass (prefill of its uncached prompt, then its decode)."""
        return self.generation_flops(
            prompt_len=p.prompt,
            computed_prompt=p.prompt - p.cached,
            completion_lens=[p.decode] if p.decode else [],
        )

    def pass_bytes(self, p: ModelPass) -> float:
        """Bytes one model pass moves (its prefill forward, then its decode alone)."""
        computed = p.prompt - p.cached
        return self.prefill_bytes(computed, context_before=p.cached) + self.decode_bytes(
            p.decode, context_before=p.prompt
        )

    # -- bytes ------------------------------------------------------------------------
    def weight_bytes(self) -> float:
        """Bytes of all weights."""
        a = self.arch
        return 0.0 if a is None else a.params * a.bytes_per_param

    def kv_bytes_per_token(self) -> float:
        """Bytes of K and V one token keeps in the cache (all layers)."""
        a = self.arch
        if a is None:
            return 0.0
        return 2.0 * a.layers * a.kv_heads * a.dim_per_head * a.bytes_per_param

    def decode_bytes(self, n_tokens: int, *, context_before: int, batch: int = 1) -> float:
        """Bytes read to decode `n_tokens` tokens one by one: the weights (shared by the
        `batch` sequences decoded together) plus the KV cache of the context."""
        a = self.arch
        if a is None or n_tokens <= 0:
            return 0.0
        weights = self.weight_bytes() / max(batch, 1)
        positions = n_tokens * context_before + n_tokens * (n_tokens - 1) / 2.0
        return n_tokens * weights + self.kv_bytes_per_token() * positions

    def prefill_bytes(self, n_tokens: int, *, context_before: int = 0) -> float:
        """Bytes moved by one prefill forward: weights read once, cached KV read once, the
        new tokens' KV written."""
        if self.arch is None or n_tokens <= 0:
            return 0.0
        return self.weight_bytes() + self.kv_bytes_per_token() * (context_before + n_tokens)

    # -- effective FLOPs and time -----------------------------------------------------
    def eflops(self, flops: float, bytes_moved: float) -> float:
        """Kinetics effective FLOPs: `flops + intensity * bytes` (eFLOPs)."""
        return flops + self.hw.intensity * bytes_moved

    def seconds(self, flops: float, bytes_moved: float) -> float:
        """Roofline time estimate on this model's hardware profile, seconds."""
        return self.hw.seconds(flops, bytes_moved)

    def report(self, *, prompt_len: int, completion_len: int, batch: int = 1) -> dict[str, Figure]:
        """The cost of one sequence (prefill `prompt_len`, decode `completion_len`), every
        figure with its unit."""
        pf = self.prefill_flops(prompt_len)
        pb = self.prefill_bytes(prompt_len)
        df = self.decode_flops(completion_len, context_before=prompt_len)
        db = self.decode_bytes(completion_len, context_before=prompt_len, batch=batch)
        return {
            "prefill_flops": Figure(pf, "FLOPs"),
            "prefill_bytes": Figure(pb, "bytes"),
            "prefill_seconds": Figure(self.seconds(pf, pb), "s"),
            "decode_flops": Figure(df, "FLOPs"),
            "decode_bytes": Figure(db, "bytes"),
            "decode_seconds": Figure(self.seconds(df, db), "s"),
            "flops_per_token": Figure(self.flops_per_token(context=prompt_len), "FLOPs/token"),
            "kv_bytes_per_token": Figure(self.kv_bytes_per_token(), "bytes/token"),
            "eflops": Figure(self.eflops(pf + df, pb + db), "eFLOPs"),
            "intensity": Figure(self.hw.intensity, f"FLOPs/byte ({self.hw.name})"),
        }


def check_measurable(
    limits: dict[str, float | None],
    *,
    backend: Backend,
    reward: RewardModel | None,
) -> None:
    """Fail at run start, in one line, when a budget enforces a unit this configuration
    cannot measure (it would otherwise be silently ignored or overspent): `flops` and
    `eflops` need the policy's shape and, where the reward model computes, its shape;
    `reward_tokens`, `flops` and `eflops` need a reward model that bounds its calls
    (`RewardModel.worst_case`). Call it after the backend and reward model started."""
    from ttc.errors import ConfigError

    enforced = [unit for unit, limit in limits.items() if limit is not None]
    for unit in ("flops", "eflops"):
        if unit not in enforced:
            continue
        if backend.architecture is None:
            fix = (
                "set backend.tokenizer=<the served model's spec> (its config.json gives the shape)"
                if hasattr(backend.config, "tokenizer")
                else "use a backend that reports its model's architecture"
            )
            raise ConfigError(
                f"budget.{unit} is set but backend '{backend.name}' does not know its model's "
                f"shape, so its FLOPs cannot be counted; {fix}, or remove budget.{unit}",
                key=f"budget.{unit}",
            )
    if reward is None:
        return
    bound = reward.worst_case(())
    for unit in ("reward_tokens", "flops", "eflops"):
        if unit not in enforced:
            continue
        if bound is None:
            raise ConfigError(
                f"budget.{unit} is set but reward '{reward.name}' cannot bound what a score "
                f"call spends (RewardModel.worst_case); remove budget.{unit}",
                key=f"budget.{unit}",
            )
        if unit != "reward_tokens" and reward.architecture is None and _computes(reward):
            raise ConfigError(
                f"budget.{unit} is set but reward '{reward.name}' does not know its model's "
                f"shape, so its FLOPs cannot be counted; remove budget.{unit}",
                key=f"budget.{unit}",
            )


def _computes(reward: RewardModel) -> bool:
    """Whether a reward model runs a model (its worst case for one step is not empty)."""
    from ttc.types import Problem, ScoreRequest

    probe = ScoreRequest(problem=Problem(id="probe", prompt="1 + 1?"), prompt="", steps=("2",))
    try:
        return bool(reward.worst_case([probe]))
    except Exception:
        return True

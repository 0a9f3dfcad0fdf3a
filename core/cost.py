"""Cost model: FLOPs and bytes moved per token, from the model's architecture.

First version (refined by the allocators work): a decoder-only transformer spends, for the
token at context position `t` (t tokens before it),

    2 * P_dense + 2 * hidden * vocab + 4 * layers * t * (heads * head_dim)

FLOPs in its forward pass: the dense matmuls (non-embedding parameters, 2 FLOPs per
multiply-add), the LM head, and the attention scores and weighted sum over the context
(QK^T and AV, each 2 * t * d_attn per layer). Prefill and decode use the same formula;
they differ in how many tokens share one read of the weights, which the memory term
(Kinetics-style: bytes of weights plus KV cache read per decoded token) captures.
"""

from __future__ import annotations

from dataclasses import dataclass

from ttc.types import ModelArchitecture


@dataclass(frozen=True)
class CostModel:
    arch: ModelArchitecture | None

    @property
    def known(self) -> bool:
        return self.arch is not None

    def _dense_per_token(self) -> float:
        a = self.arch
        if a is None:
            return 0.0
        embedding = a.vocab * a.hidden
        dense = max(a.params - embedding, 0)
        return 2.0 * dense + 2.0 * a.hidden * a.vocab

    def _attn_coeff(self) -> float:
        a = self.arch
        if a is None:
            return 0.0
        return 4.0 * a.layers * a.heads * a.dim_per_head

    def forward_flops(self, n_tokens: int, *, context_before: int) -> float:
        """FLOPs of running `n_tokens` consecutive tokens whose first one sees
        `context_before` earlier tokens (from the KV cache)."""
        if n_tokens <= 0 or self.arch is None:
            return 0.0
        k, c0 = n_tokens, context_before
        # sum_{i=0}^{k-1} (c0 + i) attended positions
        positions = k * c0 + k * (k - 1) / 2.0
        return k * self._dense_per_token() + self._attn_coeff() * positions

    def generation_flops(
        self, *, prompt_len: int, computed_prompt: int, completion_lens: list[int]
    ) -> float:
        """FLOPs of one request: the computed (uncached) suffix of the prompt is prefilled
        once, then every sample decodes its completion on top of the full prompt."""
        flops = self.forward_flops(computed_prompt, context_before=prompt_len - computed_prompt)
        for n in completion_lens:
            flops += self.forward_flops(n, context_before=prompt_len)
        return flops

    def kv_bytes_per_token(self) -> float:
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
        weights = a.params * a.bytes_per_param / max(batch, 1)
        positions = n_tokens * context_before + n_tokens * (n_tokens - 1) / 2.0
        return n_tokens * weights + self.kv_bytes_per_token() * positions

"""The hf backend's decode-time KV, in one of two layouts.

- `ForkedKV`: a transformers `DynamicCache` with one left-padded row per sample; each
  distinct prompt's KV is copied into every one of its samples' rows (KV forking) and
  ordinary attention reads it once per row.
- `CascadeKV`: each distinct prompt's KV held once, each row's generated tokens on their
  own; attention runs through `ttc.kernels.attention.cascade_attention` (registered with
  transformers' attention interface as `ttc_cascade`), which reads a shared prompt once
  for all of its samples. Rows must come grouped by prompt (sorted by `src`).

Both offer the three operations the decode loop needs: `step` (one forward of the next
tokens, returning last-position logits), `keep` (drop finished rows) and `row_kv` (one
row's whole KV, for the prefix cache).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ttc.kernels import kv as kvops
from ttc.kernels.attention import KVLevel, cascade_attention
from ttc.kernels.kv import KV

ATTENTION_NAME = "ttc_cascade"


def supports_cascade(model: Any) -> bool:
    """Whether `model` can decode with `CascadeKV`: it takes attention functions from
    transformers' interface, and every layer attends to the whole context with plain
    softmax (no sliding window, no logit soft-capping)."""
    if not getattr(model, "_supports_attention_backend", False):
        return False
    cfg = model.config.get_text_config()
    if getattr(cfg, "sliding_window", None) is not None:
        return False
    if any(t != "full_attention" for t in getattr(cfg, "layer_types", None) or ()):
        return False
    return getattr(cfg, "attn_logit_softcapping", None) is None


class ForkedKV:
    """Prompt KV forked into one left-padded row per sample of a `DynamicCache`."""

    def __init__(self, prompt_kv: Sequence[KV], src: Sequence[int], device: Any) -> None:
        from transformers import DynamicCache

        forked, self.mask = kvops.fork(prompt_kv, src, device)
        self.cache = DynamicCache()
        for layer, (keys, values) in enumerate(forked):
            self.cache.update(keys, values, layer)

    def row_kv(self, i: int) -> KV:
        return kvops.row_kv(self.cache, i, self.mask[i].bool())

    def keep(self, idx: torch.Tensor) -> None:
        self.mask = self.mask[idx]
        # Columns that are padding for every remaining row can go.
        first = int(self.mask.any(0).nonzero()[0])
        kvops.keep_rows(self.cache, idx, first)
        self.mask = self.mask[:, first:]

    def step(self, model: Any, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        from ttc.backends.hf import cache_kwarg

        self.mask = torch.cat([self.mask, self.mask.new_ones(len(tokens), 1)], dim=1)
        out = model(
            input_ids=tokens.unsqueeze(1),
            attention_mask=self.mask,
            position_ids=positions.unsqueeze(1),
            **cache_kwarg(model, self.cache),
            use_cache=True,
        )
        return out.logits[:, -1, :].float()


class CascadeKV:
    """Level 0: each distinct prompt's KV once (right-padded, `[prompts, kv_heads, width,
    head_dim]` per layer); level 1: each row's generated tokens, as transformers hands
    them to the cache. Passed to the model as its cache; the attention function reads
    both levels."""

    def __init__(
        self, prompt_kv: Sequence[KV], src: Sequence[int], device: Any, *, impl: str = "auto"
    ) -> None:
        if list(src) != sorted(src):
            raise ValueError("CascadeKV needs the rows grouped by prompt (src sorted)")
        self.impl = impl
        self.lengths = [kv[0][0].shape[2] for kv in prompt_kv]
        width = max(self.lengths)
        self.prefix: KV = []
        for layer in range(len(prompt_kv[0])):
            k0, v0 = prompt_kv[0][layer]
            keys = k0.new_zeros(len(prompt_kv), k0.shape[1], width, k0.shape[3])
            values = v0.new_zeros(len(prompt_kv), v0.shape[1], width, v0.shape[3])
            for g, kv in enumerate(prompt_kv):
                keys[g, :, : self.lengths[g]] = kv[layer][0][0]
                values[g, :, : self.lengths[g]] = kv[layer][1][0]
            self.prefix.append((keys, values))
        self.device = device
        self.prefix_lengths = torch.tensor(self.lengths, device=device)
        self.src = torch.tensor(list(src), device=device)
        self.offsets = self._offsets()
        self.suffix: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(self.prefix)

    def _offsets(self) -> torch.Tensor:
        counts = torch.bincount(self.src, minlength=len(self.lengths))
        return torch.cat([counts.new_zeros(1), counts.cumsum(0)])

    # -- what transformers calls on a cache ------------------------------------------------
    def get_seq_length(self, layer_idx: int = 0) -> int:
        done = self.suffix[layer_idx]
        return max(self.lengths) + (0 if done is None else done[0].shape[2])

    def update(
        self, keys: torch.Tensor, values: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        done = self.suffix[layer_idx]
        if done is not None:
            keys, values = torch.cat([done[0], keys], 2), torch.cat([done[1], values], 2)
        self.suffix[layer_idx] = (keys, values)
        return keys, values

    # -- the decode loop's operations ---------------------------------------------------
    def row_kv(self, i: int) -> KV:
        g = int(self.src[i])
        n = self.lengths[g]
        out: KV = []
        for (pk, pv), done in zip(self.prefix, self.suffix, strict=True):
            keys, values = pk[g : g + 1, :, :n], pv[g : g + 1, :, :n]
            if done is not None:
                keys = torch.cat([keys, done[0][i : i + 1]], 2)
                values = torch.cat([values, done[1][i : i + 1]], 2)
            out.append((keys.clone(), values.clone()))
        return out

    def keep(self, idx: torch.Tensor) -> None:
        self.src = self.src[idx]
        self.offsets = self._offsets()
        self.suffix = [None if s is None else (s[0][idx], s[1][idx]) for s in self.suffix]

    def step(self, model: Any, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        from ttc.backends.hf import cache_kwarg

        register_attention()
        cfg = model.config
        before = cfg._attn_implementation
        cfg._attn_implementation = ATTENTION_NAME
        try:
            out = model(
                input_ids=tokens.unsqueeze(1),
                position_ids=positions.unsqueeze(1),
                **cache_kwarg(model, self),
                use_cache=True,
                ttc_cascade=self,
            )
        finally:
            cfg._attn_implementation = before
        return out.logits[:, -1, :].float()

    def attend(
        self, layer: int, query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
        scale: float | None,
    ) -> torch.Tensor:  # fmt: skip
        """Attention of one decode token per row (`query` `[rows, q_heads, 1, dim]`) over
        its prompt's KV and its own generated tokens' (`keys`, `values`)."""
        pk, pv = self.prefix[layer]
        rows, generated = keys.shape[0], keys.shape[2]
        own = torch.full((rows,), generated, device=keys.device)
        levels = [
            KVLevel(pk, pv, self.prefix_lengths, self.offsets),
            KVLevel.per_row(keys, values, own),
        ]
        return cascade_attention(query[:, :, 0], levels, scale=scale, impl=self.impl)  # type: ignore[arg-type]


def _cascade_attention_forward(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: Any,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature; output `[rows, 1, q_heads, dim]`."""
    kv: CascadeKV = kwargs["ttc_cascade"]
    if query.shape[2] != 1:
        raise ValueError("the ttc_cascade attention decodes one token per row")
    out = kv.attend(module.layer_idx, query, key, value, scaling)
    return out.unsqueeze(1), None


_registered = False


def register_attention() -> None:
    """Register `ttc_cascade` with transformers' attention interface (once)."""
    global _registered
    if not _registered:
        from transformers import AttentionInterface

        AttentionInterface.register(ATTENTION_NAME, _cascade_attention_forward)
        _registered = True

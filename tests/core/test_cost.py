"""The cost model against hand computation for Llama-3.2-1B (16 layers, hidden 2048, 32
heads of 64, 8 KV heads, MLP 8192, vocab 128256, tied embeddings, bf16)."""

from __future__ import annotations

import pytest

from ttc.budget import Budget, Ledger
from ttc.cost import HARDWARE, CostModel, Figure
from ttc.types import ModelArchitecture

# Hand computation. Per layer: Q and O 2048*2048 each, K and V 2048*512 each (8 KV heads
# of 64), MLP 3*2048*8192; norms 2*2048. Embedding 128256*2048 (tied: counted once).
ATTN = 2 * 2048 * 2048 + 2 * 2048 * 512  # 10,485,760
MLP = 3 * 2048 * 8192  # 50,331,648
EMBED = 128256 * 2048  # 262,668,288
PARAMS = 16 * (ATTN + MLP + 2 * 2048) + 2048 + EMBED  # 1,235,814,400
MATMUL = 16 * (ATTN + MLP) + EMBED  # LM head = the tied embedding: 1,235,746,816
ATTN_PER_KEY = 4 * 16 * 32 * 64  # QK^T and AV, 2 FLOPs each, per layer: 131,072
KV_PER_TOKEN = 2 * 16 * 8 * 64 * 2  # K and V, 16 layers, 8 heads of 64, 2 bytes: 32,768

LLAMA_1B = ModelArchitecture(
    params=PARAMS, layers=16, hidden=2048, heads=32, kv_heads=8, vocab=128256,
    head_dim=64, intermediate=8192, bytes_per_param=2.0,
)  # fmt: skip


def test_the_parameter_count_from_the_config_matches() -> None:
    transformers = pytest.importorskip("transformers")
    from ttc.backends.models import architecture_of

    config = transformers.LlamaConfig(
        hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
        num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
        head_dim=64, tie_word_embeddings=True,
    )  # fmt: skip
    arch = architecture_of(config)
    assert arch.params == PARAMS == 1_235_814_400


def test_flops_per_token_and_prefill_match_hand_computation() -> None:
    cost = CostModel(LLAMA_1B)
    assert MATMUL == 1_235_746_816
    assert cost.matmul_params() == MATMUL
    # the first token sees only itself; the token at position 1000 attends to 1001 keys
    assert cost.flops_per_token(context=0) == 2 * MATMUL + ATTN_PER_KEY
    assert cost.flops_per_token(context=1000) == 2 * MATMUL + ATTN_PER_KEY * 1001
    # prefill of 100 tokens: 100 * 2N + attention over 1 + 2 + ... + 100 keys
    assert cost.prefill_flops(100) == 100 * 2 * MATMUL + ATTN_PER_KEY * 5050
    assert cost.prefill_flops(100) == 247_811_276_800
    # decoding 10 tokens after 100: keys 101 .. 110
    assert cost.decode_flops(10, context_before=100) == 10 * 2 * MATMUL + ATTN_PER_KEY * 1055
    # one request = computed prompt suffix + each sample's decode
    assert cost.generation_flops(
        prompt_len=100, computed_prompt=40, completion_lens=[10, 10]
    ) == cost.prefill_flops(40, context_before=60) + 2 * cost.decode_flops(10, context_before=100)


def test_memory_term_and_roofline_match_hand_computation() -> None:
    cost = CostModel(LLAMA_1B, HARDWARE["h100"])
    assert cost.kv_bytes_per_token() == KV_PER_TOKEN == 32_768
    weights = PARAMS * 2  # 2,471,628,800 bytes
    # one token decoded after 1000: all weights + the KV of 1000 tokens
    assert cost.decode_bytes(1, context_before=1000) == weights + KV_PER_TOKEN * 1000
    # 8 sequences decoded together share one read of the weights
    assert cost.decode_bytes(1, context_before=1000, batch=8) == weights / 8 + KV_PER_TOKEN * 1000
    # decode is memory-bound on an H100: time = bytes / 3.35 TB/s
    flops = cost.decode_flops(1, context_before=1000)
    moved = cost.decode_bytes(1, context_before=1000)
    assert cost.seconds(flops, moved) == pytest.approx(moved / 3.35e12)
    assert cost.seconds(flops, moved) == pytest.approx(7.476e-4, rel=1e-3)
    # a 4096-token prefill is compute-bound: time = FLOPs / 989.4 TFLOP/s
    pf, pb = cost.prefill_flops(4096), cost.prefill_bytes(4096)
    assert cost.seconds(pf, pb) == pytest.approx(pf / 989.4e12)
    assert cost.eflops(flops, moved) == flops + (989.4e12 / 3.35e12) * moved


def test_every_reported_figure_has_a_unit() -> None:
    report = CostModel(LLAMA_1B, HARDWARE["a100"]).report(prompt_len=100, completion_len=10)
    assert all(isinstance(f, Figure) and f.unit for f in report.values())
    assert report["prefill_flops"].unit == "FLOPs" and report["decode_bytes"].unit == "bytes"
    assert report["decode_seconds"].unit == "s"
    assert str(Figure(2.5e9, "FLOPs")) == "2.5e+09 FLOPs"
    assert {"cpu", "a100", "h100", "h200"} <= set(HARDWARE)


def test_budgets_can_be_set_in_effective_flops() -> None:
    cost = CostModel(LLAMA_1B)
    one = cost.eflops(
        cost.prefill_flops(100) + cost.decode_flops(1, context_before=100),
        cost.prefill_bytes(100) + cost.decode_bytes(1, context_before=100),
    )
    ledger = Ledger(Budget(eflops=one * 10.5), cost)
    allowed = ledger.authorize_generate([100], 1, 1000).max_tokens
    assert 1 <= allowed < 1000
    ledger2 = Ledger(Budget(eflops=one / 2), cost)
    with pytest.raises(Exception, match="eflops"):
        ledger2.authorize_generate([100], 1, 10)

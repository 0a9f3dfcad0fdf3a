#!/usr/bin/env bash
# The real sweep of docs/analysis.md ("Real sweep"): SmolLM2-135M-Instruct (hf backend,
# CPU) on `arith` levels 1-2, every built-in strategy at 4 samples' worth of compute and
# the sampling strategies plus particle filtering at 1 and 2 (and, given the time, 8),
# into one store, then the analysis report.
#
#   bash scripts/sweep_arith.sh all                  # every stage, then the report
#   bash scripts/sweep_arith.sh b4 | b4-steps | b2 | b1 | b8 | new | cascade | report
#
# STORE (default sqlite:///runs/arith_sweep.db), PROBLEMS (64) and OUT (runs/arith_sweep)
# change where and how much. Each stage is one `ttc run` (Hydra multirun where it sweeps),
# so the stages can run one at a time on a shared machine.
set -euo pipefail

STORE=${STORE:-sqlite:///runs/arith_sweep.db}
PROBLEMS=${PROBLEMS:-64}
OUT=${OUT:-runs/arith_sweep}
SAMPLE_TOKENS=32 # tokens of one whole sample: answers are short (see the instruction)
STEP_TOKENS=8    # step-level searches: steps of 8 tokens, 4 steps make one sample
# Torch's default of one thread per core spins against other processes on a busy machine;
# one thread was 3-4x faster there.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

COMMON=(
  task=arith "task.n_problems=$PROBLEMS" "task.levels=[1,2]"
  "task.instruction='Give only the final answer, within \\boxed{}.'"
  backend=hf backend.model=smollm2-135m backend.max_batch_sequences=512
  reward=self_certainty
  run.concurrency=64 scheduler.max_batch_size=512 run.progress=false
  "store.url=$STORE"
)
SAMPLE=(strategy.temperature=0.7 "strategy.max_tokens=$SAMPLE_TOKENS")
STEPS=(strategy.temperature=0.7 "strategy.step_tokens=$STEP_TOKENS" "strategy.step_delimiter=''")
MAX_STEPS=$((SAMPLE_TOKENS / STEP_TOKENS))

sampling() { # $1: samples per problem
  ttc run -m strategy=best_of_n,self_consistency,best_of_majority "strategy.n=$1" \
    "${SAMPLE[@]}" "budget.tokens=$(($1 * SAMPLE_TOKENS))" "${COMMON[@]}"
}

particles() { # $1: particles (each grows one sample's worth of steps)
  ttc run strategy=particle_filter "strategy.particles=$1" "strategy.max_steps=$MAX_STEPS" \
    "${STEPS[@]}" "budget.tokens=$(($1 * SAMPLE_TOKENS))" "${COMMON[@]}"
}

steps4() { # the other strategies at 4 samples' worth (sized as benchmarks/strategies.py does)
  local budget=$((4 * SAMPLE_TOKENS))
  ttc run strategy=adaptive_consistency strategy.max_samples=4 "${SAMPLE[@]}" \
    "budget.tokens=$budget" "${COMMON[@]}"
  ttc run strategy=beam_search strategy.beam_width=2 strategy.expansions=2 \
    "strategy.max_steps=$MAX_STEPS" "${STEPS[@]}" "budget.tokens=$budget" "${COMMON[@]}"
  ttc run strategy=dvts strategy.n=4 strategy.width=2 "strategy.max_steps=$MAX_STEPS" \
    "${STEPS[@]}" "budget.tokens=$budget" "${COMMON[@]}"
  ttc run strategy=particle_gibbs strategy.particles=2 strategy.iterations=2 \
    "strategy.max_steps=$MAX_STEPS" "${STEPS[@]}" "budget.tokens=$budget" "${COMMON[@]}"
  ttc run strategy=a_star strategy.expansions=2 "strategy.max_depth=$MAX_STEPS" \
    strategy.temperature=0.7 "strategy.step_tokens=$STEP_TOKENS" \
    "strategy.step_delimiter=''" "budget.tokens=$budget" "${COMMON[@]}"
}

newer() { # $1: samples' worth: REBASE, revision chains, Solve-Detect-Verify, the cascade
  local budget=$(($1 * SAMPLE_TOKENS))
  ttc run strategy=rebase "strategy.width=$1" "strategy.max_steps=$MAX_STEPS" "${STEPS[@]}" \
    "budget.tokens=$budget" "${COMMON[@]}"
  ttc run strategy=revision "strategy.attempts=$1" "strategy.chain_length=$((1 < $1 ? 2 : 1))" \
    "${SAMPLE[@]}" "budget.tokens=$budget" "${COMMON[@]}"
  ttc run strategy=solve_detect_verify "strategy.rounds=$(($1 > 1 ? $1 / 2 : 1))" \
    "strategy.max_steps=$MAX_STEPS" "${STEPS[@]}" "budget.tokens=$budget" "${COMMON[@]}"
}

cascade() { # $1: samples' worth; gemma3-270m above smollm2-135m at THRESHOLDS (nats of
  # the rolling top-20 entropy). gemma3-270m is a base model: two worked examples, and its
  # answer ends where it would start a question of its own. With the examples SmolLM2 is
  # sure of itself: its chunks' entropy peaks have a median of 0.2 nats and stay below
  # 1.5 (without them, about 2), so 1.5 and above leave the small model alone.
  ttc run -m strategy=cascade "strategy.threshold=${THRESHOLDS:-0.1,0.25,0.6}" \
    "strategy.n=$(($1 > 1 ? $1 / 2 : 1))" strategy.large_model=gemma3-270m \
    strategy.chunk_tokens=8 strategy.large_tokens=8 'strategy.stop=["Question:"]' \
    task.few_shot=2 "${SAMPLE[@]}" "budget.tokens=$(($1 * SAMPLE_TOKENS))" "${COMMON[@]}"
}

report() {
  mkdir -p "$OUT"
  ttc analyze runs --store "$STORE" --task arith
  ttc analyze fits --store "$STORE" --task arith
  ttc analyze frontier --store "$STORE" --task arith --unit tokens
  ttc analyze policy --store "$STORE" --task arith --measure agreement --unit tokens \
    -o "$OUT/policy.yaml"
  ttc analyze plots --store "$STORE" --task arith --out "$OUT"
  ttc analyze report --store "$STORE" --task arith -o "$OUT/report.html"
}

case "${1:-all}" in
  b4) sampling 4 && particles 4 ;;
  b4-steps) steps4 ;;
  b2) sampling 2 && particles 2 ;;
  b1) sampling 1 && particles 1 ;;
  b8) sampling 8 && particles 8 ;;
  new) newer 2 && newer 4 ;;
  cascade) cascade 2 && cascade 4 ;;
  report) report ;;
  all) sampling 4 && particles 4 && steps4 && sampling 2 && particles 2 && sampling 1 \
    && particles 1 && newer 2 && newer 4 && cascade 2 && cascade 4 && report ;;
  *) echo "unknown stage '$1'; use all, b4, b4-steps, b2, b1, b8, new, cascade or report" >&2 && exit 2 ;;
esac

# flow_rbf.py: rollover budget forcing on the digits flow model, 100 NFEs per digit
from ttc.flow.budget import FlowBudget
from ttc.flow.model import DEFAULT_SPEC, FlowModelSpec, TorchVelocity, load_or_train
from ttc.flow.registry import build
from ttc.flow.reward import DigitJudge, DigitReward
from ttc.flow.runner import FlowResult, digit_problems, solve_flow


def solve(spec: FlowModelSpec = DEFAULT_SPEC, cache: str | None = None) -> list[FlowResult]:
    return solve_flow(
        build("strategy", "rbf", nfes_per_sample=10),
        digit_problems(range(10)),
        model=TorchVelocity(load_or_train(spec, cache=cache)),  # trained on first use
        reward=DigitReward(),
        judge=DigitJudge(),
        allocator=build("allocator", "rollover", FlowBudget(nfes=100)),
    )


if __name__ == "__main__":
    for r in solve():
        print(r.problem.id, f"reward {r.reward:.3f}", "success" if r.success else "miss")

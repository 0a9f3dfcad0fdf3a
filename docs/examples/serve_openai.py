import os

from openai import OpenAI

client = OpenAI(
    base_url=os.environ.get("TTC_SERVE_URL", "http://127.0.0.1:8000/v1"),
    api_key=os.environ.get("TTC_SERVE_KEY", "none"),  # any string when serve.api_keys_env is unset
)

# The model name chooses the strategy; extra_body["ttc"] sets its parameters and the budget.
resp = client.chat.completions.create(
    model="ttc/best_of_n",
    messages=[{"role": "user", "content": "What is 17 * 24? answer=408"}],
    temperature=0.7,
    extra_body={"ttc": {"n": 8, "budget": {"tokens": 4000}}},
)
print(resp.choices[0].message.content)
print(resp.usage.completion_tokens, "tokens over all samples")
ttc = resp.usage.ttc  # the ledger, and where the search is stored
print(ttc["samples"], "samples,", ttc["reward_calls"], "reward calls,", f"{ttc['flops']:.3g} FLOPs")
print("stored as problem", ttc["problem_id"], "of run", ttc["run_id"])

# Another strategy, named in the ttc field (it wins over the model name); streamed.
stream = client.chat.completions.create(
    model="ttc",
    messages=[{"role": "user", "content": "What is 6 * 7? answer=42"}],
    stream=True,
    extra_body={"ttc": {"strategy": "beam_search", "beam_width": 4, "budget": {"samples": 32}}},
)
print("".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices))

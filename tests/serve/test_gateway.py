"""`ttc serve` through the real `openai` client, on the scripted test backend: chat and
completions, per-request strategy and budget, usage against the store, streaming, stop
strings, and the 400s a bad `ttc` field gets."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

openai = pytest.importorskip("openai")

from ttc.serve.app import chat_problem  # noqa: E402
from ttc.store import Store  # noqa: E402

from gateway_harness import Gateway, gateway  # noqa: E402

QUESTION = [{"role": "user", "content": "What is 6 * 7? answer=42"}]


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    url = f"sqlite:///{tmp_path_factory.mktemp('serve') / 'ttc.db'}"
    with gateway(url, "serve.max_budget.tokens=5000", "serve.max_budget.samples=32") as g:
        yield g


def stored(gw: Gateway, problem_id: str) -> dict:
    store = Store(gw.store_url)
    try:
        rows = [r for r in store.results(gw.run.run_id or "") if r["problem_id"] == problem_id]
        assert len(rows) == 1, f"problem {problem_id} stored {len(rows)} times"
        row = rows[0]
        row["nodes"] = store.nodes(row["run_id"], problem_id)
        row["calls"] = store.calls(row["run_id"], problem_id)
        return row
    finally:
        store.close()


def test_chat_answers_with_the_chosen_solution_and_usage_is_what_the_store_holds(
    gw: Gateway,
) -> None:
    client = gw.client()
    resp = client.chat.completions.create(
        model="ttc/best_of_n", messages=QUESTION, extra_body={"ttc": {"n": 4}}
    )
    text = resp.choices[0].message.content
    assert resp.choices[0].finish_reason == "stop"
    assert "\\boxed{" in text
    ttc = resp.usage.ttc
    assert ttc["strategy"] == "best_of_n" and ttc["samples"] == 4
    assert ttc["run_id"] == gw.run.run_id
    row = stored(gw, ttc["problem_id"])
    # usage is what was spent over every sample, not the chosen one's tokens
    assert resp.usage.completion_tokens == row["tokens"] == sum(n["n_tokens"] for n in row["nodes"])
    assert resp.usage.completion_tokens > len(text)
    assert resp.usage.prompt_tokens == row["prompt_tokens"] > 0
    assert resp.usage.total_tokens == row["tokens"] + row["prompt_tokens"]
    assert ttc["reward_calls"] == row["reward_calls"] >= 1
    assert ttc["flops"] == pytest.approx(row["flops"]) and row["flops"] > 0
    assert row["samples"] == 4 and len(row["nodes"]) == 5  # the root and four samples
    assert sum(c["completion_tokens"] for c in row["calls"]) == row["tokens"]
    chosen = [n for n in row["nodes"] if n["selected"] and n["text"] == text]
    assert chosen, "the response text is a selected node of the stored tree"
    assert row["trace"]["serve"]["params"] == {"n": 4}


def test_completions_endpoint_and_model_name_choose_the_strategy(gw: Gateway) -> None:
    client = gw.client()
    resp = client.completions.create(
        model="ttc/self_consistency", prompt="Compute it. answer=17", n=3, temperature=0.7
    )
    assert "\\boxed{" in resp.choices[0].text
    ttc = resp.usage.ttc
    assert ttc["strategy"] == "self_consistency"
    assert ttc["params"] == {"n": 3, "temperature": 0.7}
    row = stored(gw, ttc["problem_id"])
    assert row["samples"] == 3 == ttc["samples"]
    assert resp.usage.completion_tokens == row["tokens"]


def test_a_completion_prompt_reaches_the_backend_as_raw_text(gw: Gateway) -> None:
    """`/v1/completions` sends its prompt as it stands (no chat template, no system
    prompt), as OpenAI-compatible servers do; a chat is still rendered. The scripted
    backend reads one token per character, so the prompt tokens of each generate call
    are the length of what it was sent."""
    raw = "Question: what is 5 + 12? answer=17\nSolution:\n"
    client = gw.client()
    done = client.completions.create(model="ttc/self_consistency", prompt=raw, n=2)
    assert "\\boxed{" in done.choices[0].text  # the script found where its solution starts
    calls = stored(gw, done.usage.ttc["problem_id"])["calls"]
    assert calls and all(c["prompt_tokens"] == len(raw) for c in calls), calls
    messages = [{"role": "user", "content": raw}]
    chat = client.chat.completions.create(model="ttc/self_consistency", messages=messages, n=2)
    rendered = gw.run.backend.render(chat_problem({"messages": messages}, "x"))
    assert len(rendered) > len(raw)
    calls = stored(gw, chat.usage.ttc["problem_id"])["calls"]
    assert all(c["prompt_tokens"] == len(rendered) for c in calls), calls


def test_ttc_field_wins_over_the_model_name_and_sets_the_budget(gw: Gateway) -> None:
    limit = 60
    resp = gw.client().chat.completions.create(
        model="ttc/best_of_n",
        messages=QUESTION,
        extra_body={
            "ttc": {"strategy": "beam_search", "beam_width": 4, "budget": {"tokens": limit}}
        },
    )
    ttc = resp.usage.ttc
    assert ttc["strategy"] == "beam_search" and ttc["budget"]["tokens"] == limit
    row = stored(gw, ttc["problem_id"])
    assert 0 < row["tokens"] <= limit
    assert resp.usage.completion_tokens == row["tokens"]
    assert row["budget"]["tokens"] == limit
    # the server's ceiling fills a unit the request leaves unlimited
    assert ttc["budget"]["samples"] == 32


def test_models_lists_every_strategy(gw: Gateway) -> None:
    ids = {m.id for m in gw.client().models.list()}
    assert {"ttc", "ttc/best_of_n", "ttc/beam_search", "ttc/self_consistency"} <= ids


def test_stop_strings_cut_the_answer_like_an_openai_server(gw: Gateway) -> None:
    resp = gw.client().chat.completions.create(
        model="ttc/best_of_n", messages=QUESTION, stop=["Step 2"], extra_body={"ttc": {"n": 2}}
    )
    text = resp.choices[0].message.content
    assert text.startswith("Step 1") and "Step 2" not in text
    assert resp.choices[0].finish_reason == "stop"
    row = stored(gw, resp.usage.ttc["problem_id"])
    assert any("Step 2" in n["text"] for n in row["nodes"]), "the stored tree is whole"


def test_streaming_sends_the_final_answer_as_standard_chunks(gw: Gateway) -> None:
    client = gw.client()
    chunks = list(
        client.chat.completions.create(
            model="ttc/best_of_n",
            messages=QUESTION,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ttc": {"n": 3}},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finish == ["stop"]
    usage = [c.usage for c in chunks if c.usage is not None]
    assert len(usage) == 1
    row = stored(gw, usage[0].ttc["problem_id"])
    assert usage[0].completion_tokens == row["tokens"]
    assert any(n["selected"] and n["text"] == text for n in row["nodes"])
    done = list(client.completions.create(model="ttc/best_of_n", prompt="x answer=3", stream=True))
    assert "".join(c.choices[0].text for c in done).endswith("}.")


@pytest.mark.parametrize(
    "extra,kwargs,words",
    [
        ({"n": 0}, {}, ["ttc.n=0", ">= 1"]),
        ({"strategy": "nope"}, {}, ["ttc.strategy='nope'", "best_of_n"]),
        ({"budget": {"tokens": 0}}, {}, ["ttc.budget.tokens=0", ">= 1"]),
        ({"budget": {"tokenz": 5}}, {}, ["ttc.budget.tokenz", "valid units", "tokens"]),
        ({"budget": {"tokens": 9000}}, {}, ["ttc.budget.tokens=9000", "<= 5000", "max_budget"]),
        ({"beam_widht": 2}, {}, ["ttc.beam_widht", "valid keys", "n"]),
        ({"aggregate": "median"}, {}, ["ttc.aggregate='median'", "last, min, prod, mean"]),
        ({"n": "many"}, {}, ["ttc.n"]),
        ({}, {"temperature": -1.0}, ["temperature=-1.0", ">= 0"]),
        ({"strategy": "beam_search"}, {"n": 3}, ["n=3", "beam_search", "beam_width"]),
        ({"budget": {"flops": -2}}, {}, ["ttc.budget.flops", "> 0"]),
    ],
)
def test_bad_ttc_fields_are_a_400_naming_the_key_and_the_valid_range(
    gw: Gateway, extra: dict, kwargs: dict, words: list[str]
) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        gw.client().chat.completions.create(
            model="ttc/best_of_n", messages=QUESTION, extra_body={"ttc": extra}, **kwargs
        )
    message = err.value.body["message"]
    assert "\n" not in message
    for w in words:
        assert w in message, message


def test_unknown_model_strategy_is_a_404_and_a_malformed_chat_a_400(gw: Gateway) -> None:
    client = gw.client()
    with pytest.raises(openai.NotFoundError, match="ttc/beam_search"):
        client.chat.completions.create(model="ttc/beam", messages=QUESTION)
    with pytest.raises(openai.BadRequestError, match="messages"):
        client.chat.completions.create(model="ttc", messages=[])


def test_api_keys_are_required_when_configured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TTC_TEST_SERVE_KEYS", "k-one, k-two")
    url = f"sqlite:///{tmp_path / 'ttc.db'}"
    with gateway(url, "serve.api_keys_env=TTC_TEST_SERVE_KEYS") as g:
        bare = httpx.post(f"{g.url}/chat/completions", json={"model": "ttc", "messages": QUESTION})
        assert bare.status_code == 401 and "API key" in bare.json()["error"]["message"]
        for key in ("unused", "k-one-but-longer", "k-one,k-two"):
            with pytest.raises(openai.AuthenticationError, match="API key"):
                g.client(api_key=key).chat.completions.create(model="ttc", messages=QUESTION)
        with pytest.raises(openai.AuthenticationError):
            g.client(api_key="nope").models.list()
        resp = g.client(api_key="k-two").chat.completions.create(model="ttc", messages=QUESTION)
        assert resp.choices[0].message.content
        answered = resp.usage.ttc["problem_id"]
    store = Store(url)
    try:
        run = store.list_runs()[0]
        assert run["status"] == "finished"
        assert [r["problem_id"] for r in store.results(run["id"])] == [answered]
        assert "k-one" not in str(run["config"]), "keys never enter the stored config"
    finally:
        store.close()


def test_write_behind_answers_first_and_shutdown_waits_for_the_writes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ttc.db'}"
    with gateway(url, "serve.write_behind=true", "backend.delay_s=0.01") as g:
        client = g.client()
        ids = [
            client.chat.completions.create(model="ttc", messages=QUESTION).usage.ttc["problem_id"]
            for _ in range(3)
        ]
        run_id = g.run.run_id
    store = Store(url)
    try:
        assert sorted(r["problem_id"] for r in store.results(run_id or "")) == sorted(ids)
        assert store.get_run(run_id or "")["status"] == "finished"
    finally:
        store.close()

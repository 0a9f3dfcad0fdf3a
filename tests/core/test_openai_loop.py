"""The openai backend's blocking parts stay off the event loop, and a URL that cannot be
right fails at once.

A real HTTP server on 127.0.0.1 serves `/v1/models`, `/v1/completions`, and a slow
`/tokenize` whose first attempt at each text answers 503 (so the client backs off and
retries). When tokenization runs on the event loop, the problems tokenize one after the
other; off the loop they overlap, which the server sees as several requests in flight.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from ttc.errors import ConfigError
from ttc.launch import compose
from ttc.runner import Runner

from conftest import DOUBLES


class SlowTokenizer:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.inflight = 0
        self.max_inflight = 0
        self.seen: set[str] = set()
        self.tokenize_calls = 0
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def answer(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if path == "/v1/models":
            return 200, {"data": [{"id": "slow-model"}]}
        if path == "/tokenize":
            key = json.dumps(body, sort_keys=True)
            with self.lock:
                self.tokenize_calls += 1
                first = key not in self.seen
                self.seen.add(key)
                self.inflight += 1
                self.max_inflight = max(self.max_inflight, self.inflight)
            try:
                time.sleep(0.3)
                if first and "messages" not in body and body.get("prompt") != "a":
                    return 503, {"error": "busy"}
                text = body.get("prompt") or json.dumps(body.get("messages"))
                return 200, {"tokens": [ord(c) % 256 for c in str(text)]}
            finally:
                with self.lock:
                    self.inflight -= 1
        if path == "/detokenize":
            return 200, {"prompt": "".join(chr(t) for t in body["tokens"])}
        if path == "/v1/completions":
            n = int(body.get("n", 1))
            text = " so the answer is \\boxed{1}"
            choices = [
                {"index": i, "text": text, "finish_reason": "stop", "token_ids": [1] * 8}
                for i in range(n)
            ]
            usage = {"prompt_tokens": 10, "completion_tokens": 8 * n}
            return 200, {"choices": choices, "usage": usage}
        return 404, {"error": path}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _reply(self, body: dict[str, Any]) -> None:
                status, payload = server.answer(self.path, body)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._reply({})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self._reply(json.loads(self.rfile.read(length) or b"{}"))

        return Handler

    def __enter__(self) -> SlowTokenizer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[SlowTokenizer]:
    with SlowTokenizer() as s:
        yield s


def test_server_tokenization_runs_off_the_event_loop(server: SlowTokenizer, store_url: str) -> None:
    cfg = compose(
        [
            *[o for o in DOUBLES if not o.startswith("backend=")],
            "backend=openai",
            f"backend.base_url={server.base_url}",
            "backend.backoff_base_s=0.05",
            "strategy=self_consistency",
            "reward=none",
            "strategy.n=1",
            "task.n_problems=6",
            "run.concurrency=6",
            f"store.url={store_url}",
        ]
    )
    outcome = Runner(cfg).run()
    assert outcome.status == "finished"
    assert outcome.totals["problems"] == 6
    assert server.tokenize_calls > 6  # the 503s were retried
    # on the event loop the six problems would tokenize strictly one after another
    assert server.max_inflight >= 2


@pytest.mark.parametrize(
    "url", ["notaurl", "ftp://127.0.0.1/v1", "http:///v1", "http://127.0.0.1:port/v1"]
)
def test_a_base_url_that_cannot_be_right_fails_at_once(url: str) -> None:
    from ttc.backends.openai import OpenAIBackend, OpenAIBackendConfig

    with pytest.raises(ConfigError) as info:
        OpenAIBackend(OpenAIBackendConfig(base_url=url))
    assert "backend.base_url" in str(info.value)  # at construction: no request, no retry

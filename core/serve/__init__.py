"""`ttc serve`: an OpenAI-compatible gateway whose every request is a problem of one
long-lived serving run, solved by a test-time-compute strategy under its own budget.

- `ServeConfig`: the `serve` config node (address, keys, ceilings, shutdown).
- `Planner`: a request's strategy, parameters and budget, validated with the same
  schemas as `ttc run` (`RequestError` names the bad key and its valid range).
- `ServingRun`: the run in the store, its plugins started once, one scheduler shared by
  every request.
- `create_app`: the FastAPI app (`/v1/chat/completions`, `/v1/completions`, `/v1/models`).
"""

from __future__ import annotations

from ttc.serve.config import ServeConfig
from ttc.serve.plan import Planner, RequestError, RequestPlan
from ttc.serve.run import Answer, ServingRun

__all__ = [
    "Answer",
    "Planner",
    "RequestError",
    "RequestPlan",
    "ServeConfig",
    "ServingRun",
]

"""ttc: test-time compute for LLMs.

Plugin authors import the hook marker from here::

    import ttc

    @ttc.hookimpl
    def register_strategies(register):
        register(MyStrategy, MyStrategyConfig)
"""

from __future__ import annotations

import pluggy

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("ttc")
"""Marker for hook implementations in plugins."""

__all__ = ["__version__", "hookimpl"]

"""Strategies for flow models (see docs/flow.md): best-of-N over ODE samples, particle
sampling over the marginal-preserving SDE (linear or variance-preserving interpolant) and
rollover budget forcing."""

"""ttc for flow models (docs/flow.md): a rectified-flow velocity network, NFE budgets, a
context for flow strategies and a runner that stores particles as search-tree nodes.

Import the submodules you need (`ttc.flow.model` imports torch)."""

"""ttc allocators."""

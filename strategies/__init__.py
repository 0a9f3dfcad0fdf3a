"""ttc strategies."""

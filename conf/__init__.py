"""ttc conf."""

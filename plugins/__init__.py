"""ttc plugins."""

"""ttc store."""

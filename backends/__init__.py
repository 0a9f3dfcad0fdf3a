"""ttc backends."""

"""ttc versions."""

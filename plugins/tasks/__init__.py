"""ttc tasks."""

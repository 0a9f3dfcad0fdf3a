"""ttc cli."""

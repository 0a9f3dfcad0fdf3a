"""ttc rewards."""

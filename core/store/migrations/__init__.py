"""ttc migrations."""

"""Class activation maps for every class in one pass."""

"""Inference backends with one interface: run(images) -> (logits, maps)."""

"""Defaults, in one place.

Each part of the product reads its options from one dataclass here; functions take such a config
object or explicit keyword arguments, and the CLI builds configs from flags. Nothing else holds a
default that a user may want to change.
"""
from __future__ import annotations

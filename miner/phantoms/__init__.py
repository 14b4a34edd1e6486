"""Phantom archives: synthetic chest radiographs with known lesions, in the ChestX-ray14 release layout.

Public API: `make_phantoms(out, *, images, size, seed, masks=False, ...) -> Archive` (`miner.phantoms.generator`).

Modules: `generator` (the archive: plan, render, write), `anatomy` (the chest), `lesions` (the eight findings'
drawers), `box_stats` (where and how large ChestX-ray14's boxes are), `background` (a real radiograph as the
backdrop), `bad_files` (one broken file of each `miner.errors.ImageError` kind, for the demo and tests).
"""
from __future__ import annotations

from miner.phantoms.generator import make_phantoms

__all__ = ["make_phantoms"]

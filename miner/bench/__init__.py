"""Benchmarks: commands that print ratios measured side by side in one run (`miner bench NAME`).

Each benchmark is a module here exposing ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``.
"""
from __future__ import annotations

# name -> module, in the order `miner bench --help` lists them
BENCHES: dict[str, str] = {
    "detector": "miner.bench.detector",
    "export": "miner.bench.export",
    "kernels": "miner.bench.kernels",
    "localize": "miner.bench.localize",
    "maps": "miner.bench.maps",
    "mine": "miner.bench.mine",
    "paper": "miner.bench.paper",
}

"""`miner.kernels`: batched connected-component erasure and labelling (Triton on CUDA, exact CPU path)."""

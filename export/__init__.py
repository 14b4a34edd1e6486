"""`miner.export`: ONNX graphs that output logits and all class maps, TensorRT engines, parity checks."""

"""What runs on the workers: decode tasks and model actors (plain Python, wrapped with `ray.remote` by the
driver, so importing this module never imports Ray).

- `decode_task(records, input_size, threads, max_pixels)`: one batch of files -> `DecodedBatch` (pixels
  resized to the model's input, original sizes, one error row per file that does not decode or whose header
  announces more than `max_pixels` pixels). Runs as a Ray task on CPUs (``JobConfig.decode="tasks"``, the default
  for GPU actors).
- `ModelWorker`: loads the model once (``__init__``), then `process` runs backend, attention mining and
  boxes for one decoded batch on the actor's device and returns its rows; `decode_and_process` decodes the batch's
  files first, in the actor (``decode="actor"``, the default for CPU actors: no pixels through the object store).
  One per GPU, or one per ``cpus_per_worker`` CPUs on CPU nodes.
"""
from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

from miner.config import MAX_PIXELS
from miner.pipeline import BatchOutput, DecodedBatch, decode_batch


def decode_task(records: Sequence[tuple[str, str, tuple[str, ...]]], input_size: tuple[int, int],
                threads: int = 1, max_pixels: int | None = MAX_PIXELS) -> DecodedBatch:
    """Decode one batch of ``(image_id, path, labels)`` records (see `miner.pipeline.decode_batch`) with
    `threads` OpenCV threads; a file whose header announces more than `max_pixels` pixels is an error row,
    undecoded. Runs in Ray's ordinary (prestarted) workers: no runtime environment of its own."""
    import cv2

    cv2.setNumThreads(max(1, int(threads)))
    # a damaged file is an error row; OpenCV's own warnings about it would only clutter the job's log
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    return decode_batch(records, input_size=input_size, max_pixels=max_pixels)


def set_threads(threads: int) -> None:
    """Make this process compute with `threads` threads (torch intra-op, OpenCV)."""
    import cv2
    import torch

    threads = max(1, int(threads))
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set by an earlier parallel region of this process
        pass
    cv2.setNumThreads(threads)


class ModelWorker:
    """One model on one device: ``process(batch) -> BatchOutput``.

    Args:
        model_path: a checkpoint, ONNX graph or engine readable on the actor's node.
        backend: backend name for `miner.backends.open_backend` (``auto`` picks by file type and device).
        device: ``cpu`` or ``cuda`` (Ray sets CUDA_VISIBLE_DEVICES to the actor's GPU).
        threads: compute threads of this actor (its reserved CPUs).
        backend_options: more keyword options of `open_backend` (``method``, ``layer`` for checkpoints).
        pipeline_options: keyword options of `miner.pipeline.Pipeline`.
    """

    def __init__(self, model_path: str, *, backend: str, device: str, threads: int,
                 backend_options: Mapping[str, Any], pipeline_options: Mapping[str, Any]) -> None:
        from miner.backends import open_backend
        from miner.errors import MinerError
        from miner.pipeline import Pipeline

        set_threads(threads)
        self.threads = threads
        self.error: MinerError | None = None
        started = time.time()
        try:
            # onnxruntime: threads = the actor's CPUs, no spinning (decode tasks share the cores); on a CPU
            # actor only the CPU provider (the GPU providers would be tried and fail first)
            self.backend = open_backend(model_path, backend=backend, device=device, intra_op_threads=threads,
                                        spinning=False, provider="cpu" if device == "cpu" else None,
                                        **{k: v for k, v in backend_options.items() if v is not None})
            self.pipeline = Pipeline(self.backend, **dict(pipeline_options))
        except MinerError as err:
            # a model or backend the user can fix: raised again by `info`, where Ray passes it to the
            # driver as itself (an actor that died in __init__ would only give the driver a traceback text)
            self.error = err
        self.load_seconds = time.time() - started
        started = time.time()
        if self.error is None:
            try:
                self.warm_up()
            except MinerError as err:  # a model that breaks its record or gives NaN here, on this device
                self.error = err
        self.warmup_seconds = time.time() - started

    def warm_up(self) -> None:
        """Check the model on this actor's device (`Backend.probe`: output shapes, finite values; a graph can
        overflow in one provider and not another), then run the whole pipeline once on a synthetic image with
        every class selected: the first call pays for lazy imports, kernel initialisation and allocator growth
        (seconds), which belong to start-up, not to the first real batch."""
        import numpy as np

        from miner.pipeline import DecodedBatch

        self.backend.probe()
        meta = self.backend.meta
        h, w = meta.input_size
        image = np.random.default_rng(0).random((1, 1, h, w), dtype=np.float32)
        batch = DecodedBatch(["warm-up"], [""], [tuple(meta.classes)], image, np.array([[h, w]], np.int32))
        self.pipeline._rows(batch, select="all")

    def info(self) -> dict[str, Any]:
        """Where this actor runs and what it computes (the driver records it in the manifest)."""
        import ray

        if self.error is not None:
            raise self.error
        meta = self.backend.meta
        return {
            "node_id": ray.get_runtime_context().get_node_id(),
            "pid": os.getpid(),
            "backend": self.backend.name,
            "provider": self.backend.provider,
            "device": str(self.backend.device),
            "threads": self.threads,
            "classes": list(meta.classes),
            "input_size": list(meta.input_size),
            "in_chans": meta.in_chans,
            "method": meta.method,
            "layer": meta.layer,
            "map_size": list(meta.map_size),
            "load_seconds": round(self.load_seconds, 3),
            "warmup_seconds": round(self.warmup_seconds, 3),
            "malloc": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")},
        }

    def process(self, batch: DecodedBatch) -> BatchOutput:
        """Rows of one decoded batch (bad rows become error rows; see `Pipeline.run`)."""
        return self.pipeline.run(batch)

    def decode_and_process(self, records: Sequence[tuple[str, str, tuple[str, ...]]],
                           max_pixels: int | None = MAX_PIXELS) -> BatchOutput:
        """Decode one batch of records here (as `decode_task` does, with this actor's threads) and return its rows:
        the job's ``decode="actor"`` placement, where no pixels travel through Ray's object store. The batch's
        ``started`` stamp is taken before decoding (the actor's time on the batch includes it)."""
        import dataclasses

        import cv2

        started = time.time()
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
        batch = decode_batch(records, input_size=tuple(self.backend.meta.input_size), max_pixels=max_pixels)
        return dataclasses.replace(self.pipeline.run(batch), started=started)

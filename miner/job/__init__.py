"""The mining job: Ray actors over whole archives, Parquet out, resume (`run_job`, ``miner mine``).

This package is the only place that imports Ray, and it does so inside functions: `import miner.job` stays
light. Everything between decode and rows is `miner.pipeline` (plain numpy/torch, tested without Ray).

Design: Ray core, not Ray Data
------------------------------
The job is a driver loop over Ray core primitives:

- the archive's records are cut into shards of ``shard_size`` consecutive records (deterministic
  boundaries, recorded in the manifest; `miner.job.plan`);
- each shard is cut into batches; a batch is one **decode task** (CPU; `miner.pipeline.decode_batch`,
  per-file errors become rows) whose result Ray hands directly to a **model actor** (`ModelWorker`: loads
  the model once, one GPU each where GPUs exist, else ``cpus_per_worker`` CPUs; backend, attention mining and
  boxes on its device). Decode tasks are placed on the node of the actor that consumes them, so decoded
  pixels never cross the network, and the driver keeps at most ``prefetch`` batches queued per actor
  (bounded memory; decoding runs ahead of the model);
- the driver gathers a shard's batch results in order and writes the shard atomically (`miner.io`) as soon
  as its last batch returns: Parquet is written as the job goes, and only the shards in flight are held.

Why not Ray Data (``map_batches`` with an ``ActorPoolStrategy``)? Its blocks do not line up with our shards
(block boundaries move with the dataset's parallelism and the actors' batching), so "one atomic file set per
shard, skip the finished ones on rerun" would need a re-grouping stage; its write operators commit per
block, without a shard-level done marker; and one exception in a UDF fails the whole dataset while
``max_errored_blocks`` silently drops whole blocks (NOTES.md). Ray core gives exact per-shard output with a
few lines of scheduling, and no executor between our actors and the work: the same actors, fed a batch
ahead, keep the cores as busy as an in-process loop (see ``miner bench mine``).

Resume: a shard is done when its marker exists (written after its three Parquet files); a rerun cleans
leftover temporary and orphaned part files, skips done shards and recomputes the rest under the same file
names, so a run killed at any moment and rerun ends with exactly the rows of an uninterrupted run.
"""
from __future__ import annotations

from miner.job.driver import run_job
from miner.job.summary import BatchEvent, JobSummary, steady_rate, steady_window

__all__ = ["BatchEvent", "JobSummary", "run_job", "steady_rate", "steady_window"]

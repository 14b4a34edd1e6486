"""`miner report OUT`: a static HTML report of one mining job, to look at before training on its boxes.

    from miner.report import write_report
    result = write_report("out/job", archive="data/chestxray14", model="model.pt")   # -> out/job/report/

Layout of the report folder (default ``OUT/report``; opens from the file system, no server, no network)::

    index.html                    the job (state, archive, model, options, counts, runs, versions), the findings
                                  table, miner eval's tables and an Acc-vs-T(IoU) plot where the archive has
                                  ground truth, the error rows
    findings/<finding>.html       per finding: counts, a plot of scores, boxes per image and box sizes, its
                                  evaluation, a gallery of the top-scoring boxes and one of a random sample
    img/plots/*.png               matplotlib plots
    img/thumbs/<finding>/*.jpg    gallery thumbnails (box green, ground truth red; H_f and CLEAR with --model)
    img/pictures/<finding>/*.jpg  the full-size picture each thumbnail links to
    report.json                   what was written (counts, bounds, seconds) and ``files``, every file of the
                                  report: all that a later report into the folder replaces or removes (a file
                                  of the user's there is kept; one where the report writes is refused)

Modules: `miner.report.job` (reading OUT: finished shards only, the job's state), `miner.report.gallery`
(which boxes, their pictures through `miner.show`), `miner.report.plots` (matplotlib), `miner.report.page`
(escaped HTML from Jinja2 templates), `miner.report.build` (`write_report`). miner eval's tables come from
`miner.metrics.job`, the one evaluation of a job that ``miner eval`` and ``miner demo`` use too.
"""
from __future__ import annotations

from miner.report.build import ReportResult, write_report

__all__ = ["ReportResult", "write_report"]

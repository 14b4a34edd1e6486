"""`miner bench mine`'s ``bound`` case: the bound's arithmetic against hand-computed values, a smoke run of the case
through the CLI (its printed lines agree with each other), `--model`, and the manifests every case reads (their
images decode: none is an ``outside_archive`` error row)."""
from __future__ import annotations

import re

import pytest

from miner.bench.mine import BOUND_FIELDS, bound_rate, bound_totals, per_image


def test_bound_rate_is_cores_over_the_core_seconds_per_image():
    # 3 ms decode + 14 ms model + 2 ms mining = 19 ms of one core per image; 2 cores: 2 / 0.019 = 105.263... img/s
    assert bound_rate(decode=0.003, model=0.014, mining=0.002, cores=2) == pytest.approx(105.2631578947, rel=1e-9)
    assert bound_rate(decode=0.010, model=0.030, mining=0.010, cores=1) == pytest.approx(20.0)
    with pytest.raises(ValueError):
        bound_rate(decode=0.0, model=0.0, mining=0.0, cores=2)
    with pytest.raises(ValueError):
        bound_rate(decode=0.01, model=0.01, mining=0.01, cores=0)


def test_bound_totals_leave_out_the_warm_up_batch_and_split_the_pipeline():
    assert BOUND_FIELDS == ("images", "decode", "model", "pipeline", "decode_wall", "model_wall", "pipeline_wall")
    batches = [
        [8, 9.0, 9.0, 9.0, 9.0, 9.0, 9.0],          # warm-up: left out
        [8, 0.024, 0.112, 0.128, 0.030, 0.120, 0.140],
        [4, 0.012, 0.056, 0.064, 0.015, 0.060, 0.070],
    ]
    totals = bound_totals(batches)
    assert totals["images"] == 12
    assert totals["decode"] == pytest.approx(0.036)
    assert totals["model"] == pytest.approx(0.168)
    assert totals["mining"] == pytest.approx(0.024)          # pipeline - model: 0.192 - 0.168
    assert totals["wall"] == pytest.approx(0.045 + 0.210)    # decode + pipeline, wall clock
    each = per_image(totals)
    assert each["decode"] == pytest.approx(0.003)
    assert each["model"] == pytest.approx(0.014)
    assert each["mining"] == pytest.approx(0.002)
    assert bound_rate(decode=each["decode"], model=each["model"], mining=each["mining"],
                      cores=2) == pytest.approx(2 / 0.019)
    assert bound_totals(batches, skip=3)["images"] == 0 and per_image(bound_totals(batches, skip=3)) == {}


def test_manifests_of_every_case_decode_their_images(tmp_path):
    """The cases read `_subset`'s manifests (in a temporary folder, absolute paths into the archive) with
    `_archive_config`: under the archive-root rule alone every image would be an ``outside_archive`` error row."""
    from miner.bench.mine import _archive_config, _subset
    from miner.data import read_archive
    from miner.phantoms import make_phantoms
    from miner.pipeline import decode_batch

    archive = tmp_path / "ph"
    make_phantoms(archive, images=6, size=32, seed=0, overwrite=True, progress=False)
    work = tmp_path / "work"
    work.mkdir()
    manifest = _subset(archive, 2, 6, work)
    arch = read_archive(manifest, config=_archive_config())
    batch = decode_batch([(r.image_id, r.path, tuple(r.labels), r.root) for r in arch.records], input_size=32)
    assert len(batch) == 4 and batch.errors == []
    strict = read_archive(manifest)  # the rule: the manifest's folder is the root
    kinds = {e["kind"] for e in decode_batch([(r.image_id, r.path, tuple(r.labels), r.root) for r in strict.records],
                                             input_size=32).errors}
    assert kinds == {"outside_archive"}


def _figures(out: str) -> tuple[float, dict[str, float], float]:
    table = re.search(r"^bound +bound: (\d+) cores / decode\+model\+mining +([\d.]+) +([\d.]+) +[\d.]+-[\d.]+$", out,
                      re.M)
    assert table, out
    ms = re.search(r"^bound +ms per image \(CPU time, 1 thread\): decode ([\d.]+) \+ model ([\d.]+) \+ mining "
                   r"(-?[\d.]+) = ([\d.]+) \(wall ([\d.]+)\); (\d+) cores / that = ([\d.]+) img/s; (\d+) images timed",
                   out, re.M)
    assert ms, out
    parts = dict(zip(("decode", "model", "mining", "total", "wall"), map(float, ms.groups()[:5])))
    assert int(table.group(1)) == int(ms.group(6))
    assert float(table.group(2)) == pytest.approx(float(ms.group(7)), abs=0.01)
    return float(table.group(2)), parts, int(ms.group(8))


def test_bound_case_prints_the_breakdown_and_the_ratio(tmp_path, capsys):
    from miner.cli import main

    code = main(["bench", "mine", "--images", "32", "--cases", "bound", "--batch-size", "8", "--rounds", "1",
                 "--image-size", "64", "--input-size", "64", "--width", "0.25", "--cache", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert re.search(r"^  round 1 bound +bound +[\d.]+ img/s  \(load [\d.]+ -> [\d.]+\)$", out, re.M), out
    rate, parts, timed = _figures(out)
    assert timed == 24  # 4 batches of 8, the first left out
    assert parts["decode"] > 0 and parts["model"] > 0
    assert parts["total"] == pytest.approx(parts["decode"] + parts["model"] + parts["mining"], abs=0.15)
    cores = int(re.search(r"(\d+) cores / that", out).group(1))
    assert rate == pytest.approx(1000 * cores / parts["total"], rel=0.05)  # the printed total is rounded
    assert "  job (2 actors) / bound: n/a (goal >= 0.90)" in out  # no job2 in this run


def test_model_option_mines_with_the_given_checkpoint(tmp_path, capsys):
    import torch

    from miner.bench.mine import _model_stem
    from miner.cli import main
    from miner.findings import CHESTXRAY14
    from miner.models import create_model, save_checkpoint
    from miner.models.meta import file_hash
    from miner.recipes import get_recipe

    torch.manual_seed(0)
    net = create_model("resnet18_msa", classes=CHESTXRAY14, width=0.125,
                       **get_recipe("peaks").options_for("resnet18_msa"))
    model = tmp_path / "tiny.pt"
    save_checkpoint(model, net, meta={"input_size": 48, **get_recipe("peaks").record()})
    code = main(["bench", "mine", "--model", str(model), "--images", "32", "--cases", "bound", "--batch-size", "8",
                 "--rounds", "1", "--image-size", "64", "--input-size", "64", "--cache", str(tmp_path / "cache")])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "-> tiny.pt (resnet18_msa at 48x48 px, recipe peaks, its own settings)" in out  # not --input-size 64
    _figures(out)
    assert not list((tmp_path / "cache").glob("*.pt"))  # no random model made
    assert _model_stem(model) == "tiny-" + file_hash(model).split(":", 1)[1][:16]
    assert main(["bench", "mine", "--model", str(tmp_path / "missing.pt"), "--images", "32", "--batch-size", "8",
                 "--rounds", "1", "--cases", "bound"]) == 2

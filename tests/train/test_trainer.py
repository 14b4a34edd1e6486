"""The stage driver end to end on a tiny archive: stages, checkpoints, resume, the CLI."""
from __future__ import annotations

import pytest
import torch

from miner.cli import main
from miner.config import TrainConfig
from miner.errors import UsageError
from miner.models import load_checkpoint, read_checkpoint
from miner.train import plan_stages, stage_path, train
from miner.train.trainer import Trainer

from .toy import CLASSES, write_toy_archive


def tiny_config(**kw) -> TrainConfig:
    base = dict(arch="resnet18_msa", model_options={"width": 0.125}, input_size=64, base_epochs=1,
                msa_init_epochs=1, end2end_epochs=1, am_epochs=1, batch_size=16, workers=0, cache=True,
                optimizer="adamw", lr=3e-3, finetune_lr=1e-3, progress=False, val_fraction=0.2, threads=1)
    base.update(kw)
    return TrainConfig(**base)


def test_plan_stages():
    assert plan_stages("resnet50_msa", ("all",)) == ["base", "msa-init", "end2end", "am"]
    assert plan_stages("resnet50", ("all",)) == ["base", "am"]
    assert plan_stages("resnet18_msa", ("am", "base")) == ["base", "am"]
    with pytest.raises(UsageError, match="_msa models only"):
        plan_stages("resnet50", ("msa-init",))
    with pytest.raises(UsageError, match="--stage"):
        plan_stages("resnet50", ("warmup",))


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return write_toy_archive(tmp_path_factory.mktemp("toy") / "archive", images=48, size=64)


def test_all_stages_write_checkpoints_and_msa_init_freezes_the_trunk(toy, tmp_path):
    out = tmp_path / "model.pt"
    result = train(toy, out, tiny_config())
    assert result.stages == ["base", "msa-init", "end2end", "am"]
    assert set(result.test_auc) == set(CLASSES)
    base = read_checkpoint(stage_path(out, "base"))
    init = read_checkpoint(stage_path(out, "msa-init"))
    assert base["arch"] == "resnet18" and init["arch"] == "resnet18_msa"  # base trains the plain trunk
    for rec, stage in ((base, "base"), (init, "msa-init")):
        assert rec["stage"] == stage and rec["stage_complete"] and rec["epoch"] == 1
        assert rec["train_state"]["optimizer"]["state"]  # resumable
    for key, value in base["state_dict"].items():  # weights and BN statistics below MSA unchanged
        if not key.startswith("fc."):
            assert torch.equal(init["state_dict"][key], value), key
    assert "kp_reference" in read_checkpoint(stage_path(out, "am"))["train_state"]
    model, meta = load_checkpoint(out)
    assert meta["classes"] == list(CLASSES) and meta["input_size"] == 64 and meta["stage"] == "am"
    assert meta["mean"] == pytest.approx([0.449]) and set(meta["test_auc"]) == set(CLASSES)
    assert [h["stage"] for h in meta["history"]] == ["base", "msa-init", "end2end", "am"]
    assert all(len(h["val_auc"]) == 2 for h in meta["history"])
    # resume: every stage complete -> nothing retrained, same final weights
    again = train(toy, out, tiny_config(), resume=True)
    model2, _ = load_checkpoint(out)
    for (k, a), b in zip(model.state_dict().items(), model2.state_dict().values()):
        assert torch.equal(a, b), k
    assert len(again.history) == 4


def test_interrupted_stage_resumes_at_its_next_epoch(toy, tmp_path, monkeypatch):
    out = tmp_path / "m.pt"
    cfg = tiny_config(arch="resnet18", base_epochs=2, am_epochs=0, stages=("base",))
    real = Trainer._train_epoch

    def stop_at_second_epoch(self, stage, model, forward, opt, sched, scaler, kp, epoch, *args):
        if epoch == 1:
            raise KeyboardInterrupt
        return real(self, stage, model, forward, opt, sched, scaler, kp, epoch, *args)

    monkeypatch.setattr(Trainer, "_train_epoch", stop_at_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        train(toy, out, cfg)
    rec = read_checkpoint(stage_path(out, "base"))
    assert rec["epoch"] == 1 and not rec["stage_complete"]
    steps = rec["train_state"]["schedule"]["last_epoch"]
    monkeypatch.setattr(Trainer, "_train_epoch", real)
    result = train(toy, out, cfg, resume=True)
    rec = read_checkpoint(stage_path(out, "base"))
    assert rec["epoch"] == 2 and rec["stage_complete"]
    assert rec["train_state"]["schedule"]["last_epoch"] == 2 * steps  # the schedule went on, not restarted
    assert [h["epoch"] for h in result.history] == [1, 2]


def test_stage_needs_its_predecessor(toy, tmp_path):
    with pytest.raises(UsageError, match="starts from the 'end2end' checkpoint"):
        train(toy, tmp_path / "m.pt", tiny_config(stages=("am",)))


def test_cli_train_kp_vanilla(toy, tmp_path, capsys):
    out = tmp_path / "cli.pt"
    rc = main(["train", str(toy), "--out", str(out), "--arch", "resnet18", "--width", "0.125", "--input-size", "64",
               "--epochs", "1", "--am-epochs", "1", "--batch-size", "16", "--workers", "0", "--cache",
               "--kp", "vanilla", "--optimizer", "adamw", "--lr", "0.003", "--no-progress", "--threads", "1", "--amp"])
    assert rc == 0
    _, meta = load_checkpoint(out)
    assert meta["config"]["kp"] == "vanilla" and meta["config"]["amp"] and meta["arch"] == "resnet18"
    text = capsys.readouterr().out
    assert "test AUC per finding" in text and "Mass" in text and "Effusion" in text


def test_dcfpn_base_and_am(toy, tmp_path):
    out = tmp_path / "dc.pt"
    result = train(toy, out, tiny_config(arch="dcfpn", model_options={"channels": 4, "depth": 3}, am_epochs=2))
    assert result.stages == ["base", "am"]
    rec = read_checkpoint(stage_path(out, "am"))
    assert rec["arch"] == "dcfpn" and rec["stage_complete"]
    # one step per epoch here: L_KP is 0 at the first AM step and positive at the second
    assert [h["kp"] > 0 for h in rec["history"] if h["stage"] == "am"] == [False, True]
    with pytest.raises(UsageError, match="segmentation net"):
        train(toy, tmp_path / "u.pt", tiny_config(arch="unet", model_options={}))

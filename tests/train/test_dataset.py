from __future__ import annotations

import torch

from miner.data import Record, read_archive
from miner.models import create_model
from miner.train.dataset import ArchiveDataset, augment, collate, labels_of, split_validation
from miner.train.step import TrainForward, training_losses

from .toy import CLASSES, write_toy_archive


def test_labels_and_patient_level_validation_split():
    recs = [Record(f"{i}.png", f"/x/{i}.png", labels=("Mass",) if i % 2 else (), patient_id=str(i // 3))
            for i in range(300)]
    assert labels_of(recs[:2], ("Effusion", "Mass")).tolist() == [[0, 0], [0, 1]]
    train, val = split_validation(recs, 0.2, seed=0)
    assert len(train) + len(val) == 300 and 30 <= len(val) <= 90
    assert not {r.patient_id for r in train} & {r.patient_id for r in val}
    assert split_validation(recs, 0.2, seed=0) == (train, val)  # deterministic


def test_undecodable_images_are_left_out(tmp_path, capsys):
    root = write_toy_archive(tmp_path / "a", images=6, size=32)
    bad = root / "images" / "00000002_000.png"
    bad.write_bytes(bad.read_bytes()[:40])  # truncated PNG
    archive = read_archive(root)
    ds = ArchiveDataset(archive.records, CLASSES, 32)
    assert ds[1] is None and "truncated" in capsys.readouterr().err
    images, targets, index = collate([ds[i] for i in range(6)])
    assert images.shape == (5, 1, 32, 32) and index.tolist() == [0, 2, 3, 4, 5]
    assert torch.equal(targets, ds.targets[index])
    cached = ArchiveDataset(archive.records, CLASSES, 32, cache=True)
    cached.preload()
    assert set(cached.bad) == {1} and cached[1] is None
    assert torch.allclose(cached[0][0], ds[0][0], atol=1e-3)  # float16 cache


def test_augment_is_identity_at_zero_strength_and_deterministic():
    x = torch.rand(3, 1, 32, 32)
    g = torch.Generator().manual_seed(0)
    same = augment(x, g, shift=0, scale=0, rotate_deg=0, contrast=0)
    assert torch.allclose(same, x, atol=1e-5)
    a = augment(x, torch.Generator().manual_seed(1))
    b = augment(x, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.allclose(a, x, atol=1e-3)
    assert a.min() >= 0 and a.max() <= 1


def test_bf16_autocast_am_step_on_cpu():
    torch.manual_seed(0)
    model = create_model("resnet18_msa", width=0.125, num_classes=2).train()
    forward = TrainForward(model)
    x, y = torch.rand(8, 1, 64, 64), (torch.rand(8, 2) > 0.5).float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = training_losses(forward, x, y, am=True, kp_mode="vanilla", depth=1)
        logits, _ = forward(x, 1, 1)
    assert logits.dtype == torch.bfloat16
    assert losses.cls.dtype == torch.float32 and torch.isfinite(losses.loss)
    ref = training_losses(forward, x, y, am=True, kp_mode="vanilla", depth=1)
    assert abs(losses.cls.item() - ref.cls.item()) < 0.05  # bf16 keeps ~3 significant digits
    losses.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_worker_decode_after_parallel_labelling_does_not_hang(tmp_path):
    """DataLoader workers forked after OpenCV's thread pool has run (attention mining labels components in
    parallel) once hung in `cv2.setNumThreads`; the cache preload must finish and equal the in-process one."""
    import subprocess
    import sys
    import textwrap

    root = write_toy_archive(tmp_path / "a", images=12, size=32)
    script = textwrap.dedent(f"""
        import numpy as np, torch, cv2
        from miner.data import read_archive
        from miner.train.dataset import ArchiveDataset
        from tests.train.toy import CLASSES
        big = (np.random.default_rng(0).random((3000, 3000)) > 0.5).astype(np.uint8)
        cv2.connectedComponentsWithAlgorithm(big, 8, cv2.CV_32S, cv2.CCL_SPAGHETTI)  # OpenCV's pool runs
        archive = read_archive({str(root)!r})
        forked = ArchiveDataset(archive.records, CLASSES, 32, cache=True)
        forked.preload(workers=2)
        here = ArchiveDataset(archive.records, CLASSES, 32, cache=True)
        here.preload(workers=0)
        print(bool(torch.equal(forked.images, here.images)))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                            cwd=str(__import__("pathlib").Path(__file__).resolve().parents[2]))
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "True"

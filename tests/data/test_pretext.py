"""The pretext stream, pretraining resume, and the shipped `synthetic-tiny` weights."""

import json

import pytest
import torch
from conftest import stop_after_step

from ramstrans.checkpoint import load_checkpoint
from ramstrans.config import load_config
from ramstrans.data import Transform, eval_loader, train_loader
from ramstrans.data.synthetic.birds import species_list
from ramstrans.data.synthetic.pretext import FAMILIES, PretextDataset
from ramstrans.inference.evaluate import evaluate
from ramstrans.models import create_model
from ramstrans.models.backbones.pretrained import shipped_weights
from ramstrans.training.run import run_training

PRETRAIN_TINY = [
    "model.img_size=64",
    "model.backbone_kwargs={embed_dim: 32, depth: 2, num_heads: 2}",
    "data.resize=72",
    "data.num_workers=0",
    "data.synthetic.image_size=80",
    "data.pretext_test_size=8",
    "train.batch_size=4",
    "train.steps=4",
    "train.warmup_steps=1",
    "train.log_every=1",
    "train.ckpt_every=2",
    "train.eval_every=0",
    "train.eval_batch_size=8",
]


def test_stream_is_deterministic_per_seed_and_independent_of_workers():
    a, b, c = PretextDataset(80, seed=3), PretextDataset(80, seed=3), PretextDataset(80, seed=4)
    for pos in (0, 7, 123456):
        x, y = a[(pos, 5)], b[(pos, 5)]
        assert torch.equal(x["image"], y["image"]) and x["label"] == y["label"] and torch.equal(x["box"], y["box"])
    assert not torch.equal(a[(0, 0)]["image"], c[(0, 0)]["image"])
    t = Transform(train=True, crop=64, resize=72, mean=(0.5,) * 3, std=(0.5,) * 3)
    ds = PretextDataset(80, seed=3, transform=t)
    batches = []
    for workers in (0, 2):
        it = iter(train_loader(ds, 4, seed=1, start_batch=2, num_workers=workers))
        batches.append([next(it) for _ in range(2)])
    for b0, b2 in zip(*batches):
        assert torch.equal(b0["image"], b2["image"]) and torch.equal(b0["label"], b2["label"])
        assert b0["index"].tolist() == list(range(int(b0["index"][0]), int(b0["index"][0]) + 4))
    assert batches[0][0]["index"][0] == 8  # step 2 of batch 4 starts at position 8: nothing is replayed


def test_labels_are_coarse_families_disjoint_from_the_fine_grained_species():
    labels = [PretextDataset(80, seed=0)[(i, 0)]["label"] for i in range(60)]
    assert len(set(labels)) >= 8 and max(labels) < len(FAMILIES)
    species = {s.name for s in species_list(30)}
    assert species.isdisjoint(FAMILIES) and "bird" in FAMILIES


def test_short_pretraining_resumes_exactly(tmp_path, monkeypatch):
    cfg = lambda out: load_config("pretrain_synthetic", PRETRAIN_TINY + [f"train.output_dir={out}"])  # noqa: E731
    want = load_checkpoint(run_training(cfg(tmp_path / "a"), show_progress=False)["checkpoint"])["model"]
    restore = stop_after_step(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        run_training(cfg(tmp_path / "b"), show_progress=False)
    restore()
    got = run_training(cfg(tmp_path / "b"), resume=str(tmp_path / "b" / "checkpoint.pth"), show_progress=False)
    got = load_checkpoint(got["checkpoint"])["model"]
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_shipped_weights_load_offline_by_name_and_keep_their_accuracy(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert "synthetic-tiny" in shipped_weights()
    meta = json.loads(shipped_weights()["synthetic-tiny"].with_suffix(".json").read_text())
    model = create_model(
        backbone=meta["architecture"],
        num_classes=meta["num_classes"],
        img_size=meta["img_size"],
        num_scales=1,
        pretrained="synthetic-tiny",
        **meta["timm_kwargs"],
    ).eval()
    assert model.backbone.mean == tuple(meta["mean"]) and model.backbone.std == tuple(meta["std"])
    check = meta["pretext_check"]
    t = Transform(train=False, crop=meta["img_size"], resize=check["resize"], mean=meta["mean"], std=meta["std"])
    ds = PretextDataset(check["image_size"], check["seed"], t, length=check["num_images"])  # regenerated here
    res, _ = evaluate(model, eval_loader(ds, 128), device=torch.device("cpu"), num_classes=meta["num_classes"])
    chance = 100.0 / len(FAMILIES)
    assert check["top1"] > 3 * chance  # the recorded number is that of a trained model
    assert res["top1"] == pytest.approx(check["top1"], abs=2.0)
    fresh = create_model(
        backbone=meta["architecture"],
        num_classes=meta["num_classes"],
        img_size=meta["img_size"],
        num_scales=1,
        **meta["timm_kwargs"],
    ).eval()
    res_fresh, _ = evaluate(fresh, eval_loader(ds, 128), device=torch.device("cpu"), num_classes=meta["num_classes"])
    assert res_fresh["top1"] < check["top1"] - 20  # a random file would not pass

"""Shared fixtures: tiny timm ViTs, offline hub."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

TINY = dict(backbone="vit_tiny_patch16_224", img_size=64, depth=2)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def tiny_model(**overrides):
    """A 2-block ViT-Ti/16 RAMSTrans at 64 px (4x4 grid) with 5 classes."""
    from ramstrans import create_model

    kwargs = dict(TINY, num_classes=5)
    kwargs.update(overrides)
    return create_model(**kwargs)


@pytest.fixture(autouse=True, scope="session")
def _cache(tmp_path_factory):
    """Generated data never lands in the user's cache: set before any session fixture (``trained``) runs."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAMSTRANS_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        yield


@pytest.fixture(autouse=True)
def _cwd(tmp_path, monkeypatch):
    """Every test runs in its own empty folder: nothing depends on, or is written into, the folder pytest runs in
    (the README's demo leaves runs/synthetic_cpu there)."""
    monkeypatch.chdir(tmp_path)


TINY_TRAIN = [
    "model.backbone=vit_tiny_patch16_224",
    "model.img_size=64",
    "model.pretrained=null",
    "model.backbone_kwargs={embed_dim: 32, depth: 2, num_heads: 2}",
    "data.dataset=synthetic",
    "data.root=",
    "data.resize=72",
    "data.num_workers=0",  # root: the tmp cache
    "data.synthetic.num_classes=3",
    "data.synthetic.train_per_class=6",
    "data.synthetic.test_per_class=3",
    "data.synthetic.image_size=80",
    "train.batch_size=4",
    "train.steps=3",
    "train.warmup_steps=1",
    "train.log_every=1",
    "train.ckpt_every=2",
    "train.eval_batch_size=8",
    "train.opt=momentum",
    "train.lr=0.01",
]


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory):
    """A tiny synthetic set in the CUB layout (3 classes, 6 + 3 images each, 80 px)."""
    from ramstrans.data.synthetic.birds import write_cub_layout

    return write_cub_layout(
        tmp_path_factory.mktemp("syn"), num_classes=3, train_per_class=6, test_per_class=3, image_size=80, seed=0
    )


def sets(*items):
    """``--set`` arguments for config overrides."""
    return [a for it in items for a in ("--set", it)]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A tiny run trained once per session through the CLI (TINY_TRAIN, 3 steps); tests that change it work on a
    copy."""
    from ramstrans.cli import main

    out = tmp_path_factory.mktemp("run")
    assert main(["train", "--no-progress", "--output-dir", str(out)] + sets(*TINY_TRAIN)) == 0
    return out


@pytest.fixture(scope="session")
def trained(tiny_run):
    """The session's tiny run (a module may train its own under this name)."""
    return tiny_run


def stop_after_step(monkeypatch, step: int):
    """Make training runs raise KeyboardInterrupt right after writing their step-``step`` checkpoint (a user stopping
    them); returns the function that restores normal saving."""
    from ramstrans import checkpoint

    real = checkpoint.save_run_checkpoint

    def save_then_stop(state, out_dir, keep):
        real(state, out_dir, keep)
        if state["step"] == step:
            raise KeyboardInterrupt

    monkeypatch.setattr("ramstrans.training.monitor.save_run_checkpoint", save_then_stop)
    return lambda: monkeypatch.setattr("ramstrans.training.monitor.save_run_checkpoint", real)


def eval_summary(capsys) -> dict:
    """The summary.json of the evaluation whose sentence ``ramstrans eval`` just printed ("...; written to PATH")."""
    import json

    line = capsys.readouterr().out.strip().splitlines()[-1]
    return json.loads(open(line.rsplit("written to ", 1)[1]).read())


@pytest.fixture(scope="session")
def exported(tiny_run, tmp_path_factory):
    """The session's tiny run as a two-scale model with sharpened attention (real boxes), exported once per session:
    fused in fp32 (with its single-scale graph beside it, ``scale1``), fp16 and int8."""
    import torch

    from ramstrans.cli import main

    root = tmp_path_factory.mktemp("exported")
    ckpt = torch.load(tiny_run / "checkpoint.pth", weights_only=True)
    for k, v in ckpt["model"].items():
        if k.endswith("attn.qkv.weight"):
            v[: 2 * 32].mul_(8.0)
    torch.save(ckpt, root / "checkpoint.pth")
    files = {}
    for name, extra in [
        ("fp32", []),
        ("fp16", ["--precision", "fp16"]),
        ("int8", ["--precision", "int8", "--calibration-images", "8"]),
    ]:
        files[name] = root / f"{name}.onnx"
        args = ["export", "--checkpoint", str(root / "checkpoint.pth"), "--format", "onnx", "--scales", "2"]
        assert main(args + ["--out", str(files[name])] + extra) == 0
    files["scale1"] = root / "fp32.scale1.onnx"
    return root, files

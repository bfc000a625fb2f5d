"""The extension points, used from outside the package as a user would: a backbone family (a module and one
``register_backbone`` line) trains, evaluates fused and exports to ONNX; an export target (a module and one
``register_export_target`` line) declares its own option, writes, and its reader serves ``eval`` and ``predict``; the
one place that tells a model source's kind."""

import json
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_TRAIN, eval_summary, sets
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from ramstrans.cli import main
from ramstrans.config import config_from_dict
from ramstrans.errors import UsageError
from ramstrans.inference.load import LoadedModel, eval_transform, load_model
from ramstrans.models import Features, InputNorm, build_model
from ramstrans.registry import (
    BACKBONES,
    EXPORT_TARGETS,
    SOURCES,
    BackboneFamily,
    EvalRequest,
    SourceKind,
    register_backbone,
    register_export_target,
    saliencies,
    source_kind,
)
from ramstrans.runtime.files import atomic_write, check_output


class EnergyNet(InputNorm):
    """A toy backbone family: a strided convolution (one feature vector per 16-pixel cell) and a linear head on the
    pooled map; its saliency, "energy", is each cell's squared feature norm."""

    saliency = "energy"
    has_dist_token = False
    has_class_token = False
    num_prefix_tokens = 0
    name = "energy-toy"

    def __init__(self, *, img_size: int, num_classes: int, num_scales: int, dim: int = 8) -> None:
        super().__init__(3, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
        self.stem, self.head = nn.Conv2d(3, dim, 16, 16), nn.Linear(dim, num_classes)
        self._size, self.num_scales = img_size, num_scales

    img_size = property(lambda self: (self._size, self._size))
    in_chans = property(lambda self: 3)
    num_classes = property(lambda self: self.head.out_features)
    timm_model = property(lambda self: self)
    cell_size = property(lambda self: (16, 16))
    grid_size = property(lambda self: (self._size // 16, self._size // 16))

    def forward_features(self, x, scale=0, capture="none"):
        f = self.stem(x)  # (B, dim, gh, gw)
        return Features(tokens=f, saliency=f.detach().pow(2).sum(1) if capture == "all" else None)

    def pre_logits(self, tokens):
        return tokens.mean((2, 3))

    def forward_heads(self, tokens):
        return self.head(self.pre_logits(tokens)), None

    def forward_head(self, tokens, head="mean"):
        return self.forward_heads(tokens)[0]

    def forward(self, x, scale=0, head="mean"):
        return self.forward_head(self.forward_features(x).tokens)

    def no_weight_decay(self):
        return set()

    def group_matcher(self, coarse=False):
        return {"stem": r"^stem", "blocks": r"^head"}


def build_energy(cfg, num_classes, model=None):
    return EnergyNet(img_size=cfg.img_size, num_classes=num_classes, num_scales=cfg.num_scales)


@pytest.fixture
def energy_family():
    register_backbone("energy", BackboneFamily(build=build_energy, saliencies={"energy": "squared feature norm"}))
    yield
    BACKBONES.unregister("energy")


def test_a_backbone_family_registered_from_outside_trains_evaluates_fused_and_exports_onnx(energy_family, tmp_path):
    import onnxruntime as ort

    assert saliencies()["energy"] == "squared feature norm"
    run = tmp_path / "run"
    argv = ["train", "--no-progress", "--output-dir", str(run)]
    assert main(argv + sets(*TINY_TRAIN, "model.saliency=energy", "train.steps=2", "model.backbone_kwargs={}")) == 0
    loaded = load_model(run)
    model, x = loaded.model, torch.stack([loaded.transform(np.full((80, 80, 3), 99, np.uint8), None, 0)[0]] * 2)
    assert isinstance(model.backbone, EnergyNet) and model.num_scales == 2
    with torch.no_grad():
        x[1, :, 16:48, 16:32] += 1.0  # a bright patch the energy map finds
        pred = model.predict(x, 2)
        first = model.backbone(x).softmax(-1)
    assert main(["eval", "--checkpoint", str(run), "--scales", "2", "--no-progress", "--workers", "0"]) == 0
    onnx = tmp_path / "m.onnx"
    assert main(["export", "--checkpoint", str(run), "--format", "onnx", "--scales", "2", "--out", str(onnx)]) == 0
    probs, boxes = ort.InferenceSession(str(onnx)).run(["probs", "boxes"], {"images": x.numpy()})
    np.testing.assert_allclose(probs, pred.probs.numpy(), atol=1e-5)
    np.testing.assert_array_equal(boxes, pred.boxes.numpy())
    np.testing.assert_allclose(pred.scale_probs[0].numpy(), first.numpy(), atol=1e-6)  # scale 1: the backbone itself
    assert not torch.equal(pred.boxes[0], pred.boxes[1])  # the map moved the zoom


def test_an_unregistered_saliency_is_one_sentence_naming_the_registered_ones(capsys):
    assert main(["train", "--no-progress"] + sets(*TINY_TRAIN, "model.saliency=energy")) == 2
    err = capsys.readouterr().err
    assert "config key 'model.saliency' must be one of rollout, attn_pool, activation" in err and "energy" in err
    with pytest.raises(UsageError, match="given by another backbone family already"):
        register_backbone("again", BackboneFamily(build=build_energy, saliencies={"rollout": "twice"}))


class StateTarget:
    """A toy export target: the model's state dict as one safetensors file with the run's config in its metadata."""

    def add_arguments(self, group):
        group.add_argument("--state-dtype", default="float32", choices=("float32", "float16"))

    def write(self, source, out, scales, weights, overwrite, options):
        loaded = load_model(source, weights)
        cfg, model = loaded.run_config("--format state"), loaded.torch_model("--format state")
        path = check_output(out, [source], overwrite, "--out")
        dtype = getattr(torch, options.state_dtype)
        tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in model.state_dict().items()}
        meta = {"config": json.dumps(asdict(cfg)), "class_names": json.dumps(loaded.class_names)}
        atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={**meta, "step": str(loaded.step)}))
        return path

    def wrote(self, path, scales, options):
        return f"the model's state ({options.state_dtype}) to {path}"


def load_state(request):
    with safe_open(request.source, "pt") as f:
        meta = f.metadata()
    cfg, names = config_from_dict(json.loads(meta["config"])), json.loads(meta["class_names"])
    model = build_model(replace(cfg.model, pretrained=None), len(names))
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in load_file(request.source).items()})
    model.eval()
    path, step = Path(request.source), int(meta["step"])
    return LoadedModel(model, names, eval_transform(cfg, model), cfg, None, "state", path, "state file", step)


@pytest.fixture
def state_target():
    register_export_target("state", StateTarget(), reads=("state file", SourceKind(load=load_state, suffix=".state")))
    yield
    EXPORT_TARGETS.unregister("state")
    SOURCES.unregister("state file")


def test_an_export_target_registered_from_outside_writes_and_its_reader_serves_eval_and_predict(
    state_target, trained, tmp_path, capsys
):
    out = tmp_path / "m.state"
    assert main(["export", "--checkpoint", str(trained), "--format", "state", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote the model's state (float32) to {out}"
    assert source_kind(out) == "state file"
    summaries, rows = {}, {}
    images = _images(trained)
    for source in (trained / "checkpoint.pth", out):
        where = ["--output", str(tmp_path / f"eval{source.suffix}"), "--no-progress", "--workers", "0"]
        assert main(["eval", "--checkpoint", str(source), "--scales", "2"] + where) == 0
        summaries[source.suffix] = eval_summary(capsys)
        assert main(["predict", str(source), str(images), "--scales", "2", "--workers", "0"]) == 0
        rows[source.suffix] = capsys.readouterr().out
    assert summaries[".state"]["checkpoint"] == str(out) and summaries[".state"]["weights"] == "state"
    for key in ("top1", "top5", "loc_miou", "images"):
        assert summaries[".state"][key] == summaries[".pth"][key]
    assert rows[".state"] == rows[".pth"] and rows[".pth"].count("\n") == 1 + len(list(images.rglob("*.jpg")))
    half = tmp_path / "h.state"
    argv = ["export", "--checkpoint", str(trained), "--format", "state", "--state-dtype", "float16"]
    assert main(argv + ["--out", str(half)]) == 0
    assert load_file(str(half))["backbone.vit.cls_token"].dtype == torch.float16
    assert main(["export", "--checkpoint", str(trained), "--state-dtype", "float16", "--out", str(tmp_path / "t")]) == 2
    assert "--state-dtype applies to --format state, not to --format timm" in capsys.readouterr().err


def _images(run: Path) -> Path:
    """The images folder of the run's synthetic set."""
    from ramstrans.data import load_index

    return load_index(load_model(run).run_config("the test").data).root / "images"


def test_the_kind_of_a_model_source_is_told_in_one_place(trained, tmp_path):
    (tmp_path / "m.onnx").write_bytes(b"")
    (tmp_path / "timm").mkdir()
    (tmp_path / "timm" / "config.json").write_text("{}")
    (tmp_path / "empty").mkdir()
    assert source_kind(trained) == "run folder" and source_kind(trained / "checkpoint.pth") == "checkpoint"
    assert source_kind(tmp_path / "m.onnx") == "ONNX file" and source_kind(tmp_path / "timm") == "timm folder"
    with pytest.raises(UsageError, match="empty is a folder without a checkpoint or an export: it is not a run"):
        source_kind(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        source_kind(tmp_path / "nothing")
    assert EvalRequest(str(trained)).split == "test"

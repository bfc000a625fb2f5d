"""Hostile inputs through the CLI (in-process, tiny data): each gets exit 2 (check-data: 1) and one sentence naming the
culprit, never a traceback, and a run folder that existed before is left exactly as it was."""

import json
import shutil
import struct
import zlib
from pathlib import Path

import pytest
import torch
from conftest import TINY_TRAIN, eval_summary

from ramstrans.cli import main

pytestmark = pytest.mark.slow  # end to end through the CLI or several processes


def _sets(*items):
    return [a for it in items for a in ("--set", it)]


def _bomb_png(path: Path) -> Path:
    """A PNG whose header claims 40,000 x 40,000 pixels (a decompression bomb) with a few bytes of data."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 40000, 40000, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"\0" * 100))
        + chunk(b"IEND", b"")
    )
    return path


def _first_test_image(root: Path) -> Path:
    return sorted((root / "images").rglob("*_0_0000.jpg"))[0]


def _data_copy(ctx, spoil=None):
    """A copy of the tiny synthetic set; ``spoil(first test image, first train image)`` damages it."""
    root = shutil.copytree(ctx["synthetic"], ctx["tmp"] / "data")
    if spoil is not None:
        spoil(_first_test_image(root), sorted((root / "images").rglob("*_1_0000.jpg"))[0])
    return root


def _empty_file(test_img, train_img):
    test_img.write_bytes(b"")
    train_img.write_bytes(b"")


def _bomb(test_img, train_img):
    _bomb_png(test_img)
    _bomb_png(train_img)


def _empty_lists(root):
    for name in ("images.txt", "image_class_labels.txt", "train_test_split.txt", "bounding_boxes.txt"):
        (root / name).write_text("")


def _nested_inat(ctx):
    root = ctx["tmp"] / "inat"
    root.mkdir()
    for name in ("train2017.json", "val2017.json"):
        (root / name).write_text("[" * 100000 + "]" * 100000)
    return root


def _ckpt(ctx, edit):
    """A copy of the trained checkpoint, edited."""
    state = torch.load(ctx["run"] / "checkpoint.pth", weights_only=True)
    edit(state)
    torch.save(state, ctx["tmp"] / "edited.pth")
    return str(ctx["tmp"] / "edited.pth")


def _nan_weights(state):
    state["model"]["backbone.vit.head.weight"].fill_(float("nan"))


def _with_temperature(ctx, value):
    """``eval`` of a copy of the trained checkpoint with a stored temperature of ``value`` beside it."""
    path = _ckpt(ctx, lambda state: None)
    Path(path + ".temperature.json").write_text(json.dumps({"temperature": value, "step": 3, "weights": "raw"}))
    return ["eval", "--checkpoint", path, "--workers", "0", "--no-progress", "--output", str(ctx["tmp"] / "ev")]


def _resume(ctx, *sets):
    return ["train", "--no-progress", "--resume", str(ctx["run"] / "checkpoint.pth")] + _sets(*sets)


def _train_on(root, *sets):
    return ["train", "--no-progress", "--output-dir", "{tmp}/new"] + _sets(*TINY_TRAIN, f"data.root={root}", *sets)


def _eval_on(ctx, root, *extra):
    return [
        "eval",
        "--checkpoint",
        str(ctx["run"] / "checkpoint.pth"),
        "--data-root",
        str(root),
        "--workers",
        "0",
        "--no-progress",
        "--output",
        str(ctx["tmp"] / "ev"),
        *extra,
    ]


# (case id, fn(ctx) -> argv, exit code, fragments of the one sentence)
def _new_run(c, *extra):
    """A new tiny run with ``extra`` settings (refused before anything is written)."""
    return ["train", "--no-progress", "--output-dir", "{tmp}/new"] + _sets(*TINY_TRAIN, *extra)


CASES = [
    # 1. empty or undecodable files
    ("train_empty_image", lambda c: _train_on(_data_copy(c, _empty_file)), 2, ["_0000.jpg", "the file is empty"]),
    ("eval_empty_image", lambda c: _eval_on(c, _data_copy(c, _empty_file)), 2, ["_0_0000.jpg", "the file is empty"]),
    ("eval_bomb", lambda c: _eval_on(c, _data_copy(c, _bomb)), 2, ["_0_0000.jpg", "too large to decode"]),
    (
        "visualize_empty_image",
        lambda c: [
            "visualize",
            "--checkpoint",
            str(c["run"] / "checkpoint.pth"),
            "--images",
            str(_first_test_image(_data_copy(c, _empty_file))),
        ],
        2,
        ["_0_0000.jpg", "the file is empty"],
    ),
    (
        "check_data_empty_image",
        lambda c: ["check-data", "--dataset", "cub", "--root", str(_data_copy(c, _empty_file)), "--no-progress"],
        1,
        ["unreadable", "_0_0000.jpg cannot be decoded (the file is empty)"],
    ),
    (
        "check_data_bomb",
        lambda c: ["check-data", "--dataset", "cub", "--root", str(_data_copy(c, _bomb)), "--no-progress"],
        1,
        ["_0_0000.jpg is too large to decode"],
    ),
    # 2. empty data sets
    (
        "check_data_no_images",
        lambda c: ["check-data", "--dataset", "cub", "--root", str(_spoiled_root(c, _empty_lists)), "--no-progress"],
        1,
        ["structure", "the train split", "has no images"],
    ),
    ("train_no_images", lambda c: _train_on(_spoiled_root(c, _empty_lists)), 2, ["the train split", "has no images"]),
    # 3. values the types allow but the code cannot use
    ("batch_size_0", lambda c: _resume(c, "train.batch_size=0"), 2, ["train.batch_size", ">= 1", "got 0"]),
    ("ckpt_every_0", lambda c: _resume(c, "train.ckpt_every=0"), 2, ["train.ckpt_every", ">= 1"]),
    ("log_every_0", lambda c: _resume(c, "train.log_every=0"), 2, ["train.log_every", ">= 1"]),
    (
        "negative_depth",
        lambda c: _train_on(c["synthetic"], "model.backbone_kwargs={embed_dim: 32, depth: -1, num_heads: 2}"),
        2,
        ["depth", "-1"],
    ),
    (
        "heads_not_dividing",
        lambda c: _train_on(c["synthetic"], "model.backbone_kwargs={embed_dim: 30, depth: 2, num_heads: 4}"),
        2,
        ["divisible by num_heads"],
    ),
    (
        "synthetic_image_size_0",
        lambda c: _resume(c, "data.synthetic.image_size=0"),
        2,
        ["data.synthetic.image_size", ">= 16"],
    ),
    (
        "make_synthetic_size_0",
        lambda c: ["make-synthetic", "--out", str(c["tmp"] / "s"), "--image-size", "0"],
        2,
        ["make-synthetic --image-size must be a whole number ≥ 16, got 0"],
    ),
    # 4. checkpoints that do not fit
    (
        "resume_other_architecture",
        lambda c: _resume(c, "train.steps=4", "model.backbone_kwargs={embed_dim: 64, depth: 2, num_heads: 2}"),
        2,
        ["model.backbone_kwargs.embed_dim is 32, the configured one 64"],
    ),
    (
        "resume_other_classes",
        lambda c: _resume(c, "train.steps=4", "data.synthetic.num_classes=4"),
        2,
        ["other classes"],
    ),
    (
        "eval_no_head",
        lambda c: [
            "eval",
            "--checkpoint",
            _ckpt(c, lambda s: [s["model"].pop(k) for k in ("backbone.vit.head.weight", "backbone.vit.head.bias")]),
        ],
        2,
        ["backbone.vit.head", "is missing"],
    ),
    (
        "eval_no_config",
        lambda c: ["eval", "--checkpoint", _ckpt(c, lambda s: s.pop("config"))],
        2,
        ["no 'config' entry"],
    ),
    (
        "eval_nan_weights",
        lambda c: ["eval", "--checkpoint", _ckpt(c, _nan_weights)],
        2,
        ["non-finite weights", "backbone.vit.head.weight"],
    ),
    (
        "export_nan_weights",
        lambda c: ["export", "--checkpoint", _ckpt(c, _nan_weights), "--out", str(c["tmp"] / "m.safetensors")],
        2,
        ["non-finite weights"],
    ),
    # 5. odd arguments
    (
        "visualize_num_0",
        lambda c: ["visualize", "--checkpoint", str(c["run"] / "checkpoint.pth"), "--num", "0"],
        2,
        ["visualize --num must be a whole number ≥ 1, got 0"],
    ),
    (
        "check_data_nested_json",
        lambda c: ["check-data", "--dataset", "inat17", "--root", str(_nested_inat(c)), "--no-progress"],
        1,
        ["nests its JSON too deeply"],
    ),
    (
        "train_nested_json",
        lambda c: (
            ["train", "--no-progress", "--output-dir", str(c["tmp"] / "new")]
            + _sets(*TINY_TRAIN, "data.dataset=inat17", f"data.root={_nested_inat(c)}")
        ),
        2,
        ["nests its JSON too deeply"],
    ),
    # 5. distillation
    ("teacher_missing", lambda c: _distill(c, "{tmp}/no_teacher"), 2, ["distill.teacher", "does not exist"]),
    (
        "teacher_other_classes",
        lambda c: _distill(c, c["run"], "data.synthetic.num_classes=4"),
        2,
        ["distill.teacher", "other classes", "3:", "4:"],
    ),
    (
        "teacher_other_image_size",
        lambda c: _distill(c, c["run"] / "checkpoint.pth", "model.img_size=48"),
        2,
        ["distill.teacher", "takes 64-pixel images", "student's batches are 48 pixels"],
    ),
    (
        "distill_teacher_scales_negative",
        lambda c: _distill(c, c["run"], "distill.teacher_scales=-1"),
        2,
        ["distill.teacher_scales", ">= 0"],
    ),
    ("distill_alpha_1.5", lambda c: _distill(c, c["run"], "distill.alpha=1.5"), 2, ["distill.alpha", "in [0, 1]"]),
    ("distill_tau_0", lambda c: _distill(c, c["run"], "distill.tau=0"), 2, ["distill.tau", "> 0"]),
    (
        "distill_scale_3",
        lambda c: _distill(c, c["run"], "distill.scales=[1, 3]"),
        2,
        ["distill.scales", "beyond model.num_scales"],
    ),
    (
        "visualize_classifier",
        lambda c: ["visualize", "--checkpoint", str(_teacher(c)), "--num", "1"],
        2,
        ["resnet10t classifier", "no attention"],
    ),
    # 5b. glance and focus: per-scale sizes, the zoom's source
    (
        "scale_sizes_one_for_two_scales",
        lambda c: _new_run(c, "model.scale_sizes=[32]"),
        2,
        ["model.scale_sizes", "one size per scale"],
    ),
    (
        "scale_sizes_not_whole_patches",
        lambda c: _new_run(c, "model.scale_sizes=[40,64]"),
        2,
        ["model.scale_sizes 40", "not a multiple of the 16-pixel patch"],
    ),
    (
        "source_smaller_than_input",
        lambda c: _new_run(c, "model.zoom_source=source", "data.source_size=48"),
        2,
        ["data.source_size", "at least model.img_size"],
    ),
    (
        "source_size_without_source_zoom",
        lambda c: _new_run(c, "data.source_size=128"),
        2,
        ["data.source_size", "read only with model.zoom_source source"],
    ),
    (
        "scale_sizes_with_window_attention",
        lambda c: _new_run(c, "model.scale_sizes=[32,64]", "model.attn_window=1"),
        2,
        ["model.scale_sizes [32, 32]", "global attention"],
    ),
    # 6. the distilled transformer's options
    (
        "attn_window_beyond_grid",
        lambda c: _resume(c, "train.steps=4", "model.attn_window=4"),
        2,
        ["model.attn_window", "[1, 3]", "4 x 4 patch grid"],
    ),
    ("attn_window_negative", lambda c: _resume(c, "model.attn_window=-1"), 2, ["model.attn_window", ">= 0"]),
    ("ffn_kernel_even", lambda c: _resume(c, "model.ffn=conv", "model.ffn_kernel=2"), 2, ["model.ffn_kernel", "odd"]),
    (
        "fwt_learned_one_class_batches",
        lambda c: (
            ["train", "--no-progress", "--output-dir", "{tmp}/new"]
            + _sets(*TINY_TRAIN, "model.fwt=learned", "train.batch_size=1")
        ),
        2,
        ["model.fwt learned", "at least 2 classes"],
    ),
    (
        "fwt_learned_with_mixing",
        lambda c: _resume(c, "model.fwt=learned", "mix.enabled=true"),
        2,
        ["model.fwt", "mix.enabled"],
    ),
    (
        "classifier_window",
        lambda c: (
            ["train", "--no-progress", "--output-dir", "{tmp}/new"]
            + _sets(
                *TINY_TRAIN,
                "model.type=classifier",
                "model.backbone=resnet10t",
                "model.num_scales=1",
                "loss.scale_weights=[1.0]",
                "model.attn_window=1",
            )
        ),
        2,
        ["model.attn_window", "classifier cannot take it"],
    ),
    # issue 27: long-tail settings out of range, calibration on test, a stored temperature that is no temperature
    ("unknown_sampler", lambda c: _train_on("", "data.sampler=oversample"), 2, ["data.sampler", "class_balanced"]),
    ("negative_tau", lambda c: _train_on("", "loss.logit_adjust=-1"), 2, ["loss.logit_adjust", ">= 0"]),
    ("imbalance_below_1", lambda c: _train_on("", "data.synthetic.imbalance=0.5"), 2, ["imbalance", ">= 1"]),
    (
        "calibrate_on_test",
        lambda c: ["eval", "--checkpoint", str(c["run"]), "--calibrate", "--workers", "0", "--no-progress"],
        2,
        ["--calibrate", "validation only", "'test'"],
    ),
    ("temperature_zero", lambda c: _with_temperature(c, 0.0), 2, ["field 'temperature' must be a number > 0, got 0.0"]),
    (
        "temperature_nan",
        lambda c: _with_temperature(c, "NaN"),
        2,
        ["field 'temperature' must be a number > 0", "got 'NaN'"],
    ),
    # issue 26: a saliency the backbone cannot give, a family timm does not know
    (
        "rollout_on_a_cnn",
        lambda c: (
            ["train", "--no-progress", "--output-dir", "{tmp}/new"]
            + _sets(*TINY_TRAIN, "model.backbone=resnet10t", "model.backbone_kwargs={}")
        ),
        2,
        ["resnet10t", "not a timm VisionTransformer", "model.saliency: activation"],
    ),
    (
        "attn_pool_without_a_pool",
        lambda c: (
            ["train", "--no-progress", "--output-dir", "{tmp}/new"] + _sets(*TINY_TRAIN, "model.saliency=attn_pool")
        ),
        2,
        ["model.saliency attn_pool needs an attention-pooling head", "'token'"],
    ),
    (
        "unknown_saliency",
        lambda c: (
            ["train", "--no-progress", "--output-dir", "{tmp}/new"] + _sets(*TINY_TRAIN, "model.saliency=gradcam")
        ),
        2,
        ["model.saliency", "must be one of rollout, attn_pool, activation"],
    ),
    (
        "transmix_on_activation",
        lambda c: (
            ["train", "--no-progress", "--output-dir", "{tmp}/new"]
            + _sets(
                *TINY_TRAIN,
                "model.backbone=resnet10t",
                "model.backbone_kwargs={}",
                "model.saliency=activation",
                "mix.enabled=true",
            )
        ),
        2,
        ["mix.transmix", "CutMix with area weights"],
    ),
    (
        "unknown_family",
        lambda c: (
            ["train", "--no-progress", "--output-dir", "{tmp}/new"]
            + _sets(
                *TINY_TRAIN,
                "model.backbone=convnext_nonexistent_v9",
                "model.backbone_kwargs={}",
                "model.saliency=activation",
            )
        ),
        2,
        ["convnext_nonexistent_v9", "timm has no model of that name"],
    ),
    (
        "classifier_two_scales",
        lambda c: (
            ["train", "--no-progress", "--output-dir", "{tmp}/new"]
            + _sets(*TINY_TRAIN, "model.type=classifier", "model.backbone=resnet10t")
        ),
        2,
        ["model.num_scales", "classifier"],
    ),
    # 7. an output that is one of the inputs, or replaces a file the user has (issue 23: data loss)
    (
        "predict_out_is_the_checkpoint",
        lambda c: _predict(c, "--out", str(c["run"] / "checkpoint.pth")),
        2,
        ["--out", "is one of the command's inputs"],
    ),
    (
        "predict_out_is_a_hard_link_of_it",
        lambda c: _predict(c, "--out", _hard_link(c)),
        2,
        ["--out", "is one of the command's inputs"],
    ),
    (
        "predict_out_is_the_image",
        lambda c: _predict(c, "--out", str(_mine(c))),
        2,
        ["--out", "mine.jpg is one of the command's inputs"],
    ),
    (
        "predict_out_exists",
        lambda c: _predict(c, "--out", str(_users_file(c))),
        2,
        ["--out", "notes.txt already exists", "--overwrite"],
    ),
    (
        "export_onnx_onto_the_checkpoint",
        lambda c: [
            "export",
            "--checkpoint",
            str(c["run"] / "checkpoint.pth"),
            "--format",
            "onnx",
            "--out",
            str(c["run"] / "checkpoint.pth"),
        ],
        2,
        ["--out", "is one of the command's inputs"],
    ),
    (
        "export_timm_into_the_run_folder",
        lambda c: ["export", "--checkpoint", str(c["run"] / "checkpoint.pth"), "--out", str(c["run"]), "--overwrite"],
        2,
        ["--out", "holds one of the command's inputs"],
    ),
    (
        "export_onnx_onto_a_users_file",
        lambda c: [
            "export",
            "--checkpoint",
            str(c["run"] / "checkpoint.pth"),
            "--format",
            "onnx",
            "--out",
            str(_users_file(c)),
        ],
        2,
        ["notes.txt already exists"],
    ),
    (
        "eval_output_holds_files",
        lambda c: [
            "eval",
            "--checkpoint",
            str(c["run"] / "checkpoint.pth"),
            "--workers",
            "0",
            "--output",
            str(_users_file(c).parent),
        ],
        2,
        ["--output", "already exists"],
    ),
    # 8. values that used to hang, pass silently or end in someone else's words (issue 23)
    ("config_alias_bomb", lambda c: _train_cfg(c, _ALIAS_BOMB), 2, ["model.mean", "more than 10000 values"]),
    (
        "config_duplicate_key",
        lambda c: _train_cfg(c, "train: {steps: 2, steps: 4}\n"),
        2,
        ["line 1", "'steps' appears twice"],
    ),
    ("config_utf16", lambda c: _train_cfg(c, "train: {steps: 2}\n".encode("utf-16")), 2, ["not UTF-8 text"]),
    ("tau_infinite", lambda c: _resume(c, "distill.tau=.inf"), 2, ["distill.tau", "finite number"]),
    (
        "eval_head_dist_without_token",
        lambda c: _resume(c, "model.eval_head=dist"),
        2,
        ["model.eval_head", "model.dist_token: true"],
    ),
    (
        "img_size_not_whole_patches",
        lambda c: _train_on(c["synthetic"], "model.img_size=60"),
        2,
        ["model.img_size 60", "16-pixel patches", "use 48 or 64"],
    ),
    ("one_class", lambda c: _train_on(_spoiled_root(c, _one_class)), 2, ["defines 1 class(es)", "at least 2"]),
    (
        "listed_image_missing",
        lambda c: _train_on(_data_copy(c, _remove_train_image)),
        2,
        ["_1_0000.jpg is listed but does not exist", "data.skip_corrupt"],
    ),
    ("data_root_is_a_file", lambda c: _train_on(_first_test_image(c["synthetic"])), 2, ["is a file", "data.root"]),
    (
        "checkpoint_step_not_a_number",
        lambda c: ["eval", "--checkpoint", _ckpt(c, _bad_step)],
        2,
        ["damaged 'step' entry", "'x'"],
    ),
    (
        "checkpoint_without_class_names",
        lambda c: ["eval", "--checkpoint", _ckpt(c, _no_names)],
        2,
        ["damaged 'class_names' entry"],
    ),
    (
        "resume_without_optimizer",
        lambda c: ["train", "--resume", _ckpt(c, lambda s: s.pop("optimizer"))],
        2,
        ["no 'optimizer' entry", "model.pretrained"],
    ),
    ("resume_without_rng", lambda c: ["train", "--resume", _ckpt(c, lambda s: s.pop("rng"))], 2, ["no 'rng' entry"]),
    (
        "export_json_damaged",
        lambda c: ["predict", _damaged_export(c), str(_first_test_image(c["synthetic"]))],
        2,
        ["ramstrans.json is damaged"],
    ),
    (
        "eval_negative_workers",
        lambda c: ["eval", "--checkpoint", str(c["run"]), "--workers", "-1"],
        2,
        ["eval --workers must be a whole number ≥ 0, got -1"],
    ),
    ("predict_negative_workers", lambda c: _predict(c, "--workers", "-1"), 2, ["--workers must be a whole number ≥ 0"]),
    (
        "check_data_negative_workers",
        lambda c: ["check-data", "--dataset", "cub", "--root", str(c["synthetic"]), "--workers", "-1"],
        2,
        ["--workers must be a whole number ≥ 0"],
    ),
    (
        "bench_demo_bad_set",
        lambda c: ["bench", "demo", "--set", "train.steps=abc", "--out", str(c["tmp"] / "b")],
        2,
        ["train.steps", "must be int"],
    ),
    (
        "bench_inat_no_images",
        lambda c: ["bench", "inat", "--num-images", "0"],
        2,
        ["bench inat --num-images must be a whole number ≥ 1, got 0"],
    ),
    (
        "bench_zoom_bad_student_grid",
        lambda c: ["bench", "zoom", "--student-grid", "1:1", "--out", str(c["tmp"] / "z")],
        2,
        ["--student-grid entries are ALPHA:TAU:MIX", "'1:1'"],
    ),
    (
        "bench_zoom_student_grid_mix_not_0_or_1",
        lambda c: ["bench", "zoom", "--student-grid", "1:1:2", "--out", str(c["tmp"] / "z")],
        2,
        ["MIX 0 or 1", "'1:1:2'"],
    ),
    (
        "bench_zoom_bad_sd_target",
        lambda c: ["bench", "zoom", "--sd-target", "fused,mean", "--out", str(c["tmp"] / "z")],
        2,
        ["--sd-target takes fused and/or last", "'fused,mean'"],
    ),
    (
        "bench_zoom_sd_beta_zero",
        lambda c: ["bench", "zoom", "--sd-beta", "0,1", "--out", str(c["tmp"] / "z")],
        2,
        ["--sd-beta must be comma-separated positive numbers", "'0,1'"],
    ),
    (
        "bench_zoom_bad_multiples",
        lambda c: ["bench", "zoom", "--stage", "report", "--multiples", "one", "--out", str(c["tmp"] / "z")],
        2,
        ["--multiples must be comma-separated positive numbers", "'one'"],
    ),
    (
        "bench_zoom_fractional_multiple",
        lambda c: ["bench", "zoom", "--stage", "report", "--multiples", "1,1.5", "--out", str(c["tmp"] / "z")],
        2,
        ["--multiples must be whole multiples", "'1,1.5'"],
    ),
    (
        "bench_zoom_infinite_multiple",
        lambda c: ["bench", "zoom", "--stage", "report", "--multiples", "inf", "--out", str(c["tmp"] / "z")],
        2,
        ["--multiples must be comma-separated positive numbers", "'inf'"],
    ),
    ("bench_quantize_no_checkpoints", lambda c: ["bench", "quantize"], 2, ["bench quantize needs --checkpoints"]),
    (
        "bench_quantize_missing_checkpoint",
        lambda c: ["bench", "quantize", "--checkpoints", str(c["tmp"] / "nope.pth"), "--out", str(c["tmp"] / "q")],
        2,
        ["nope.pth does not exist"],
    ),
    (
        "visualize_output_is_the_run_folder",
        lambda c: [
            "visualize",
            "--checkpoint",
            str(c["run"] / "checkpoint.pth"),
            "--output",
            str(c["run"]),
            "--overwrite",
            "--num",
            "1",
        ],
        2,
        ["--output", "holds one of the command's inputs"],
    ),
]


_ALIAS_BOMB = (
    "model:\n  mean: ["
    + ", ".join(
        ["&a [1, 1, 1, 1, 1, 1, 1, 1, 1]"]
        + [f"&{b} [" + ", ".join([f"*{a}"] * 9) + "]" for a, b in zip("abcdefgh", "bcdefghi")]
    )
    + "]\n"
)


def _train_cfg(ctx, text):
    """train with a config file of ``text`` (str or bytes)."""
    path = ctx["tmp"] / "hostile.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return ["train", "--no-progress", "--config", str(path), "--output-dir", str(ctx["tmp"] / "new")]


def _one_class(root):
    (root / "classes.txt").write_text("1 only_class\n")
    (root / "image_class_labels.txt").write_text(
        "".join(f"{line.split()[0]} 1\n" for line in (root / "images.txt").read_text().splitlines())
    )


def _remove_train_image(test_img, train_img):
    train_img.unlink()


def _bad_step(state):
    state["step"] = "x"


def _no_names(state):
    state["class_names"] = []


def _damaged_export(ctx):
    out = ctx["tmp"] / "exported"
    assert main(["export", "--checkpoint", str(ctx["run"]), "--out", str(out)]) == 0
    (out / "ramstrans.json").write_text("{not json")
    return str(out)


def _mine(ctx):
    """The user's own image."""
    mine = ctx["tmp"] / "mine.jpg"
    shutil.copy(_first_test_image(ctx["synthetic"]), mine)
    return mine


def _predict(ctx, *extra):
    return ["predict", str(ctx["run"] / "checkpoint.pth"), str(_mine(ctx)), "--no-progress", *extra]


def _hard_link(ctx):
    link = ctx["tmp"] / "link.pth"
    link.hardlink_to(ctx["run"] / "checkpoint.pth")
    return str(link)


def _users_file(ctx):
    notes = ctx["tmp"] / "mine" / "notes.txt"
    notes.parent.mkdir(exist_ok=True)
    notes.write_text("the user's own notes")
    return notes


def _teacher(ctx):
    """A tiny classifier run (a teacher) trained through the CLI in the test's folder."""
    out = ctx["tmp"] / "teacher"
    assert (
        main(
            ["train", "--no-progress", "--output-dir", str(out)]
            + _sets(
                *TINY_TRAIN,
                "model.type=classifier",
                "model.backbone=resnet10t",
                "model.num_scales=1",
                "loss.scale_weights=[1.0]",
                "model.backbone_kwargs={channels: [8, 8, 16, 16]}",
            )
        )
        == 0
    )
    return out / "checkpoint.pth"


def _distill(ctx, teacher, *extra):
    return ["train", "--no-progress", "--output-dir", "{tmp}/new"] + _sets(
        *TINY_TRAIN, "model.dist_token=true", "distill.enabled=true", f"distill.teacher={teacher}", *extra
    )


def _spoiled_root(ctx, spoil):
    root = shutil.copytree(ctx["synthetic"], ctx["tmp"] / "data")
    spoil(root)
    return root


def _snapshot(folder: Path):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("name,make_argv,code,fragments", CASES, ids=[c[0] for c in CASES])
def test_hostile_input_gets_one_sentence(name, make_argv, code, fragments, trained, synthetic_root, tmp_path, capsys):
    run = shutil.copytree(trained, tmp_path / "run")
    ctx = {"run": run, "synthetic": synthetic_root, "tmp": tmp_path}
    argv = [a.replace("{tmp}", str(tmp_path)) for a in make_argv(ctx)]
    before = _snapshot(run)
    capsys.readouterr()
    assert main(argv) == code
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "Traceback" not in out
    if code == 2:
        lines = [line for line in err.splitlines() if line.startswith("ramstrans: error: ")]
        assert len(lines) == 1, err
        message = lines[0]
    else:  # check-data lists the problems on stdout
        message = out
    for fragment in fragments:
        assert fragment in message, message
    assert _snapshot(run) == before  # nothing in the existing run folder was touched
    notes = tmp_path / "mine" / "notes.txt"  # the user's files that outputs aimed at are whole
    assert not notes.exists() or notes.read_text() == "the user's own notes"
    if (tmp_path / "mine.jpg").exists():
        assert (tmp_path / "mine.jpg").read_bytes() == _first_test_image(synthetic_root).read_bytes()


def test_skip_corrupt_skips_empty_and_oversized_images(trained, synthetic_root, tmp_path, capsys):
    root = _data_copy({"synthetic": synthetic_root, "tmp": tmp_path}, _empty_file)
    _bomb_png(sorted((root / "images").rglob("*_0_0001.jpg"))[0])
    argv = [
        "eval",
        "--checkpoint",
        str(trained / "checkpoint.pth"),
        "--data-root",
        str(root),
        "--workers",
        "0",
        "--no-progress",
        "--output",
        str(tmp_path / "ev"),
        "--skip-corrupt",
    ]
    assert main(argv) == 0
    res = eval_summary(capsys)
    assert res["skipped"] == 2 and res["images"] == 7
    sets = TINY_TRAIN + [f"data.root={root}", "data.skip_corrupt=true", f"train.output_dir={tmp_path / 'r'}"]
    assert main(["train", "--no-progress"] + _sets(*sets)) == 0
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["test"]["skipped"] == 2


def test_every_image_unreadable_is_an_error_not_zero_percent(trained, synthetic_root, tmp_path, capsys):
    root = shutil.copytree(synthetic_root, tmp_path / "data")
    for p in (root / "images").rglob("*_0_*.jpg"):  # every test image
        p.write_bytes(b"")
    argv = [
        "eval",
        "--checkpoint",
        str(trained / "checkpoint.pth"),
        "--data-root",
        str(root),
        "--workers",
        "0",
        "--no-progress",
        "--skip-corrupt",
    ]
    assert main(argv) == 2
    assert "every image of the test split was unreadable (9 skipped)" in capsys.readouterr().err


def test_debug_shows_the_original_exception_as_the_cause(trained, tmp_path, capsys):
    """A corrupt checkpoint is one sentence; with --debug the traceback shows what torch raised as its cause."""
    bad = tmp_path / "checkpoint.pth"
    bad.write_bytes((trained / "checkpoint.pth").read_bytes()[:2000])  # truncated mid-file
    assert main(["eval", "--checkpoint", str(bad)]) == 2
    plain = capsys.readouterr().err
    assert plain.strip().splitlines() == [
        f"ramstrans: error: {bad} is not a readable ramstrans checkpoint (RuntimeError)"
    ]
    assert main(["--debug", "eval", "--checkpoint", str(bad)]) == 2
    err = capsys.readouterr().err
    cause, _, translated = err.partition("The above exception was the direct cause of the following exception:")
    assert "RuntimeError: PytorchStreamReader failed" in cause and "torch/serialization.py" in cause
    assert "ramstrans.errors.CheckpointError: " in translated and translated.strip().endswith(plain.strip())

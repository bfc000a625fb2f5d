"""What the dataclass types cannot express: the range of every value, and the settings that exclude each other;
checked whenever a config is loaded."""

from collections.abc import Callable
from typing import Any

from ramstrans.config.schema import Config
from ramstrans.errors import ConfigError, short_repr
from ramstrans.registry import attention_saliencies, saliencies

__all__ = ["validate"]


def _at_least(low: int) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v >= low), f">= {low}"


def _one_of(*choices: str) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v in choices), f"{', '.join(choices[:-1])} or {choices[-1]}"


_UNIT = ((lambda v: 0 <= v < 1), "in [0, 1)")
_PROBABILITY = ((lambda v: 0 <= v <= 1), "in [0, 1]")
_POSITIVE = ((lambda v: v > 0), "> 0")

# Ranges the dataclass types cannot express, checked whenever a config is loaded: (key, test, allowed values).
_RANGES: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    ("model.type", *_one_of("rams", "classifier")),
    ("model.eval_head", *_one_of("mean", "cls", "dist")),
    ("model.attn_window", _at_least(0)[0], ">= 0 (0 = global attention)"),
    ("model.ffn", *_one_of("mlp", "conv")),
    ("model.ffn_kernel", lambda v: v >= 1 and v % 2 == 1, "odd and >= 1"),
    ("model.ffn_prefix", *_one_of("mlp", "bypass")),
    ("model.fwt", *_one_of("off", "fixed", "learned")),
    ("model.img_size", *_at_least(1)),
    ("model.num_scales", *_at_least(1)),
    ("model.scale_sizes", lambda v: all(s >= 1 for s in v), "a list of sizes >= 1 (empty: every scale at img_size)"),
    ("model.zoom_source", *_one_of("input", "source")),
    ("model.alpha", *_POSITIVE),
    ("model.residual", *_at_least(0)),
    ("model.rollout_rows", *_one_of("cls", "mean")),
    ("model.drop_path_rate", *_UNIT),
    ("model.download_timeout_s", *_POSITIVE),
    ("data.resize", *_at_least(1)),
    ("data.source_size", _at_least(0)[0], ">= 0 (0 = off)"),
    ("data.synthetic.detail", lambda v: 0 < v <= 2, "in (0, 2]"),
    ("data.num_workers", *_at_least(0)),
    ("data.val_fraction", *_UNIT),
    ("data.sampler", *_one_of("uniform", "class_balanced", "sqrt")),
    ("data.synthetic.imbalance", lambda v: 1 <= v < float("inf"), "finite and >= 1 (1 = balanced)"),
    ("loss.logit_adjust", lambda v: 0 <= v < float("inf"), "finite and >= 0 (0 = off)"),
    ("data.synthetic.num_classes", *_at_least(1)),
    ("data.synthetic.train_per_class", *_at_least(1)),
    ("data.synthetic.test_per_class", *_at_least(1)),
    ("data.synthetic.image_size", *_at_least(16)),
    ("data.pretext_test_size", *_at_least(1)),
    ("loss.scale_weights", lambda v: len(v) >= 1 and min(v) >= 0, "a non-empty list of numbers >= 0"),
    ("loss.label_smoothing", *_UNIT),
    ("loss.self_distill", _at_least(0)[0], ">= 0 (0 = off)"),
    ("loss.self_distill_tau", *_POSITIVE),
    ("loss.self_distill_target", *_one_of("fused", "last")),
    ("loss.self_distill_source", *_one_of("online", "ema")),
    ("mix.mixup_alpha", *_at_least(0)),
    ("mix.cutmix_alpha", *_at_least(0)),
    ("mix.prob", *_PROBABILITY),
    ("mix.switch_prob", *_PROBABILITY),
    ("mix.label_smoothing", *_UNIT),
    ("mix.area_weight", *_PROBABILITY),
    ("distill.type", *_one_of("soft", "hard")),
    ("distill.alpha", *_PROBABILITY),
    ("distill.tau", *_POSITIVE),
    ("distill.kl_reduction", *_one_of("batchmean", "classes")),
    ("distill.teacher_scales", _at_least(0)[0], ">= 0 (0 = all of the teacher's scales)"),
    (
        "distill.scales",
        lambda v: len(v) >= 1 and len(set(v)) == len(v) and min(v) >= 1,
        "a non-empty list of distinct scales >= 1",
    ),
    ("train.steps", *_at_least(1)),
    ("train.batch_size", *_at_least(1)),
    ("train.grad_accum", *_at_least(1)),
    ("train.lr_ref_batch", *_at_least(0)),
    ("train.lr", *_at_least(0)),
    ("train.momentum", *_UNIT),
    ("train.weight_decay", *_at_least(0)),
    ("train.warmup_steps", *_at_least(0)),
    ("train.warmup_lr", *_at_least(0)),
    ("train.min_lr", *_at_least(0)),
    ("train.layer_decay", _PROBABILITY[0], "in [0, 1] (0 = off)"),
    ("train.clip_grad", *_at_least(0)),
    ("train.ema_decay", _UNIT[0], "in [0, 1) (0 = off)"),
    ("train.dist_timeout_s", *_POSITIVE),
    ("train.log_every", *_at_least(1)),
    ("train.ckpt_every", *_at_least(1)),
    ("train.keep_checkpoints", _at_least(0)[0], ">= 0 (0 = all)"),
    ("train.eval_every", *_at_least(0)),
    ("train.eval_batch_size", *_at_least(1)),
)


# Settings that exclude each other: (key named in the error, test that the config breaks the rule, why).
_COMBINATIONS: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    (
        "model.scale_sizes",
        lambda c: len(c.model.scale_sizes) not in (0, c.model.num_scales),
        "must give one size per scale (model.num_scales of them), or be empty",
    ),
    (
        "model.scale_sizes",
        lambda c: c.model.type == "classifier" and c.model.scale_sizes,
        "needs model.type rams (a classifier runs one scale at model.img_size)",
    ),
    (
        "model.zoom_source",
        lambda c: c.model.type == "classifier" and c.model.zoom_source != "input",
        "needs model.type rams (a classifier does not zoom)",
    ),
    (
        "data.source_size",
        lambda c: c.model.zoom_source == "source" and c.data.source_size < c.model.img_size,
        "must be at least model.img_size with model.zoom_source source (the source has at least the input's pixels)",
    ),
    (
        "data.source_size",
        lambda c: c.model.zoom_source != "source" and c.data.source_size != 0,
        "is read only with model.zoom_source source: set it to 0, or set model.zoom_source source",
    ),
    (
        "model.num_scales",
        lambda c: c.model.type == "classifier" and c.model.num_scales != 1,
        "must be 1 for model.type classifier (it has no attention to zoom with)",
    ),
    (
        "model.eval_head",
        lambda c: c.model.eval_head == "dist" and not c.model.dist_token,
        "dist needs model.dist_token: true (without a distillation token there is only the class head)",
    ),
    (
        "model.dist_token",
        lambda c: c.model.type == "classifier" and c.model.dist_token,
        "needs model.type rams (a ViT student); a classifier has no tokens",
    ),
    (
        "model.attn_window",
        lambda c: c.model.type == "classifier" and c.model.attn_window,
        "needs model.type rams (a ViT's attention); a classifier cannot take it",
    ),
    (
        "model.ffn",
        lambda c: c.model.type == "classifier" and c.model.ffn != "mlp",
        "needs model.type rams (a ViT's blocks); a classifier cannot take it",
    ),
    (
        "model.fwt",
        lambda c: c.model.type == "classifier" and c.model.fwt != "off",
        "needs model.type rams (a ViT's blocks); a classifier cannot take it",
    ),
    (
        "model.fwt",
        lambda c: c.model.fwt == "learned" and c.mix.enabled,
        "learned needs hard labels to split the classes: it cannot be combined with mix.enabled",
    ),
    (
        "mix.transmix",
        lambda c: c.model.type == "classifier" and c.mix.enabled and c.mix.transmix,
        "needs a ViT's attention; set mix.transmix=false for model.type classifier",
    ),
    (
        "mix.transmix",
        lambda c: (
            c.model.type == "rams"
            and c.mix.enabled
            and c.mix.transmix
            and c.model.saliency not in attention_saliencies()
        ),
        "needs attention; set mix.transmix=false (CutMix with area weights) for a model.saliency that is not "
        "attention (activation)",
    ),
    (
        "model.saliency",
        lambda c: c.model.type == "classifier" and c.model.saliency != "rollout",
        "needs model.type rams (a classifier does not zoom)",
    ),
    (
        "data.sampler",
        lambda c: c.data.dataset == "pretext" and c.data.sampler != "uniform",
        "must be uniform for the generated pretext stream (it has no training split to weigh)",
    ),
    (
        "loss.self_distill",
        lambda c: c.loss.self_distill > 0 and c.model.num_scales < 2,
        "needs model.num_scales >= 2: the zoomed scales are scale 1's teacher",
    ),
    (
        "loss.self_distill",
        lambda c: c.loss.self_distill > 0 and c.distill.enabled,
        "cannot be combined with distill.enabled: scale 1 learns from one teacher, the zoom or distill.teacher",
    ),
    (
        "loss.self_distill_source",
        lambda c: c.loss.self_distill > 0 and c.loss.self_distill_source == "ema" and c.train.ema_decay <= 0,
        "ema needs train.ema_decay > 0",
    ),
    (
        "distill.teacher",
        lambda c: c.distill.enabled and not c.distill.teacher,
        "must name the teacher (a ramstrans checkpoint or an exported timm folder) when distill.enabled is true",
    ),
    (
        "distill.scales",
        lambda c: c.distill.enabled and max(c.distill.scales) > c.model.num_scales,
        "names a scale beyond model.num_scales",
    ),
)


def _get(cfg: Config, key: str) -> Any:
    node = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node


def validate(cfg: Config) -> Config:
    """Check the ranges of ``_RANGES``, the saliency against the registered backbone families, and ``_COMBINATIONS``.

    Raises:
        ConfigError: the first value out of range, naming the key and what it allows.
    """
    for key, ok, allowed in _RANGES:
        value = _get(cfg, key)
        if not ok(value):
            raise ConfigError(f"config key '{key}' must be {allowed}, got {short_repr(value)}")
    if cfg.model.saliency not in saliencies():  # the registered families' names, read when the config is
        raise ConfigError(
            f"config key 'model.saliency' must be one of {', '.join(saliencies())} (the saliencies of the registered "
            f"backbone families), got {short_repr(cfg.model.saliency)}"
        )
    for key, broken, why in _COMBINATIONS:
        if broken(cfg):
            raise ConfigError(f"config key '{key}' {why}")
    return cfg

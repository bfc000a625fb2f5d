"""All settings in one tree of dataclasses; YAML files and ``--set`` overrides hold only differences.

The defaults are the paper recipe (ViT-B/16 at 448 on CUB-200-2011, SGD momentum 0.9, lr 0.03, batch 16, 500 warm-up
steps then cosine to 10,000, clip 1.0, α = 1.3). Unknown keys and values of the wrong type are errors that name the key.
"""

import dataclasses
import math
import reprlib
import sys
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from ramstrans.errors import ConfigError
from ramstrans.runtime.files import write_text_atomic

__all__ = ["Config", "ConfigError", "load_config", "save_config", "config_from_dict", "find_config", "config_diff"]

# the repository's configs/ (editable install), or where a regular install puts them
CONFIG_DIRS = (Path(__file__).resolve().parent.parent / "configs", Path(sys.prefix) / "share" / "ramstrans" / "configs")
DEFAULT_CONFIG = "synthetic_cpu"


@dataclass
class ModelConfig:
    type: str = "rams"  # rams (RAMS-Trans on a ViT) | classifier (any timm classifier, e.g. a CNN teacher)
    backbone: str = "vit_base_patch16_224"  # timm model name (a plain ViT for rams; any classifier for classifier)
    img_size: int = 448  # network input (the training / test crop)
    num_scales: int = 2  # 1 = plain ViT baseline, 2 = RAMS-Trans
    alpha: float = 1.3  # proposal threshold: g > alpha * mean(g)
    residual: float = 1.0  # χ in rownorm(A + χI)
    rollout_rows: str = "cls"  # "cls" or "mean" (official code)
    pretrained: str | None = None  # .npz / .safetensors / .pth / ramstrans checkpoint / timm tag / shipped name
    download_timeout_s: float = 60.0  # the longest a hub download of pretrained weights may take in all
    drop_path_rate: float = 0.0  # stochastic depth
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)  # extra timm kwargs (depth, embed_dim, ...)
    mean: list[float] | None = None  # normalisation override; None = the backbone's pretrained config
    std: list[float] | None = None
    grad_checkpointing: bool = False  # trade compute for memory
    dist_token: bool = False  # a class + distillation token per scale (a DeiT student; timm's distilled layout)
    eval_head: str = "mean"  # with dist_token, the test-time logits: mean of the two heads | cls | dist
    attn_window: int = 0  # 0: global attention; r >= 1: patches attend to patches within Chebyshev distance r
    ffn: str = "mlp"  # mlp (timm's) | conv (a depthwise convolution of the patch tokens, identity-initialised)
    ffn_kernel: int = 3  # conv: odd kernel of the depthwise convolution
    ffn_prefix: str = "mlp"  # conv: the class / distillation tokens go through fc1 -> act -> fc2 (mlp) or bypass it
    fwt: str = "off"  # feature-wise transformation in training: off | fixed | learned (by learning-to-learn)


@dataclass
class SyntheticConfig:
    num_classes: int = 10  # fine-grained classes (<= the generator's attribute combinations)
    train_per_class: int = 150
    test_per_class: int = 50
    image_size: int = 160  # side of the generated images in pixels
    seed: int = 0


@dataclass
class DataConfig:
    dataset: str = "cub"  # cub | dogs | inat17 | nabirds | folder | csv | synthetic | pretext (for pretraining)
    root: str = "datasets/CUB_200_2011"  # data set root (synthetic: generated here on first use)
    resize: int = 600  # shortest side before the (random / center) crop of model.img_size
    hflip: bool = True  # random horizontal flip in training
    num_workers: int = 4  # DataLoader workers
    val_fraction: float = 0.0  # stratified, seeded validation split carved from train (0 = none)
    skip_corrupt: bool = False  # skip unreadable images (counted) instead of stopping
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)  # also image_size / seed of "pretext"
    pretext_test_size: int = 1200  # fixed evaluation images of the pretext stream (drawn with seed + 1)


@dataclass
class LossConfig:
    scale_weights: list[float] = field(default_factory=lambda: [1.0, 1.0])  # per scale; λ = weight of scale 2
    label_smoothing: float = 0.0  # on hard labels
    self_distill: float = 0.0  # β: scale 1 learns the zoom's detached prediction: β·τ²·KL(target ‖ scale 1) (0: off)
    self_distill_tau: float = 1.0  # τ of that term
    self_distill_target: str = "fused"  # fused: the mean of all scales' softmax (the test-time fusion) | last: the
    # deepest scale alone
    self_distill_source: str = "online"  # online: the step's own forward | ema: the EMA weights' forward (two more
    # passes without gradient; needs train.ema_decay > 0)


@dataclass
class MixConfig:
    enabled: bool = False  # Mixup / CutMix / TransMix on training batches (timm Mixup parameters below)
    mixup_alpha: float = 0.8  # Beta(α, α) of mixup; 0 = off
    cutmix_alpha: float = 1.0  # Beta(α, α) of cutmix; 0 = off
    prob: float = 1.0  # chance that a batch is mixed
    switch_prob: float = 0.8  # chance of CutMix when both are on
    label_smoothing: float = 0.1  # applied once, to the mixed soft targets
    correct_lam: bool = True  # area λ from the clipped box
    transmix: bool = True  # CutMix labels re-weighted by attention (TransMix); False = area only
    area_weight: float = 0.5  # λ = w·λ_area + (1 - w)·λ_attn


@dataclass
class DistillConfig:
    enabled: bool = False  # knowledge distillation from a frozen teacher (into the distillation token's head, or
    # with no distillation token into the only head: (1 - λ)·CE + λ·KD)
    teacher: str = ""  # a ramstrans checkpoint (or run folder) or an exported timm folder, same classes and size
    teacher_scales: int = 0  # a multi-scale RAMS-Trans teacher: how many of its scales it fuses (0 = all; 1 = its
    # single pass)
    type: str = "soft"  # soft: τ²·KL(teacher ‖ student) at temperature τ | hard: CE to the teacher's argmax
    alpha: float = 0.5  # λ: loss = (1 - λ)·CE(class head, labels) + λ·distillation term
    tau: float = 1.0  # temperature of the soft term
    kl_reduction: str = "batchmean"  # batchmean (timm: KL summed over classes, mean over images) | classes (DeiT:
    # the summed KL divided by images x classes, an effective λ K times smaller)
    scales: list[int] = field(default_factory=lambda: [1])  # the scales (1-based) the teacher supervises


@dataclass
class TrainConfig:
    steps: int = 10000  # optimizer steps
    batch_size: int = 16  # per process and batch; the global batch is batch_size x grad_accum x processes
    grad_accum: int = 1  # batches per optimizer step (gradient accumulation)
    lr_ref_batch: int = 0  # if > 0: lr scales linearly by global batch / lr_ref_batch (the paper's is 16)
    opt: str = "momentum"  # timm optimizer name: "momentum" is plain SGD momentum (timm's "sgd" is Nesterov)
    lr: float = 0.03
    momentum: float = 0.9
    weight_decay: float = 0.0
    warmup_steps: int = 500  # linear warm-up, then cosine to min_lr at `steps`
    warmup_lr: float = 0.0
    min_lr: float = 0.0
    layer_decay: float = 0.0  # in (0, 1]: layer-wise lr decay through timm's optimizer factory (0 = off)
    clip_grad: float = 1.0  # max grad norm (0 = off)
    ema_decay: float = 0.0  # in (0, 1): keep an EMA of the weights (timm ModelEmaV3), reported when on (0 = off)
    ema_warmup: bool = False  # timm's EMA warm-up: decay 1 - (1 + step)^(-2/3), capped at ema_decay
    compile: bool = False  # torch.compile the training forward
    compile_backend: str = "inductor"  # torch.compile backend ("aot_eager": no code generation)
    amp: bool = True  # mixed precision on CUDA (bf16 if supported, else fp16 + scaler)
    seed: int = 42
    device: str = "auto"  # auto | cpu | cuda (under torchrun: cuda:LOCAL_RANK)
    dist_timeout_s: float = 600.0  # torchrun: max wait for the other processes (rendezvous, collectives)
    output_dir: str = "runs/cub_vitb16_448"
    log_every: int = 20  # steps between training records (and log lines when stderr is not a terminal)
    tensorboard: bool = False  # also write TensorBoard events (pip install 'ramstrans[tensorboard]')
    ckpt_every: int = 1000  # steps between checkpoints (and at the end)
    keep_checkpoints: int = 1  # newest checkpoints kept (checkpoint_step<N>.pth beside checkpoint.pth); 0 = all
    eval_every: int = 0  # steps between test evaluations for the curves (0 = only at the end); never selects
    eval_batch_size: int = 32


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    mix: MixConfig = field(default_factory=MixConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


MAX_VALUES = 10_000  # values one config key may hold (lists and mappings counted through): a YAML alias bomb stops here
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict, _REPR.maxstring, _REPR.maxother = 3, 6, 6, 60, 60


def short_repr(value: Any) -> str:
    """A value as a message shows it: never whole (a long list or string is cut with ...)."""
    return _REPR.repr(value)


def _check_size(value: Any, key: str) -> None:
    """Refuse a value that holds more than ``MAX_VALUES`` values, counting shared (aliased) ones every time they occur
    and stopping at the bound, so a nine-level alias bomb (9^9 values) is refused at once."""
    stack, seen = [value], 0
    while stack:
        node = stack.pop()
        seen += 1
        if seen > MAX_VALUES:
            raise ConfigError(f"config key '{key}' holds more than {MAX_VALUES} values")
        if isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, (list, tuple)):
            stack.extend(node)


class _StrictLoader(yaml.SafeLoader):
    """YAML's safe loader that refuses a mapping with the same key twice (plain YAML keeps the last one silently)."""


def _mapping_without_duplicates(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            raise ConfigError(
                f"config {node.start_mark.name} line {key_node.start_mark.line + 1}: the key "
                f"{short_repr(key)} appears twice in one section"
            )
        seen.add(key)
    return loader.construct_mapping(node)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted for floats."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    if origin in (list, list, Sequence):
        (item,) = typing.get_args(tp) or (Any,)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}' must be a list, got {short_repr(value)}")
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin in (dict, dict):
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' must be a mapping, got {short_repr(value)}")
        return dict(value)
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            pass
    if tp is int and isinstance(value, bool) or not isinstance(value, tp):
        raise ConfigError(f"config key '{key}' must be {_type_name(tp)}, got {short_repr(value)}")
    if tp is float and not math.isfinite(value):
        raise ConfigError(f"config key '{key}' must be a finite number, got {value}")
    return value


def _merge(node: Any, updates: dict[str, Any], prefix: str) -> None:
    if not isinstance(updates, dict):
        raise ConfigError(
            f"config section '{prefix.rstrip('.') or 'top level'}' must be a mapping, got {short_repr(updates)}"
        )
    hints = typing.get_type_hints(type(node))
    names = {f.name for f in dataclasses.fields(node)}
    for k, v in updates.items():
        key = prefix + str(k)
        if k not in names:
            raise ConfigError(f"unknown config key '{key}' (known: {', '.join(sorted(names))})")
        current = getattr(node, k)
        if dataclasses.is_dataclass(current):
            _merge(current, v, key + ".")
        else:
            _check_size(v, key)
            setattr(node, k, _coerce(v, hints[k], key))


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
    ("model.alpha", *_POSITIVE),
    ("model.residual", *_at_least(0)),
    ("model.rollout_rows", *_one_of("cls", "mean")),
    ("model.drop_path_rate", *_UNIT),
    ("model.download_timeout_s", *_POSITIVE),
    ("data.resize", *_at_least(1)),
    ("data.num_workers", *_at_least(0)),
    ("data.val_fraction", *_UNIT),
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
    """Check the ranges of ``_RANGES``.

    Raises:
        ConfigError: the first value out of range, naming the key and what it allows.
    """
    for key, ok, allowed in _RANGES:
        value = _get(cfg, key)
        if not ok(value):
            raise ConfigError(f"config key '{key}' must be {allowed}, got {short_repr(value)}")
    for key, broken, why in _COMBINATIONS:
        if broken(cfg):
            raise ConfigError(f"config key '{key}' {why}")
    return cfg


def config_from_dict(d: dict[str, Any]) -> Config:
    """A Config from nested dicts of differences (strict, validated)."""
    cfg = Config()
    _merge(cfg, d or {}, "")
    return validate(cfg)


def find_config(name_or_path: str) -> Path:
    """A path as given, or a config name (``synthetic_cpu``) looked up in the repository's ``configs/``."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    for folder in CONFIG_DIRS:
        for cand in (folder / name_or_path, folder / f"{name_or_path}.yaml"):
            if cand.is_file():
                return cand
    raise FileNotFoundError(f"config {name_or_path} not found (neither a file nor a name in {CONFIG_DIRS[0]})")


def _parse_override(item: str) -> dict[str, Any]:
    if "=" not in item:
        raise ConfigError(f"override '{item}' must look like section.key=value")
    key, raw = item.split("=", 1)
    try:
        value = yaml.load(raw, Loader=_StrictLoader) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    out: dict[str, Any] = {}
    node = out
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def load_config(path: str | None = None, overrides: Sequence[str] = (), base: dict[str, Any] | None = None) -> Config:
    """Defaults (or ``base``, e.g. a checkpoint's stored config), then the YAML file's differences, then
    ``section.key=value`` overrides.

    Raises:
        FileNotFoundError: the config file does not exist.
        ConfigError: unknown key, wrong type, value out of range, malformed YAML or override.
    """
    cfg = Config()
    _merge(cfg, base or {}, "")
    if path is not None:
        file = find_config(path)
        try:
            with open(file, encoding="utf-8") as stream:  # the stream's name goes into YAML's messages
                data = yaml.load(stream, Loader=_StrictLoader) or {}
        except UnicodeDecodeError:
            raise ConfigError(f"config {file} is not UTF-8 text (a YAML file is expected)") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"config {file} is not valid YAML: {str(e).splitlines()[0]}") from None
        _merge(cfg, data, "")
    for item in overrides:
        _merge(cfg, _parse_override(item), "")
    return validate(cfg)


def config_diff(old: Config, new: Config, section: str | None = None) -> dict[str, tuple[Any, Any]]:
    """{"section.key": (old, new)} for every value that differs (within ``section`` if given)."""
    out: dict[str, tuple[Any, Any]] = {}

    def walk(a: dict[str, Any], b: dict[str, Any], prefix: str) -> None:
        for k in list(a) + [k for k in b if k not in a]:
            x, y = a.get(k), b.get(k)
            if isinstance(x, dict) and isinstance(y, dict):
                walk(x, y, f"{prefix}{k}.")
            elif x != y:
                out[prefix + k] = (x, y)

    a, b = asdict(old), asdict(new)
    if section is not None:
        a, b, prefix = a[section], b[section], f"{section}."
    else:
        prefix = ""
    walk(a, b, prefix)
    return out


def save_config(cfg: Config, path: Path) -> None:
    """Write the fully resolved config as YAML (atomically: temp file + rename)."""
    write_text_atomic(path, yaml.safe_dump(asdict(cfg), sort_keys=False))

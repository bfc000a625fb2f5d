"""The one place that reads the training config: optimizer, schedule, mixer, EMA, teacher, criterion, the learning-to-
learn step and the module the engine calls, each from its config section, as built objects for ``run`` and the
engine."""

from dataclasses import replace
from typing import Any

import numpy as np
import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from timm.utils import ModelEmaV3
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from ramstrans.config import Config, ConfigError, DistillConfig, LossConfig, MixConfig, TrainConfig
from ramstrans.distill.loss import DistillationLoss
from ramstrans.distill.self_distill import SelfDistillationLoss
from ramstrans.distill.teacher import Teacher, load_teacher
from ramstrans.errors import UsageError
from ramstrans.losses import MultiScaleLoss
from ramstrans.models import Model, MultiScaleForward, RAMSTrans, ViTBackbone
from ramstrans.models.backbones.distilled import Head
from ramstrans.runtime.dist import DistInfo
from ramstrans.training.l2l import FwtLearner
from ramstrans.training.mixing import Mixer
from ramstrans.training.monitor import TrainingRun
from ramstrans.training.steps import BatchStep, FwtStep, MixedStep, OptimizerUpdate

__all__ = [
    "build_optimizer",
    "build_scheduler",
    "build_mixer",
    "build_ema",
    "build_teacher",
    "build_criterion",
    "build_fwt_learner",
    "build_train_module",
    "build_step",
    "build_update",
    "scaled",
    "lr_at",
]


def build_optimizer(train_cfg: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    """timm's optimizer factory ('momentum' = plain SGD momentum; tokens and biases without weight decay; layer-wise
    lr decay through the model's ``group_matcher`` when ``train.layer_decay`` > 0)."""
    kwargs: dict[str, Any] = (
        {"momentum": train_cfg.momentum} if train_cfg.opt in ("momentum", "sgd", "nesterov") else {}
    )
    if train_cfg.layer_decay > 0:
        kwargs["layer_decay"] = train_cfg.layer_decay
    try:
        return create_optimizer_v2(
            model, opt=train_cfg.opt, lr=train_cfg.lr, weight_decay=train_cfg.weight_decay, **kwargs
        )
    except (AssertionError, ValueError) as e:
        raise UsageError(f"train.opt '{train_cfg.opt}' is not a timm optimizer ({e})") from e


def build_scheduler(train_cfg: TrainConfig, optimizer: torch.optim.Optimizer) -> CosineLRScheduler:
    """Linear warm-up for ``warmup_steps``, then cosine from lr to ``min_lr`` at ``steps``, updated per step."""
    if not 0 <= train_cfg.warmup_steps < train_cfg.steps:
        raise UsageError(
            f"train.warmup_steps ({train_cfg.warmup_steps}) must be in [0, train.steps ({train_cfg.steps}))"
        )
    return CosineLRScheduler(
        optimizer,
        t_initial=train_cfg.steps - train_cfg.warmup_steps,
        lr_min=train_cfg.min_lr,
        warmup_t=train_cfg.warmup_steps,
        warmup_lr_init=train_cfg.warmup_lr,
        warmup_prefix=True,
        t_in_epochs=False,
    )


def build_mixer(mix_cfg: MixConfig, model: Model, seed: int, rank: int = 0) -> Mixer | None:
    """The batch mixer of ``cfg.mix`` (None when off); sizes come from the backbone (a classifier has no patch grid:
    TransMix is refused for it when the config is loaded)."""
    if not mix_cfg.enabled:
        return None
    grids = [(1, 1)]  # a classifier: TransMix reads the patch grid
    if isinstance(model, RAMSTrans):
        cell = model.backbone.cell_size
        grids = [(h // cell[0], w // cell[1]) for h, w in model.scale_sizes]
    return Mixer(
        num_classes=model.num_classes,
        image_size=model.input_size,
        grid_size=grids,
        mixup_alpha=mix_cfg.mixup_alpha,
        cutmix_alpha=mix_cfg.cutmix_alpha,
        prob=mix_cfg.prob,
        switch_prob=mix_cfg.switch_prob,
        label_smoothing=mix_cfg.label_smoothing,
        correct_lam=mix_cfg.correct_lam,
        transmix=mix_cfg.transmix,
        area_weight=mix_cfg.area_weight,
        seed=seed,
        rank=rank,
    )


def build_ema(train_cfg: TrainConfig, model: Model) -> ModelEmaV3 | None:
    """timm's ModelEmaV3 of the weights when ``train.ema_decay`` > 0 (a deep copy, updated after every step)."""
    if train_cfg.ema_decay <= 0:
        return None
    return ModelEmaV3(model, decay=train_cfg.ema_decay, use_warmup=train_cfg.ema_warmup)


def scaled(train_cfg: TrainConfig, world_size: int) -> TrainConfig:
    """The train config with lr scaled by global batch / ``lr_ref_batch`` when that is set."""
    if train_cfg.lr_ref_batch <= 0:
        return train_cfg
    global_batch = train_cfg.batch_size * train_cfg.grad_accum * world_size
    return replace(train_cfg, lr=train_cfg.lr * global_batch / train_cfg.lr_ref_batch)


def lr_at(train_cfg: TrainConfig, step: int) -> float:
    """The scheduled (unscaled-by-layer) lr of ``train_cfg`` at ``step``."""
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=train_cfg.lr)
    build_scheduler(train_cfg, opt).step_update(num_updates=step)
    return float(opt.param_groups[0]["lr"])


def build_teacher(
    cfg: Config, class_names: list[str], model: Model, device: torch.device, ckpt: dict | None = None
) -> tuple[Teacher | None, dict[str, str] | None]:
    """The frozen teacher of ``cfg.distill`` on ``device`` (None when distillation is off), built without drawing
    random numbers; on resume, the same teacher file as the checkpoint's.

    Raises:
        ConfigError: another teacher than the checkpoint's, other classes or another image size than the student's.
    """
    if not cfg.distill.enabled:
        return None, None
    with torch.random.fork_rng(devices=[]):  # the teacher's (discarded) initialisation leaves the run's RNG as it was
        teacher, source = load_teacher(
            cfg.distill.teacher,
            class_names,
            cfg.pipeline_size[0],
            model.backbone.mean,
            model.backbone.std,
            cfg.distill.teacher_scales,
        )
    before = (ckpt or {}).get("teacher")
    if before and before["sha256"] != source.sha256:
        raise ConfigError(
            f"distill.teacher {cfg.distill.teacher} is not the teacher the checkpoint was trained with "
            f"({before['name']} at {before['path']}, sha256 {before['sha256'][:12]}...; this file has "
            f"{source.sha256[:12]}...): resume with the same teacher"
        )
    return teacher.to(device), source.as_dict()


def build_fwt_learner(cfg: Config, r: TrainingRun, info: DistInfo) -> FwtLearner | None:
    """The learning-to-learn step of ``model.fwt: learned`` (None otherwise).

    Raises:
        ConfigError: combined with DDP, torch.compile or fp16 loss scaling (its second-order step computes its own
            gradients, which none of them would see).
    """
    if cfg.model.fwt != "learned":
        return None
    if info.enabled or cfg.train.compile or r.scaler is not None:
        raise ConfigError(
            "model.fwt learned runs its own second-order gradient step: it cannot be combined with "
            "several processes, train.compile or fp16 loss scaling"
        )
    bb = r.model.backbone
    assert isinstance(bb, ViTBackbone)  # model.fwt needs a ViT (the config's rules, RAMSTrans's checks)
    return FwtLearner(layers=bb.fwt, optimizer=r.optimizer)


def build_train_module(model: Model, info: DistInfo, device: torch.device, train_cfg: TrainConfig) -> torch.nn.Module:
    """What the engine calls: the multi-scale forward, DDP-wrapped under torchrun, compiled when asked."""
    # Every parameter is used in every forward (all scales run inside one forward), so DDP needs no
    # find_unused_parameters; the attention capture is detached and adds no gradient to synchronise.
    module: Any = MultiScaleForward(model)
    if info.enabled:
        module = DDP(module, device_ids=[device.index] if device.type == "cuda" else None)
    if train_cfg.compile:
        module = torch.compile(module, backend=train_cfg.compile_backend)
    return module


def build_criterion(
    loss_cfg: LossConfig,
    num_scales: int,
    distill_cfg: DistillConfig | None = None,
    teacher: nn.Module | None = None,
    head: Head = "mean",
    ema: RAMSTrans | None = None,
    class_counts: np.ndarray | None = None,
) -> nn.Module:
    """The only place that maps ``cfg.loss`` (and ``cfg.distill`` with its built teacher) to a criterion.

    Args:
        loss_cfg: ``cfg.loss``.
        num_scales: the model's scales.
        distill_cfg: ``cfg.distill`` (read when ``teacher`` is given).
        teacher: the built frozen teacher, or None.
        head: the model's test-time head (``model.eval_head``): self-distillation fuses its logits.
        ema: the EMA model, needed by ``loss.self_distill_source: ema``.
        class_counts: (K,) training images per class, the prior of ``loss.logit_adjust``.

    Raises:
        UsageError: ``loss.scale_weights`` does not have one entry per scale, or self-distillation from an EMA that
            is not there.
    """
    if len(loss_cfg.scale_weights) != num_scales:
        raise UsageError(
            f"loss.scale_weights has {len(loss_cfg.scale_weights)} entries but model.num_scales is {num_scales}"
        )
    prior = None
    if loss_cfg.logit_adjust > 0:
        if class_counts is None or (class_counts == 0).any():
            raise UsageError(
                "loss.logit_adjust needs a training split with images of every class (its prior is counted there)"
            )
        prior = torch.from_numpy(class_counts / class_counts.sum())
    base = MultiScaleLoss(
        weights=loss_cfg.scale_weights,
        label_smoothing=loss_cfg.label_smoothing,
        prior=prior,
        logit_adjust=loss_cfg.logit_adjust,
    )
    if loss_cfg.self_distill > 0:
        if loss_cfg.self_distill_source == "ema" and ema is None:
            raise UsageError("loss.self_distill_source ema needs train.ema_decay > 0")
        return SelfDistillationLoss(
            base=base,
            beta=loss_cfg.self_distill,
            tau=loss_cfg.self_distill_tau,
            target=loss_cfg.self_distill_target,
            head=head,
            ema=ema if loss_cfg.self_distill_source == "ema" else None,
        )
    if teacher is None:
        return base
    d = distill_cfg
    if d is None:
        raise UsageError("a teacher needs cfg.distill (its type, alpha, tau, reduction, scales)")
    return DistillationLoss(
        base=base,
        teacher=teacher,
        kind=d.type,
        alpha=d.alpha,
        tau=d.tau,
        kl_reduction=d.kl_reduction,
        scales=[s - 1 for s in d.scales],
    )


def build_step(cfg: Config, r: TrainingRun, info: DistInfo, device: torch.device, criterion: nn.Module) -> BatchStep:
    """What one batch of a step does, chosen once: the learning-to-learn step (``model.fwt: learned``), a mixed step
    (``mix.enabled``) or a plain one, on the module the engine calls."""
    module = build_train_module(r.model, info, device, cfg.train)
    bb = r.model.backbone
    common: dict[str, Any] = dict(
        model=module,
        criterion=criterion,
        device=device,
        amp_dtype=r.amp_dtype,
        scaler=r.scaler,
        normalization=(tuple(bb.mean), tuple(bb.std)),
    )
    learner = build_fwt_learner(cfg, r, info)
    if learner is not None:
        return FwtStep(**common, learner=learner)
    mixer = build_mixer(cfg.mix, r.model, cfg.train.seed, info.rank)
    return BatchStep(**common) if mixer is None else MixedStep(**common, mixer=mixer)


def build_update(train_cfg: TrainConfig, r: TrainingRun) -> OptimizerUpdate:
    """The optimizer update after a step's batches (gradient clipping, the fp16 scaler)."""
    params = [p for p in r.model.parameters() if p.requires_grad]
    return OptimizerUpdate(optimizer=r.optimizer, params=params, clip_grad=train_cfg.clip_grad, scaler=r.scaler)

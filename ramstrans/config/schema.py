"""Every setting, in one tree of dataclasses: the defaults are the paper recipe (ViT-B/16 at 448 on CUB-200-2011, SGD
momentum 0.9, lr 0.03, batch 16, 500 warm-up steps then cosine to 10,000, clip 1.0, α = 1.3)."""

from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Config",
    "ModelConfig",
    "SyntheticConfig",
    "DataConfig",
    "LossConfig",
    "MixConfig",
    "DistillConfig",
    "TrainConfig",
]


@dataclass
class ModelConfig:
    type: str = "rams"  # rams (RAMS-Trans on a ViT) | classifier (any timm classifier, e.g. a CNN teacher)
    backbone: str = "vit_base_patch16_224"  # timm model name (a plain ViT for rams; any classifier for classifier)
    img_size: int = 448  # network input (the training / test crop)
    num_scales: int = 2  # 1 = plain ViT baseline, 2 = RAMS-Trans
    scale_sizes: list[int] = field(default_factory=list)  # pixels per scale (square), e.g. [224, 448]: a small
    # glance, then a sharp focus; empty = every scale at img_size. Multiples of the patch (or the CNN's stride)
    zoom_source: str = "input"  # input: the zoom crops the model input | source: the data pipeline delivers the view
    # at data.source_size; scale 1 sees its antialiased downsample, the zoom crops the source's own pixels
    alpha: float = 1.3  # proposal threshold: g > alpha * mean(g)
    residual: float = 1.0  # χ in rownorm(A + χI)
    rollout_rows: str = "cls"  # "cls" or "mean" (official code)
    saliency: str = "rollout"  # what the proposal thresholds: rollout (a ViT's class-token attention rollout) |
    # attn_pool (an attention-pooling ViT's query, e.g. SigLIP) | activation (any timm model: SCDA's channel-summed
    # magnitude of the last feature map, e.g. ConvNeXt, Swin, ResNet)
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
    detail: float = 0.65  # size of the species' parts (crown patch, wing bars) relative to the bird; the demo's 0.65
    # makes them about 4 to 8 px (crown) and 1 px (bars) at 128 px
    seed: int = 0
    imbalance: float = 1.0  # r >= 1: training images per class fall exponentially from train_per_class (class 0) to
    # train_per_class / r (the last class); the test split stays balanced (1 = balanced)


@dataclass
class DataConfig:
    dataset: str = "cub"  # cub | dogs | inat17 | nabirds | folder | csv | synthetic | pretext (for pretraining)
    root: str = "datasets/CUB_200_2011"  # data set root (synthetic: generated here on first use)
    resize: int = 600  # shortest side before the (random / center) crop of model.img_size
    source_size: int = 0  # model.zoom_source source: side of the source crop (the same view as the model input at
    # source_size / img_size times its pixels; the shortest side goes to resize * source_size / img_size); 0 = off
    hflip: bool = True  # random horizontal flip in training
    num_workers: int = 4  # DataLoader workers
    val_fraction: float = 0.0  # stratified, seeded validation split carved from train (0 = none)
    skip_corrupt: bool = False  # skip unreadable images (counted) instead of stopping
    sampler: str = "uniform"  # uniform (every image once per epoch) | class_balanced (every class equally likely) |
    # sqrt (a class's probability proportional to the square root of its training images); drawn with replacement
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)  # also image_size / seed of "pretext"
    pretext_test_size: int = 1200  # fixed evaluation images of the pretext stream (drawn with seed + 1)


@dataclass
class LossConfig:
    scale_weights: list[float] = field(default_factory=lambda: [1.0, 1.0])  # per scale; λ = weight of scale 2
    label_smoothing: float = 0.0  # on hard labels
    logit_adjust: float = 0.0  # τ: the label terms see logits + τ·log(prior) (Menon et al. 2021; τ = 1 is balanced
    # softmax), the prior counted on the training split; the model's own logits at test time (0 = off)
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

    @property
    def pipeline_size(self) -> tuple[int, int]:
        """(crop, resize) of what the data pipeline delivers: the model input (model.img_size after the shortest side
        went to data.resize), or with model.zoom_source source the same view at data.source_size."""
        if self.model.zoom_source != "source":
            return self.model.img_size, self.data.resize
        return self.data.source_size, round(self.data.resize * self.data.source_size / self.model.img_size)

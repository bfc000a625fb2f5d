"""The timm ViT wrapper: scale-wise CLS tokens, attention capture, normalisation, and the grid facts the pipeline needs.

The wrapped model is a ``timm`` VisionTransformer or Eva (EVA-02: RoPE, SwiGLU); nothing of timm is copied. Scale 0
uses the ViT's own ``cls_token``, so ``vit`` alone stays a complete timm model (the single-scale path is timm's forward
and the deployable artefact). Zoom scales get their own CLS parameters, swapped into the same sequence position; a ViT
without a class token (SigLIP's attention pool) has none, and its zoomed scales share every parameter.

A student for knowledge distillation (``dist_token=True``) is timm's ``VisionTransformerDistilled`` (DeiT's layout: the
class token at 0, the distillation token at 1, both with a position embedding, each read by its own head); a plain ViT
is converted in place (``make_distilled``), and every zoom scale gets its own distillation token too.

The saliency is the attention rollout of the class token (``rollout``, computed here from every block's captured map)
or the attention pool's latent query over the patches (``attn_pool``); both come from the attention capture of
``capture.py`` (hooks on q_norm / k_norm, fused attention kept, no state between calls). ``build_vit`` is the family's
entry in ``ramstrans.registry.BACKBONES``: the backbone of a model config, pretrained weights loaded.
"""

from collections.abc import Callable, Sequence
from typing import Any, cast

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import resample_abs_pos_embed
from timm.models import checkpoint_seq
from timm.models.deit import VisionTransformerDistilled
from timm.models.eva import Eva
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ramstrans.config import ModelConfig
from ramstrans.errors import UsageError
from ramstrans.models.backbones.base import CaptureMode, Features, prefixed
from ramstrans.models.backbones.capture import arm, hook
from ramstrans.models.backbones.create import (
    check_whole_patches,
    create_vit,
    pair,
    size_blocks,
    timm_arguments,
    unsupported_reason,
)
from ramstrans.models.backbones.distilled import Head, make_distilled, select_head
from ramstrans.models.backbones.inputs import InputNorm
from ramstrans.models.backbones.pretrained import load_vit_weights
from ramstrans.models.blocks.fwt import FeatureWiseTransform, attach
from ramstrans.models.rollout import RolloutRows, attention_rollout

__all__ = ["ViTBackbone", "build_vit"]


class ViTBackbone(InputNorm):
    """A timm ViT with one CLS (and optionally distillation) token per scale, attention capture and its input
    normalisation.

    Args:
        vit: a built timm VisionTransformer or Eva with one class token and token pooling (see ``create_vit``), timm's
            VisionTransformerDistilled, or (``saliency="attn_pool"``) one that pools with an attention pool.
        num_scales: number of scales, i.e. of CLS tokens (scale 0 uses the ViT's own).
        mean: per-channel input mean in [0, 1]; None takes the ViT's pretrained config (ImageNet's without one).
        std: per-channel input std; None as ``mean``.
        dist_token: True converts a plain ViT to timm's distilled layout (``make_distilled``); None keeps the model's
            own layout; False refuses a distilled model.
        attn_window: 0 (global attention) or a radius r >= 1 on the patch grid; needs ``WindowAttention`` blocks
            (``create_vit(window_attention=True, attn_window=r)`` builds them sized).
        ffn_kernel: odd kernel of the ``ConvMlp`` blocks' depthwise convolution (where the blocks have them).
        ffn_prefix: "mlp" or "bypass": what the ``ConvMlp`` blocks do with the class and distillation tokens.
        fwt: "off", "fixed" or "learned": a feature-wise transformation on every block's feed-forward input in
            training (``FeatureWiseTransform``), kept in ``fwt`` beside the timm model.
        saliency: "rollout" (the class token's attention rollout) or "attn_pool" (the attention pool's latent query
            over the patches).
        residual: the rollout's χ in Â = rownorm(A + χI).
        rollout_rows: the rollout's "cls" (class query row) or "mean" (mean of all query rows, as the official code).
    """

    def __init__(
        self,
        *,
        vit: VisionTransformer,
        num_scales: int = 2,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        dist_token: bool | None = None,
        attn_window: int = 0,
        ffn_kernel: int = 3,
        ffn_prefix: str = "mlp",
        fwt: str = "off",
        saliency: str = "rollout",
        residual: float = 1.0,
        rollout_rows: RolloutRows = "cls",
    ) -> None:
        if saliency not in ("rollout", "attn_pool"):
            raise UsageError(f"model.saliency {saliency!r} is not one a ViT gives: use rollout or attn_pool")
        if not residual >= 0:
            raise UsageError(f"model.residual must be >= 0, got {residual!r}")
        if rollout_rows not in ("cls", "mean"):
            raise UsageError(f"model.rollout_rows must be 'cls' or 'mean', got {rollout_rows!r}")
        reason = unsupported_reason(vit, saliency=saliency)
        if reason is not None:
            raise UsageError(f"backbone {type(vit).__name__} is not supported: {reason}")
        if not isinstance(num_scales, int) or num_scales < 1:
            raise UsageError(f"num_scales must be an integer >= 1, got {num_scales!r}")
        if dist_token is False and isinstance(vit, VisionTransformerDistilled):
            raise UsageError("the given backbone has a distillation token but dist_token is False")
        check_whole_patches(vit)
        cfg = getattr(vit, "pretrained_cfg", None) or {}
        super().__init__(
            int(vit.patch_embed.proj.in_channels),
            mean if mean is not None else cfg.get("mean", IMAGENET_DEFAULT_MEAN),
            std if std is not None else cfg.get("std", IMAGENET_DEFAULT_STD),
        )
        if dist_token or isinstance(vit, VisionTransformerDistilled):
            vit = make_distilled(vit)
        self.vit: Any = cast(Any, vit)  # timm's VisionTransformer (its submodules are untyped to mypy)
        self.name: str = cfg.get("architecture") or type(vit).__name__
        self.saliency = saliency
        self.residual, self.rollout_rows = float(residual), rollout_rows
        # Scale 0 is vit.cls_token (and vit.dist_token); these are scales 1..S-1, initialised from them. Without a
        # class token (an attention pool) the scales share every parameter.
        self.zoom_cls_tokens = nn.ParameterList(
            [nn.Parameter(self.vit.cls_token.detach().clone()) for _ in range(num_scales - 1)]
            if self.vit.cls_token is not None
            else []
        )
        self._num_scales = num_scales
        self._pos_cache: dict[tuple[int, int], tuple[Any, Tensor]] = {}  # grid -> (weights version, table)
        self.zoom_dist_tokens = nn.ParameterList(
            [nn.Parameter(self.vit.dist_token.detach().clone()) for _ in range(num_scales - 1)]
            if self.has_dist_token
            else []
        )
        size_blocks(self.vit, self.grid_size, self.num_prefix_tokens, attn_window, ffn_kernel, ffn_prefix)
        if fwt not in ("off", "fixed", "learned"):
            raise UsageError(f"model.fwt must be off, fixed or learned, got {fwt!r}")
        self.fwt = nn.ModuleList(
            [FeatureWiseTransform(vit.embed_dim, learned=fwt == "learned") for _ in vit.blocks] if fwt != "off" else []
        )
        attach(vit.blocks, self.fwt)
        for attn in self._captured():
            hook(attn)

    def _captured(self) -> list[nn.Module]:
        """The attention modules the saliency reads: every block's (rollout), or the attention pool's."""
        return [self.vit.attn_pool] if self.saliency == "attn_pool" else [blk.attn for blk in self.vit.blocks]

    # ---- facts the rest of the pipeline reads ------------------------------------------------------------------
    @property
    def has_dist_token(self) -> bool:
        return isinstance(self.vit, VisionTransformerDistilled)

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens before the patches: the class token, and the distillation token when there is one."""
        return int(self.vit.num_prefix_tokens)

    @property
    def num_scales(self) -> int:
        return self._num_scales

    @property
    def has_class_token(self) -> bool:
        return self.vit.cls_token is not None

    @property
    def img_size(self) -> tuple[int, int]:
        return pair(self.vit.patch_embed.img_size)

    @property
    def patch_size(self) -> tuple[int, int]:
        return pair(self.vit.patch_embed.patch_size)

    @property
    def grid_size(self) -> tuple[int, int]:
        return pair(self.vit.patch_embed.grid_size)

    @property
    def cell_size(self) -> tuple[int, int]:
        """The saliency's cell is the patch."""
        return self.patch_size

    @property
    def in_chans(self) -> int:
        return int(self.vit.patch_embed.proj.in_channels)

    @property
    def depth(self) -> int:
        return len(self.vit.blocks)

    @property
    def num_classes(self) -> int:
        return int(self.vit.num_classes)

    @property
    def timm_model(self) -> nn.Module:
        """The wrapped timm model (what an export writes)."""
        return self.vit

    def cls_token(self, scale: int) -> nn.Parameter | None:
        """The (1, 1, D) CLS parameter of ``scale`` (0-based); None without a class token."""
        return self.vit.cls_token if scale == 0 or not self.has_class_token else self.zoom_cls_tokens[scale - 1]

    def dist_token(self, scale: int) -> nn.Parameter:
        """The (1, 1, D) distillation-token parameter of ``scale`` (0-based); only with a distillation token."""
        return self.vit.dist_token if scale == 0 else self.zoom_dist_tokens[scale - 1]

    # ---- forward stages -----------------------------------------------------------------------------------------
    def embed(self, x: Tensor, scale: int = 0) -> tuple[Tensor, Tensor | None]:
        """Patch embedding, the scale's CLS token at position 0 (and distillation token at 1), the register tokens
        after them, and the position embedding, added as timm's ``_pos_embed`` adds it: to the patches alone before
        the prefix is joined (``no_embed_class``: DeiT-III, DINOv2) or to every token after, and resampled to the
        patch grid with ``dynamic_img_size`` (every scale runs at ``img_size``, so the grid is the trained one). An
        Eva also gets its rotary embedding of the grid, as its ``_pos_embed`` makes it.

        Args:
            x: (B, C, H, W) images at ``img_size``.
            scale: which CLS (and distillation) token to use.

        Returns:
            (B, num_prefix_tokens + gh * gw, D) tokens, and an Eva's rotary embedding (None for a ViT or an Eva
            without RoPE).
        """
        vit = self.vit
        grid = (x.shape[-2] // self.patch_size[0], x.shape[-1] // self.patch_size[1])
        x = vit.patch_embed(x)
        prefix = [t for t in (self.cls_token(scale),) if t is not None]
        prefix += [self.dist_token(scale)] if self.has_dist_token else []
        if vit.reg_token is not None:  # registers are shared by the scales, as timm's layout has them after the CLS
            prefix.append(vit.reg_token)
        joined = [t.expand(x.shape[0], -1, -1) for t in prefix]
        pos = vit.pos_embed
        if vit.dynamic_img_size:  # (B, gh, gw, D) patches
            B, H, W, C = x.shape
            pos = self._pos_embed((H, W))
            x, grid = x.view(B, -1, C), (H, W)
        elif grid != self.grid_size:  # another scale's size (model.scale_sizes): the trained grid resampled to it
            pos = self._pos_embed(grid)
        if pos is None:  # an Eva positioned by RoPE alone
            x = torch.cat([*joined, x], dim=1)
        elif vit.no_embed_class:
            x = torch.cat([*joined, x + pos], dim=1)
        else:
            x = torch.cat([*joined, x], dim=1) + pos
        x = vit.pos_drop(x)
        return vit.norm_pre(x), self._rope(grid)

    def _pos_embed(self, grid: tuple[int, int]) -> Tensor | None:
        """The position embedding for a (gh, gw) patch grid: timm's ``resample_abs_pos_embed`` of the trained one
        (itself at the trained grid). Without gradient the resampled table is cached per grid and weights version, so
        evaluation and an export resample once."""
        vit = self.vit
        pos = vit.pos_embed
        if pos is None or grid == self.grid_size:
            return pos
        # a traced export sees fake tensors (no data pointer): it resamples inside the graph and caches nothing
        uncached = torch.is_grad_enabled() or torch.compiler.is_exporting() or torch.compiler.is_compiling()
        key = None if uncached else (grid, pos._version, pos.data_ptr(), pos.device, pos.dtype)
        cached = self._pos_cache.get(grid)
        if uncached or cached is None or cached[0] != key:
            resampled = resample_abs_pos_embed(
                pos,
                new_size=list(grid),
                old_size=list(self.grid_size),
                num_prefix_tokens=0 if vit.no_embed_class else vit.num_prefix_tokens,
            )
            if uncached:
                return resampled
            cached = (key, resampled)
            self._pos_cache[grid] = cached
        return cached[1]

    def check_size(self, size: tuple[int, int]) -> None:
        """Serve (H, W) inputs besides ``img_size`` (a scale of ``model.scale_sizes``): whole patches, global attention
        and timm's MLP (the window attention and the convolutional feed-forward are sized for the trained grid).

        Raises:
            UsageError: the sentence naming ``model.scale_sizes`` and what to change.
        """
        if tuple(size) == self.img_size:
            return
        for side, patch in zip(size, self.patch_size):
            if side % patch:
                raise UsageError(
                    f"model.scale_sizes {side} is not a multiple of the {patch}-pixel patch of '{self.name}': use "
                    f"{side - side % patch or patch} or {side - side % patch + patch}"
                )
        sized = [b for b in self.vit.blocks if hasattr(b.attn, "set_window") or hasattr(b.mlp, "set_grid")]
        if sized:
            raise UsageError(
                f"model.scale_sizes {list(size)} needs global attention and timm's MLP: the window attention and the "
                "convolutional feed-forward are sized for model.img_size's grid (set model.attn_window 0 and "
                "model.ffn mlp, or leave model.scale_sizes empty)"
            )
        self.vit.patch_embed.strict_img_size = False  # timm's check of the one trained size; the grid is read here

    def _rope(self, grid: tuple[int, int]) -> Tensor | None:
        """An Eva's rotary embedding of the (gh, gw) grid, as its ``_pos_embed`` gets it; None for a ViT."""
        rope = getattr(self.vit, "rope", None) if isinstance(self.vit, Eva) else None
        if rope is None:
            return None
        if self.vit.dynamic_img_size or grid != self.grid_size or not hasattr(rope, "feat_shape"):  # as timm tests
            return rope.get_embed(shape=grid)
        return rope.get_embed()

    def _blocks(self, x: Tensor, rope: Tensor | None) -> Tensor:
        """(B, N, D) tokens through the blocks (an Eva's with its rotary embedding), checkpointed when timm's
        gradient checkpointing is on."""
        ckpt = self.vit.grad_checkpointing and torch.is_grad_enabled()
        if not isinstance(self.vit, Eva):
            return checkpoint_seq(self.vit.blocks, x) if ckpt else self.vit.blocks(x)
        for blk in self.vit.blocks:
            x = checkpoint(blk, x, rope=rope, use_reentrant=False) if ckpt else blk(x, rope=rope)
        return x

    def forward_features(self, x: Tensor, scale: int = 0, capture: CaptureMode = "none") -> Features:
        """Run the transformer on (B, C, H, W) images.

        Args:
            x: (B, C, H, W) images.
            scale: which CLS token to use (0 = the ViT's own).
            capture: "none" (fused attention only), "cls" (the query row the head reads), "all" (what the saliency
                needs: every block's map for the rollout; the attention pool's map, as "cls", for attn_pool).

        Returns:
            Features with (B, N, D) tokens and the captured attention.

        Raises:
            RuntimeError: the capture did not fire in every module it hooked (a timm Attention that no longer calls
                q_norm / k_norm).
        """
        grid = (x.shape[-2] // self.patch_size[0], x.shape[-1] // self.patch_size[1])
        x, rope = self.embed(x, scale)
        maps: list[Tensor] = []
        pooled = self.saliency == "attn_pool"
        hooked = [] if capture == "none" else self._captured()[-1:] if capture == "cls" else self._captured()
        if not pooled:
            arm(hooked, maps, cls_only=capture == "cls")
        try:
            x = self._blocks(x, rope)
        finally:
            arm(hooked, None)
        x = self.vit.norm(x)
        if pooled and hooked:  # the pool runs in timm's head; run it once more here for its map (one query)
            arm(hooked, maps)
            try:
                with torch.no_grad():
                    self.vit.attn_pool(x)
            finally:
                arm(hooked, None)
        if len(maps) != len(hooked):
            raise RuntimeError(
                f"attention capture fired in {len(maps)} of {len(hooked)} modules: their attention did not call "
                "q_norm/k_norm on (B, heads, N, d) tensors"
            )
        return self._features(x, maps, capture, grid)

    def _features(self, tokens: Tensor, maps: list[Tensor], capture: CaptureMode, grid: tuple[int, int]) -> Features:
        """Features from the (B, N, D) tokens and the captured (B, Nq, N) maps of a pass on the (gh, gw) ``grid``;
        with capture "all" the (B, gh, gw) saliency: the class token's rollout over every block's map, or the attention
        pool's map."""
        if not maps:
            return Features(tokens=tokens)
        row = maps[-1].mean(dim=1) if self.saliency == "attn_pool" else maps[-1][:, 0]  # (B, N): the head's query
        cls_attention = row[:, self.num_prefix_tokens :]
        rollout = capture == "all" and self.saliency == "rollout"
        saliency = cls_attention.unflatten(1, grid) if self.saliency == "attn_pool" else None
        if rollout:
            saliency = attention_rollout(maps, grid, self.residual, self.rollout_rows, self.num_prefix_tokens)
        return Features(
            tokens=tokens, attentions=maps if rollout else [], cls_attention=cls_attention, saliency=saliency
        )

    def forward_heads(self, tokens: Tensor) -> tuple[Tensor, Tensor | None]:
        """(B, N, D) tokens -> (B, K) class-token logits and (B, K) distillation-token logits (None without one).

        In train mode a distilled model goes through timm's own ``forward_head``, which returns both heads only after
        ``set_distilled_training(True)`` (done by ``make_distilled``); in eval mode timm returns their mean, so the two
        heads are read directly (head dropout is the identity in eval).
        """
        if not self.has_dist_token:
            return self.vit.forward_head(tokens), None
        if self.training:
            out = self.vit.forward_head(tokens)
            if not isinstance(out, tuple):
                raise RuntimeError(
                    "timm returned the mean of the two heads in training: the distilled ViT needs "
                    "set_distilled_training(True)"
                )
            return out
        return self.vit.head(tokens[:, 0]), self.vit.head_dist(tokens[:, 1])

    def pre_logits(self, tokens: Tensor) -> Tensor:
        """(B, N, D) tokens -> (B, D) the pooled features timm's heads read (with a distillation token, the mean of
        the two tokens, as timm's distilled ``forward_head(pre_logits=True)``)."""
        return self.vit.forward_head(tokens, pre_logits=True)

    def forward_head(self, tokens: Tensor, head: Head = "mean") -> Tensor:
        """(B, N, D) tokens -> (B, num_classes) logits through timm's pooling and head(s); with a distillation token,
        ``head`` picks the class head, the distillation head or their mean (timm's and DeiT's test-time output)."""
        cls, dist = self.forward_heads(tokens)
        return cls if dist is None else select_head(cls, dist, head)

    def forward(self, x: Tensor, scale: int = 0, head: Head = "mean") -> Tensor:
        """(B, C, H, W) -> (B, num_classes) logits of one scale, attention fused."""
        return self.forward_head(self.forward_features(x, scale).tokens, head)

    def load_pretrained(
        self, source: str, download_timeout_s: float = 60.0, plain: Callable[[], nn.Module] | None = None
    ) -> None:
        """Initialise from pretrained weights (``pretrained.load_vit_weights``: a file, shipped weights or a timm tag);
        every zoom-scale token starts from the pretrained one. ``plain`` builds a plain ViT of this one's arguments,
        through which a distilled backbone reads a Google ``.npz``."""
        load_vit_weights(self, source, download_timeout_s, plain)

    def no_weight_decay(self) -> set[str]:
        """Parameters kept out of weight decay: the ViT's own (tokens, position embedding) and the zoom tokens."""
        return (
            {f"vit.{n}" for n in self.vit.no_weight_decay()}
            | {f"zoom_cls_tokens.{i}" for i in range(len(self.zoom_cls_tokens))}
            | {f"zoom_dist_tokens.{i}" for i in range(len(self.zoom_dist_tokens))}
        )

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """timm's layer groups of the ViT under this module's parameter names; the zoom-scale CLS (and distillation)
        tokens join the embedding (stem) group with the ViT's CLS token."""
        groups = {name: prefixed(rule, r"vit\.") for name, rule in self.vit.group_matcher(coarse=coarse).items()}
        stem = groups["stem"]
        assert isinstance(stem, str)  # timm's ViT names its embedding group by one regex
        groups["stem"] = "^(?:" + stem.lstrip("^") + r"|zoom_cls_tokens\.|zoom_dist_tokens\.)"  # one anchor
        return groups


def build_vit(cfg: ModelConfig, num_classes: int | None, model: nn.Module | None = None) -> ViTBackbone:
    """The ViT family's backbone of a model config (its entry in ``ramstrans.registry.BACKBONES``).

    Args:
        cfg: the model section: the timm name and its arguments (``img_size``, ``backbone_kwargs``,
            ``drop_path_rate``), the scales, the saliency and its rollout, the distilled transformer's options, the
            pretrained weights.
        num_classes: K; None keeps the model's own.
        model: a built timm ViT to serve instead of one by name (an export folder's); its weights are kept.

    Raises:
        UsageError: a name timm does not know, arguments it refuses, a model RAMS-Trans cannot run on (the sentence
            says why), or pretrained weights that do not fit.
    """
    timm_kwargs = timm_arguments(cfg)
    vit = model
    if vit is None:
        vit = create_vit(
            cfg.backbone,
            cfg.img_size,
            num_classes,
            window_attention=cfg.attn_window > 0,
            conv_ffn=cfg.ffn == "conv",
            attn_window=cfg.attn_window,
            ffn_kernel=cfg.ffn_kernel,
            ffn_prefix=cfg.ffn_prefix,
            dist_token=cfg.dist_token,
            saliency=cfg.saliency,
            **timm_kwargs,
        )
    backbone = ViTBackbone(
        vit=cast(VisionTransformer, vit),
        num_scales=cfg.num_scales,
        dist_token=cfg.dist_token or None,
        attn_window=cfg.attn_window,
        ffn_kernel=cfg.ffn_kernel,
        ffn_prefix=cfg.ffn_prefix,
        fwt=cfg.fwt,
        saliency=cfg.saliency,
        residual=cfg.residual,
        rollout_rows=cast(RolloutRows, cfg.rollout_rows),  # checked by ViTBackbone
    )
    if model is None and cfg.pretrained:

        def plain() -> nn.Module:  # drawn beside the run's random numbers, not from them
            with torch.random.fork_rng(devices=[]):
                return create_vit(cfg.backbone, cfg.img_size, num_classes, saliency=cfg.saliency, **timm_kwargs)

        backbone.load_pretrained(cfg.pretrained, cfg.download_timeout_s, plain)
    return backbone

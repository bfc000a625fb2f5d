"""The timm ViT wrapper: scale-wise CLS tokens, attention capture, and the grid facts the pipeline needs.

The wrapped model is a plain ``timm`` VisionTransformer made by name; nothing of timm is copied. Scale 0 uses the
ViT's own ``cls_token``, so ``vit`` alone stays a complete timm model (the single-scale path is timm's forward and the
deployable artefact). Zoom scales get their own CLS parameters, swapped into the same sequence position.

Attention capture hooks ``attn.q_norm`` / ``attn.k_norm`` of every block. timm calls them on the (B, heads, N, d)
queries and keys just before its fused SDPA kernel, so the attention output stays fused and the head-mean softmax
probabilities are recomputed from the same q, k under ``no_grad``: nothing extra is kept for backward.
"""
from dataclasses import dataclass, field
from typing import List, Literal, Optional, Tuple, Union

import timm
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import checkpoint_seq
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

__all__ = ["ViTBackbone", "ViTFeatures", "CaptureMode"]

CaptureMode = Literal["none", "cls", "all"]


@dataclass
class ViTFeatures:
    """What one pass of the backbone produces.

    Attributes:
        tokens: (B, N, D) final-normed token sequence; N = 1 + gh * gw.
        attentions: per block (B, N, N) head-mean softmax attention (rows sum to 1), detached; only with capture "all".
        cls_attention: (B, gh * gw) last block's head-mean CLS query row over the patch keys, detached; None with
            capture "none".
    """

    tokens: Tensor
    attentions: List[Tensor] = field(default_factory=list)
    cls_attention: Optional[Tensor] = None


def _pair(v: Union[int, Tuple[int, int]]) -> Tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _unsupported_reason(vit: nn.Module) -> Optional[str]:
    """Why RAMS-Trans cannot run on this model, or None when it can."""
    if not isinstance(vit, VisionTransformer):
        return f"it is a {type(vit).__name__}, not a timm VisionTransformer"
    if vit.cls_token is None:
        return "it has no class token"
    if getattr(vit, "dist_token", None) is not None or vit.num_prefix_tokens != 1 or vit.num_reg_tokens:
        return "it has register or distillation tokens besides the class token"
    if vit.global_pool != "token" or vit.attn_pool is not None:
        return f"it pools with '{vit.global_pool}' instead of the class token"
    if vit.no_embed_class:
        return "its position embedding does not cover the class token (no_embed_class)"
    if vit.dynamic_img_size:
        return "it uses a dynamic image size"
    if vit.pos_embed is None:
        return "it has no learned position embedding"
    if not isinstance(vit.patch_drop, nn.Identity):
        return "patch dropout removes tokens, so attention would no longer cover the patch grid"
    for i, blk in enumerate(vit.blocks):
        attn = getattr(blk, "attn", None)
        if attn is None or not all(hasattr(attn, a) for a in ("q_norm", "k_norm", "num_heads", "scale")):
            return f"block {i} has no standard timm Attention module"
    return None


class ViTBackbone(nn.Module):
    """A timm ViT with one CLS token per scale and optional attention capture.

    Args:
        name: timm model name, e.g. ``vit_base_patch16_224``.
        img_size: input size (int or (H, W)); the patch grid follows from it.
        num_classes: classifier outputs.
        num_scales: number of scales, i.e. of CLS tokens (scale 0 uses the ViT's own).
        **timm_kwargs: passed to ``timm.create_model`` (e.g. ``depth``, ``drop_path_rate``).
    """

    def __init__(
            self,
            *,
            name: str = "vit_base_patch16_224",
            img_size: Union[int, Tuple[int, int]] = 448,
            num_classes: int = 1000,
            num_scales: int = 2,
            **timm_kwargs,
    ) -> None:
        super().__init__()
        if not timm.is_model(name):
            raise ValueError(f"unknown backbone '{name}': timm has no model of that name")
        try:
            vit = timm.create_model(name, pretrained=False, img_size=img_size, num_classes=num_classes, **timm_kwargs)
        except TypeError as e:  # unexpected keyword: img_size means the model is no ViT at all
            if "img_size" in str(e):
                raise ValueError(f"backbone '{name}' is not supported: it is not a timm VisionTransformer") from None
            raise ValueError(f"backbone '{name}' does not accept these arguments: {e}") from None
        reason = _unsupported_reason(vit)
        if reason is not None:
            raise ValueError(f"backbone '{name}' is not supported: {reason}")
        self.vit: VisionTransformer = vit
        self.name = name
        # Scale 0 is vit.cls_token; these are scales 1..S-1, initialised from it.
        self.zoom_cls_tokens = nn.ParameterList(
            [nn.Parameter(vit.cls_token.detach().clone()) for _ in range(num_scales - 1)])
        cfg = getattr(vit, "pretrained_cfg", None) or {}
        self.mean: Tuple[float, ...] = tuple(cfg.get("mean", IMAGENET_DEFAULT_MEAN))
        self.std: Tuple[float, ...] = tuple(cfg.get("std", IMAGENET_DEFAULT_STD))
        for blk in vit.blocks:
            blk.attn.fused_attn = True  # capture never needs the unfused path
        self._capture: CaptureMode = "none"
        self._queries: Optional[Tensor] = None
        self._maps: List[Tensor] = []
        depth = len(vit.blocks)
        for i, blk in enumerate(vit.blocks):
            blk.attn.q_norm.register_forward_hook(self._keep_queries)
            blk.attn.k_norm.register_forward_hook(self._make_capture_hook(i == depth - 1, blk.attn.scale))

    # ---- facts the rest of the pipeline reads ------------------------------------------------------------------
    @property
    def num_scales(self) -> int:
        return 1 + len(self.zoom_cls_tokens)

    @property
    def img_size(self) -> Tuple[int, int]:
        return _pair(self.vit.patch_embed.img_size)

    @property
    def patch_size(self) -> Tuple[int, int]:
        return _pair(self.vit.patch_embed.patch_size)

    @property
    def grid_size(self) -> Tuple[int, int]:
        return _pair(self.vit.patch_embed.grid_size)

    @property
    def in_chans(self) -> int:
        return int(self.vit.patch_embed.proj.in_channels)

    @property
    def depth(self) -> int:
        return len(self.vit.blocks)

    @property
    def num_classes(self) -> int:
        return int(self.vit.num_classes)

    def cls_token(self, scale: int) -> nn.Parameter:
        """The (1, 1, D) CLS parameter of ``scale`` (0-based)."""
        return self.vit.cls_token if scale == 0 else self.zoom_cls_tokens[scale - 1]

    # ---- attention capture --------------------------------------------------------------------------------------
    def _keep_queries(self, module: nn.Module, args: tuple, q: Tensor) -> None:
        if self._capture != "none":
            self._queries = q

    def _make_capture_hook(self, is_last: bool, scale: float):
        def hook(module: nn.Module, args: tuple, k: Tensor) -> None:
            if self._capture == "none" or (self._capture == "cls" and not is_last):
                return
            q = self._queries[:, :, :1] if self._capture == "cls" else self._queries
            self._queries = None
            with torch.no_grad(), torch.autocast(device_type=k.device.type, enabled=False):
                # (B, H, Nq, d) @ (B, H, d, N) -> head-mean probabilities (B, Nq, N)
                probs = (q.float() @ k.float().transpose(-2, -1)).mul_(scale).softmax(dim=-1).mean(dim=1)
            self._maps.append(probs)
        return hook

    # ---- forward stages -----------------------------------------------------------------------------------------
    def embed(self, x: Tensor, scale: int = 0) -> Tensor:
        """Patch embedding, the scale's CLS token at position 0, position embedding.

        Args:
            x: (B, C, H, W) images at ``img_size``.
            scale: which CLS token to use.

        Returns:
            (B, 1 + gh * gw, D) tokens.
        """
        x = self.vit.patch_embed(x)
        cls = self.cls_token(scale).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + self.vit.pos_embed
        x = self.vit.pos_drop(x)
        return self.vit.norm_pre(x)

    def forward_features(self, x: Tensor, scale: int = 0, capture: CaptureMode = "none") -> ViTFeatures:
        """Run the transformer on (B, C, H, W) images.

        Args:
            x: (B, C, H, W) images.
            scale: which CLS token to use (0 = the ViT's own).
            capture: "none" (fused attention only), "cls" (the last block's CLS row), "all" (every block's map).

        Returns:
            ViTFeatures with (B, N, D) tokens and the captured attention.
        """
        x = self.embed(x, scale)
        self._capture, self._maps = capture, []
        try:
            if self.vit.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint_seq(self.vit.blocks, x)
            else:
                x = self.vit.blocks(x)
        finally:
            maps, self._maps, self._capture, self._queries = self._maps, [], "none", None
        expected = {"none": 0, "cls": 1, "all": self.depth}[capture]
        if len(maps) != expected:
            raise RuntimeError(
                f"attention capture fired in {len(maps)} of {expected} blocks: this timm version's Attention no longer "
                "calls q_norm/k_norm on (B, heads, N, d) tensors")
        cls_attention = maps[-1][:, 0, 1:] if maps else None
        return ViTFeatures(tokens=self.vit.norm(x), attentions=maps if capture == "all" else [],
                           cls_attention=cls_attention)

    def forward_head(self, tokens: Tensor) -> Tensor:
        """(B, N, D) tokens -> (B, num_classes) logits through timm's own pooling and head."""
        return self.vit.forward_head(tokens)

    def forward(self, x: Tensor, scale: int = 0) -> Tensor:
        """(B, C, H, W) -> (B, num_classes) logits of one scale, attention fused."""
        return self.forward_head(self.forward_features(x, scale).tokens)

"""The timm ViT wrapper: scale-wise CLS tokens, attention capture, normalisation, and the grid facts the pipeline needs.

The wrapped model is a plain ``timm`` VisionTransformer; nothing of timm is copied. Scale 0 uses the ViT's own
``cls_token``, so ``vit`` alone stays a complete timm model (the single-scale path is timm's forward and the deployable
artefact). Zoom scales get their own CLS parameters, swapped into the same sequence position.

Attention capture hooks ``attn.q_norm`` / ``attn.k_norm`` of every block with module-level functions; a call that
captures arms them with its own state (its list of maps) on the hooked modules and disarms them when it ends, so a deep
copy, an EMA copy, a pickled or a compiled model works and carries no capture state between calls, and the hooks trace
into torch.compile's graph without a break. timm calls q_norm / k_norm on the (B, heads, N, d) queries and keys just
before its fused SDPA kernel, so the attention output stays fused and the head-mean softmax probabilities are recomputed
from the same q, k under ``no_grad``: nothing extra is kept for backward.
"""
from dataclasses import dataclass, field
from typing import List, Literal, Optional, Sequence, Tuple, Union

import timm
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import checkpoint_seq
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

__all__ = ["ViTBackbone", "ViTFeatures", "CaptureMode", "create_vit"]

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
    if len(vit.blocks) == 0:
        return "it has no transformer blocks (depth 0)"
    for i, blk in enumerate(vit.blocks):
        attn = getattr(blk, "attn", None)
        if attn is None or not all(hasattr(attn, a) for a in ("q_norm", "k_norm", "num_heads", "scale")):
            return f"block {i} has no standard timm Attention module"
    return None


def create_vit(name: str, img_size: Optional[Union[int, Tuple[int, int]]] = None, num_classes: Optional[int] = None,
               **timm_kwargs) -> VisionTransformer:
    """A timm VisionTransformer by name, refused with a sentence when RAMS-Trans cannot run on it.

    Args:
        name: timm model name, e.g. ``vit_base_patch16_224``.
        img_size: input size (int or (H, W)); None keeps the model's default.
        num_classes: classifier outputs; None keeps the model's default.
        **timm_kwargs: passed to ``timm.create_model`` (e.g. ``depth``, ``drop_path_rate``).

    Raises:
        ValueError: unknown name, arguments the model does not take, or a model RAMS-Trans cannot serve.
    """
    if not timm.is_model(name):
        raise ValueError(f"unknown backbone '{name}': timm has no model of that name")
    kwargs = dict(timm_kwargs)
    if img_size is not None:
        kwargs["img_size"] = img_size
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    try:
        vit = timm.create_model(name, pretrained=False, **kwargs)
    except TypeError as e:  # unexpected keyword: img_size means the model is no ViT at all
        if "img_size" in str(e):
            raise ValueError(f"backbone '{name}' is not supported: it is not a timm VisionTransformer") from None
        raise ValueError(f"backbone '{name}' does not accept these arguments: {e}") from None
    except (AssertionError, ValueError, RuntimeError, ZeroDivisionError) as e:  # timm's own checks of the values
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(f"backbone '{name}' cannot be built with {timm_kwargs or 'these arguments'}: {detail}") \
            from None
    reason = _unsupported_reason(vit)
    if reason is not None:
        raise ValueError(f"backbone '{name}' is not supported: {reason}")
    return vit


# The hooked q_norm / k_norm modules own one call's capture state under this attribute (None between calls).
_TAP = "_ramstrans_tap"


def _keep_queries(module: nn.Module, args: tuple, q: Tensor) -> None:
    """Forward hook of ``attn.q_norm``: keep this block's (B, heads, N, d) queries for the k_norm hook."""
    tap = module.__dict__.get(_TAP)
    if tap is not None:
        tap["q"] = q


def _capture(module: nn.Module, args: tuple, k: Tensor) -> None:
    """Forward hook of ``attn.k_norm``: the block's head-mean softmax(q kᵀ · scale), appended to the call's maps."""
    tap = module.__dict__.get(_TAP)
    if tap is None:
        return
    q = tap.pop("q")
    q = q[:, :, :1] if tap["cls_only"] else q
    with torch.no_grad(), torch.autocast(device_type=k.device.type, enabled=False):
        # (B, H, Nq, d) @ (B, H, d, N) -> head-mean probabilities (B, Nq, N)
        tap["maps"].append((q.float() @ k.float().transpose(-2, -1)).mul_(tap["scale"]).softmax(dim=-1).mean(dim=1))


def _set_taps(blocks: Sequence[nn.Module], mode: CaptureMode, maps: Optional[List[Tensor]]) -> None:
    """Arm the capture hooks of the blocks for one call (``maps``: that call's own list), or disarm them (None)."""
    chosen = list(blocks)[-1:] if mode == "cls" else list(blocks)
    for blk in chosen:
        tap = None if maps is None else {"maps": maps, "cls_only": mode == "cls", "scale": blk.attn.scale}
        setattr(blk.attn.q_norm, _TAP, tap)
        setattr(blk.attn.k_norm, _TAP, tap)


class ViTBackbone(nn.Module):
    """A timm ViT with one CLS token per scale, optional attention capture, and its input normalisation.

    Args:
        vit: a built timm VisionTransformer with one class token and token pooling (see ``create_vit``).
        num_scales: number of scales, i.e. of CLS tokens (scale 0 uses the ViT's own).
        mean: per-channel input mean in [0, 1]; None takes the ViT's pretrained config (ImageNet's without one).
        std: per-channel input std; None as ``mean``.

    The normalisation is stored as buffers (``norm_mean``, ``norm_std``), so it travels with the state dict.
    """

    def __init__(self, *, vit: VisionTransformer, num_scales: int = 2, mean: Optional[Sequence[float]] = None,
                 std: Optional[Sequence[float]] = None) -> None:
        super().__init__()
        reason = _unsupported_reason(vit)
        if reason is not None:
            raise ValueError(f"backbone {type(vit).__name__} is not supported: {reason}")
        if not isinstance(num_scales, int) or num_scales < 1:
            raise ValueError(f"num_scales must be an integer >= 1, got {num_scales!r}")
        self.vit: VisionTransformer = vit
        cfg = getattr(vit, "pretrained_cfg", None) or {}
        self.name: str = cfg.get("architecture") or type(vit).__name__
        # Scale 0 is vit.cls_token; these are scales 1..S-1, initialised from it.
        self.zoom_cls_tokens = nn.ParameterList(
            [nn.Parameter(vit.cls_token.detach().clone()) for _ in range(num_scales - 1)])
        self.register_buffer("norm_mean", torch.zeros(self.in_chans, dtype=torch.float64))
        self.register_buffer("norm_std", torch.ones(self.in_chans, dtype=torch.float64))
        self.set_normalization(mean if mean is not None else cfg.get("mean", IMAGENET_DEFAULT_MEAN),
                               std if std is not None else cfg.get("std", IMAGENET_DEFAULT_STD))
        for blk in vit.blocks:
            blk.attn.fused_attn = True  # capture never needs the unfused path
            blk.attn.q_norm.register_forward_hook(_keep_queries)
            blk.attn.k_norm.register_forward_hook(_capture)

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

    @property
    def mean(self) -> Tuple[float, ...]:
        """Per-channel input mean the weights expect (in [0, 1] pixel units)."""
        return tuple(self.norm_mean.tolist())

    @property
    def std(self) -> Tuple[float, ...]:
        return tuple(self.norm_std.tolist())

    def set_normalization(self, mean: Sequence[float], std: Sequence[float]) -> None:
        """Set the input normalisation (e.g. what pretrained weights expect).

        Raises:
            ValueError: not one value per input channel, or a std that is not positive.
        """
        mean, std = [float(v) for v in mean], [float(v) for v in std]
        if len(mean) != self.in_chans or len(std) != self.in_chans:
            raise ValueError(f"normalisation needs {self.in_chans} values each, got mean {mean} and std {std}")
        if min(std) <= 0:
            raise ValueError(f"normalisation std must be positive, got {std}")
        with torch.no_grad():
            self.norm_mean.copy_(torch.tensor(mean, dtype=torch.float64))
            self.norm_std.copy_(torch.tensor(std, dtype=torch.float64))

    def cls_token(self, scale: int) -> nn.Parameter:
        """The (1, 1, D) CLS parameter of ``scale`` (0-based)."""
        return self.vit.cls_token if scale == 0 else self.zoom_cls_tokens[scale - 1]

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

        Raises:
            RuntimeError: the capture did not fire in every block it hooked (a timm Attention that no longer calls
                q_norm / k_norm).
        """
        x = self.embed(x, scale)
        maps: List[Tensor] = []
        if capture != "none":
            _set_taps(self.vit.blocks, capture, maps)
        try:
            if self.vit.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint_seq(self.vit.blocks, x)
            else:
                x = self.vit.blocks(x)
        finally:
            if capture != "none":
                _set_taps(self.vit.blocks, capture, None)
        expected = {"none": 0, "cls": 1, "all": self.depth}[capture]
        if len(maps) != expected:
            raise RuntimeError(
                f"attention capture fired in {len(maps)} of {expected} blocks: the blocks' Attention did not call "
                "q_norm/k_norm on (B, heads, N, d) tensors")
        cls_attention = maps[-1][:, 0, 1:] if maps else None
        return ViTFeatures(tokens=self.vit.norm(x), attentions=maps if capture == "all" else [],
                           cls_attention=cls_attention)

    def forward_head(self, tokens: Tensor) -> Tensor:
        """(B, N, D) tokens -> (B, num_classes) logits through timm's own pooling and head."""
        return self.vit.forward_head(tokens)

    def forward(self, x: Tensor, scale: int = 0) -> Tensor:
        """(B, C, H, W) -> (B, num_classes) logits of one scale, attention fused."""
        return self.forward_head(self.forward_features(x, scale).tokens)

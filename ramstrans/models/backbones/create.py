"""``create_vit``: a timm VisionTransformer by name, refused with a sentence when RAMS-Trans cannot run on it, its
optional blocks (``WindowAttention``, ``ConvMlp``) built sized for the grid and the final prefix-token count; and the
checks ``ViTBackbone`` shares (what is supported and why, whole patches)."""

from functools import partial
from typing import Any, cast

import timm
import torch
from timm.models.deit import VisionTransformerDistilled
from timm.models.eva import Eva
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from ramstrans.config import ModelConfig
from ramstrans.errors import UsageError
from ramstrans.models.backbones.distilled import make_distilled
from ramstrans.models.blocks.attention import WindowAttention, window_attention_layer
from ramstrans.models.blocks.ffn import ConvMlp

__all__ = ["create_vit", "unsupported_reason", "check_whole_patches", "pair", "size_blocks", "timm_arguments"]


def timm_arguments(cfg: ModelConfig) -> dict[str, Any]:
    """The keyword arguments ``timm.create_model`` gets from a model config: ``backbone_kwargs`` and a non-zero
    ``drop_path_rate``."""
    return dict(cfg.backbone_kwargs, **({"drop_path_rate": cfg.drop_path_rate} if cfg.drop_path_rate else {}))


def pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def unsupported_reason(vit: nn.Module, dist_token: bool = False, saliency: str = "rollout") -> str | None:
    """Why RAMS-Trans cannot run on this model (made distilled with ``dist_token``) with ``saliency``, or None when it
    can."""
    if not isinstance(vit, (VisionTransformer, Eva)):
        return (
            f"it is a {type(vit).__name__}, neither a timm VisionTransformer nor an Eva; a CNN or a Swin zooms with "
            "model.saliency: activation"
        )
    distilled = isinstance(vit, VisionTransformerDistilled)
    if dist_token and (vit.cls_token is None or getattr(vit, "attn_pool", None) is not None):
        return "DeiT's distilled layout (model.dist_token) needs a class token read by the head, not an attention pool"
    if isinstance(vit, Eva) and (dist_token or getattr(vit, "rope_mixed", False)):
        return "DeiT's distilled layout needs a timm VisionTransformer" if dist_token else "its RoPE varies by depth"
    if getattr(vit, "dist_token", None) is not None and not distilled:
        return "it has a distillation token outside timm's VisionTransformerDistilled"
    if (distilled or dist_token) and (vit.num_reg_tokens or vit.no_embed_class or vit.dynamic_img_size):
        return "DeiT's distilled layout (model.dist_token) has no register tokens, no_embed_class or dynamic size"
    reason = _pool_reason(vit, saliency)
    if reason is not None:
        return reason
    registers = 0 if vit.reg_token is None else int(vit.reg_token.shape[1])
    if vit.num_prefix_tokens != (vit.cls_token is not None) + distilled + registers:
        return "it has prefix tokens other than the class, distillation and register tokens"
    if vit.pos_embed is None and not isinstance(vit, Eva):
        return "it has no learned position embedding"
    if not isinstance(getattr(vit, "patch_drop", None), (nn.Identity, type(None))):
        return "patch dropout removes tokens, so attention would no longer cover the patch grid"
    if len(vit.blocks) == 0:
        return "it has no transformer blocks (depth 0)"
    for i, blk in enumerate(vit.blocks):
        attn = getattr(blk, "attn", None)
        if attn is None or not all(hasattr(attn, a) for a in ("q_norm", "k_norm", "num_heads", "scale")):
            return f"block {i} has no standard timm Attention module"
    return None


def _pool_reason(vit: nn.Module, saliency: str) -> str | None:
    """Why ``saliency`` cannot be read from this ViT's pooling, or None."""
    pool, attn_pool = cast(Any, vit).global_pool, getattr(vit, "attn_pool", None)
    if saliency == "attn_pool":
        if attn_pool is None:
            return (
                f"model.saliency attn_pool needs an attention-pooling head (global_pool 'map'); it pools with '{pool}'"
            )
        return None
    if cast(Any, vit).cls_token is None:
        hint = ": use model.saliency attn_pool" if attn_pool is not None else ""
        return f"it has no class token, whose attention the rollout reads{hint}"
    if pool != "token" or attn_pool is not None:
        hint = "model.saliency attn_pool, or " if attn_pool is not None else ""
        return (
            f"it pools with '{pool}' instead of the class token, whose attention the rollout reads: use {hint}"
            "backbone_kwargs {global_pool: token}"
        )
    return None


def check_whole_patches(vit: nn.Module) -> None:
    """Refuse an input size that is not a whole number of patches (timm's patch embedding would drop the rest).

    Raises:
        UsageError: naming the size, the patch and the nearest sizes that fit.
    """
    embed = cast(Any, vit).patch_embed
    size, patch = pair(embed.img_size), pair(embed.patch_size)
    for side, p in zip(size, patch):
        if side % p:
            low, high = side - side % p, side - side % p + p
            raise UsageError(
                f"model.img_size {side} is not a multiple of the backbone's {p}-pixel patches: "
                f"{side % p} pixels of every image would be dropped; use {low or high} or {high}"
            )


def size_blocks(
    vit: Any, grid: tuple[int, int], prefix: int, attn_window: int, ffn_kernel: int, ffn_prefix: str
) -> None:
    """Check the window attention against the (gh, gw) grid, and re-size the blocks of a model built for another
    layout than ``prefix`` tokens before the patches.

    A model built by ``create_vit`` with the backbone's options is already sized (its blocks are built with the grid
    and the final prefix count); a model built elsewhere may not be: ``make_distilled`` has just added a distillation
    token to it in place, after its blocks were built, or it was built for another radius, kernel or prefix mode.
    Only such blocks are re-sized (``set_window`` / ``set_grid``), as the options say.

    Raises:
        UsageError: a radius outside the grid, or a radius for blocks built without ``WindowAttention``.
    """
    windowed = [blk.attn for blk in vit.blocks if isinstance(blk.attn, WindowAttention)]
    if attn_window and (not 0 < attn_window < max(grid) or len(windowed) != len(vit.blocks)):
        raise UsageError(
            f"model.attn_window must be 0 (global) or a radius in [1, {max(grid) - 1}] for the {grid[0]} x {grid[1]} "
            f"patch grid, on blocks built with WindowAttention; got {attn_window}"
        )
    for attn in windowed:
        if (attn.grid_size, attn.num_prefix_tokens, attn.radius) != (grid, prefix, attn_window):
            attn.set_window(grid, prefix, attn_window)
    for blk in vit.blocks:
        mlp = blk.mlp
        if isinstance(mlp, ConvMlp) and (
            (mlp.grid, mlp.num_prefix_tokens, mlp.dwconv.kernel_size[0], mlp.prefix)
            != (grid, prefix, ffn_kernel, ffn_prefix)
        ):
            mlp.set_grid(grid, prefix, ffn_kernel, ffn_prefix)


def _probe_layout(name: str, kwargs: dict[str, Any], dist_token: bool) -> tuple[tuple[int, int], int]:
    """The (gh, gw) patch grid and final prefix-token count of the model ``name`` would be, read from a copy built on
    the meta device (no memory, no draw from the random generators) with the same arguments, before the real build.

    The count is the model's own prefix tokens, plus the distillation token ``make_distilled`` adds to a plain ViT
    when ``dist_token``. A model without a patch embedding gets (1, 1): timm refuses or ``create_vit`` rejects it.
    """
    try:
        with torch.device("meta"):
            probe = timm.create_model(name, pretrained=False, **kwargs)
    except (RuntimeError, NotImplementedError):  # a timm whose init reads a tensor's value: a real copy, no draw kept
        with torch.random.fork_rng(devices=[]):
            probe = timm.create_model(name, pretrained=False, **kwargs)
    grid = getattr(getattr(probe, "patch_embed", None), "grid_size", None)
    prefix = int(getattr(probe, "num_prefix_tokens", 1))
    if dist_token and not isinstance(probe, VisionTransformerDistilled):
        prefix += 1
    return (pair(grid) if grid is not None else (1, 1)), prefix


def _block_layers(name: str, kwargs: dict[str, Any], layout: dict[str, Any]) -> dict[str, Any]:
    """timm's ``attn_layer`` / ``mlp_layer`` arguments for the options in ``layout`` (see ``create_vit``): the block
    classes with their grid, prefix count and options bound, so timm builds them sized."""
    if not (layout["window_attention"] or layout["conv_ffn"]):
        return {}
    grid, prefix = _probe_layout(name, kwargs, layout["dist_token"])
    layers: dict[str, Any] = {}
    if layout["window_attention"]:
        layers["attn_layer"] = window_attention_layer(grid, prefix, layout["attn_window"])
    if layout["conv_ffn"]:
        layers["mlp_layer"] = partial(
            ConvMlp, grid_size=grid, num_prefix_tokens=prefix, kernel=layout["ffn_kernel"], prefix=layout["ffn_prefix"]
        )
    return layers


def _build(name: str, kwargs: dict[str, Any], layout: dict[str, Any], timm_kwargs: dict[str, Any]) -> nn.Module:
    """``timm.create_model`` with the sized blocks of ``layout``; timm's refusals as one sentence naming the model."""
    try:
        return timm.create_model(name, pretrained=False, **{**kwargs, **_block_layers(name, kwargs, layout)})
    except UsageError:  # a block's own refusal of its options (model.ffn_kernel, model.ffn_prefix), as it words it
        raise
    except TypeError as e:  # unexpected keyword: img_size means the model is no ViT at all
        if "img_size" in str(e):
            raise UsageError(
                f"backbone '{name}' is not supported: it is not a timm VisionTransformer; a CNN or a Swin zooms with "
                "model.saliency: activation"
            ) from e
        raise UsageError(f"backbone '{name}' does not accept these arguments: {e}") from e
    except (AssertionError, ValueError, RuntimeError, ZeroDivisionError) as e:  # timm's own checks of the values
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UsageError(f"backbone '{name}' cannot be built with {timm_kwargs or 'these arguments'}: {detail}") from e


def create_vit(
    name: str,
    img_size: int | tuple[int, int] | None = None,
    num_classes: int | None = None,
    window_attention: bool = False,
    conv_ffn: bool = False,
    *,
    attn_window: int = 0,
    ffn_kernel: int = 3,
    ffn_prefix: str = "mlp",
    dist_token: bool = False,
    saliency: str = "rollout",
    **timm_kwargs: Any,
) -> VisionTransformer:
    """A timm VisionTransformer by name, refused with a sentence when RAMS-Trans cannot run on it.

    Args:
        name: timm model name, e.g. ``vit_base_patch16_224``.
        img_size: input size (int or (H, W)); None keeps the model's default.
        num_classes: classifier outputs; None keeps the model's default.
        window_attention: build the blocks' attention as ``WindowAttention``, sized for ``attn_window``.
        conv_ffn: build the blocks' feed-forward as ``ConvMlp``, sized for ``ffn_kernel`` and ``ffn_prefix``.
        attn_window: the ``WindowAttention`` blocks' radius (0: global); ``ViTBackbone`` checks its range.
        ffn_kernel: the ``ConvMlp`` blocks' odd kernel.
        ffn_prefix: the ``ConvMlp`` blocks' prefix mode, "mlp" or "bypass".
        dist_token: return timm's distilled layout (``make_distilled``), its blocks sized for the distillation token.
        saliency: what the model must give: "rollout" (a class token read by the head) or "attn_pool".
        **timm_kwargs: passed to ``timm.create_model`` (e.g. ``depth``, ``drop_path_rate``).

    Raises:
        UsageError: unknown name, arguments the model does not take, or a model RAMS-Trans cannot serve.
    """
    if not timm.is_model(name):
        raise UsageError(f"unknown backbone '{name}': timm has no model of that name")
    kwargs = dict(timm_kwargs)
    if img_size is not None:
        kwargs["img_size"] = img_size
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    layout = dict(
        window_attention=window_attention,
        conv_ffn=conv_ffn,
        attn_window=attn_window,
        ffn_kernel=ffn_kernel,
        ffn_prefix=ffn_prefix,
        dist_token=dist_token,
    )
    vit = _build(name, kwargs, layout, timm_kwargs)
    reason = unsupported_reason(vit, dist_token, saliency)
    if reason is not None:
        raise UsageError(f"backbone '{name}' is not supported: {reason}")
    return make_distilled(cast(VisionTransformer, vit)) if dist_token else cast(VisionTransformer, vit)

"""Pretrained initialisation of a ViT backbone (``load_vit_weights``) or a classifier's (``load_net_weights``) from
Google .npz, timm state dicts, the timm hub or ramstrans checkpoints.

Every route ends the same way: position embeddings resampled to the backbone's grid, the classifier kept only when its
class count matches (otherwise the fresh head stays), and every zoom-scale CLS token initialised from the pretrained
CLS. Files are never unpickled beyond tensors (``weights_only=True`` or safetensors).
"""

import json
import math
import os
import threading
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any, Protocol, cast

import huggingface_hub
import torch
from huggingface_hub import constants as hf_constants
from huggingface_hub.errors import EntryNotFoundError
from safetensors.torch import load_file as load_safetensors
from timm.models import eva, get_pretrained_cfg
from timm.models.vision_transformer import checkpoint_filter_fn
from torch import Tensor, nn

from ramstrans.errors import UsageError
from ramstrans.models.backbones.distilled import with_dist_position

__all__ = ["load_vit_weights", "load_net_weights", "read_state_dict", "shipped_weights", "GOOGLE_MEAN_STD"]

# Google's ViT .npz weights (IN21k, augreg) expect inputs scaled to [-1, 1].
GOOGLE_MEAN_STD = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
# Weights shipped inside the package, loadable offline by name (pretrained: synthetic-tiny): <name>.safetensors (a timm
# state dict) beside <name>.json (normalisation, architecture, how it was made).
SHIPPED_DIR = Path(__file__).resolve().parents[2] / "weights"  # ramstrans/weights
_HUB_FILES = ("model.safetensors", "pytorch_model.bin")


class TokenBackbone(Protocol):
    """What loading reads and fills of a ViT backbone (``ViTBackbone``)."""

    vit: Any  # the timm VisionTransformer or Eva
    name: str
    zoom_cls_tokens: nn.ParameterList
    zoom_dist_tokens: nn.ParameterList

    @property
    def has_dist_token(self) -> bool: ...

    def set_normalization(self, mean: Any, std: Any) -> None: ...


class NetLike(Protocol):
    """What loading reads and fills of a classifier's backbone (``NetBackbone``)."""

    net: nn.Module
    name: str

    def set_normalization(self, mean: Any, std: Any) -> None: ...


def read_state_dict(path: Path) -> dict[str, Any]:
    """Read a .safetensors or torch file of tensors (no arbitrary unpickling).

    Raises:
        UsageError: the file is neither.
    """
    try:
        if path.suffix == ".safetensors":
            return dict(load_safetensors(str(path), device="cpu"))
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # any decoding failure means "not a weights file we can read"
        raise UsageError(
            f"pretrained file {path} is not a readable safetensors or weights-only torch file "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no detail'})"
        ) from e
    if not isinstance(obj, dict):
        raise UsageError(f"pretrained file {path} holds a {type(obj).__name__}, not a state dict")
    return obj


def _unwrap(obj: dict[str, Any]) -> dict[str, Tensor]:
    for key in ("state_dict", "model", "module"):
        if isinstance(obj.get(key), dict):
            obj = obj[key]
    sd = {k: v for k, v in obj.items() if isinstance(v, Tensor)}
    if sd and all(k.startswith("module.") for k in sd):  # saved from DistributedDataParallel
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


def _lift_to_distilled(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """A plain ViT state dict in timm's distilled layout: the distillation token and its position embedding copy the
    class token's, ``head_dist`` copies ``head`` (kept only when the class count fits, as ``head``)."""
    sd = dict(sd)
    sd["dist_token"] = sd["cls_token"].clone()
    sd["pos_embed"] = with_dist_position(sd["pos_embed"])
    for k in ("weight", "bias"):
        if f"head.{k}" in sd:
            sd[f"head_dist.{k}"] = sd[f"head.{k}"].clone()
    return sd


def _lift_to_layout(sd: dict[str, Tensor], vit: Any) -> dict[str, Tensor]:
    """A register-free ViT state dict in the layout of ``vit``: with register tokens (left at the model's own
    initialisation: they are new) and with or without the class token's position embedding (``no_embed_class``). A
    class position folded away is added to the class token, so the class token's input is unchanged; one the source
    lacks is zero. Whether the source has a class position is read from its length: the model's grid plus one, or at
    another grid a square one plus one."""
    if "pos_embed" not in sd or "cls_token" not in sd or "reg_token" in sd:
        return sd
    pos = sd["pos_embed"]
    registers = 0 if vit.reg_token is None else int(vit.reg_token.shape[1])
    n, grid = pos.shape[1], math.prod(vit.patch_embed.grid_size)
    # with the model's grid the length says it; at another grid (resampled later) timm's square grids plus one
    class_pos = n == 1 + grid if n in (grid, 1 + grid) else math.isqrt(n) ** 2 != n
    if registers == 0 and class_pos == (not vit.no_embed_class):  # the layouts agree
        return sd
    sd = dict(sd)
    cls_pos, patches = (pos[:, :1], pos[:, 1:]) if class_pos else (torch.zeros_like(pos[:, :1]), pos)
    if vit.no_embed_class:
        sd["cls_token"], sd["pos_embed"] = sd["cls_token"] + cls_pos, patches
    else:
        sd["pos_embed"] = torch.cat([cls_pos, pos.new_zeros(1, registers, pos.shape[2]), patches], dim=1)
    return sd


def _load_timm_state_dict(backbone: TokenBackbone, state_dict: dict[str, Tensor], origin: str) -> None:
    """Load a timm-layout ViT (or Eva) state dict, resampling the position embedding and dropping a mismatched head; a
    plain ViT's weights are lifted into a distilled backbone (``_lift_to_distilled``) or a register / no_embed_class
    layout (``_lift_to_layout``)."""
    vit = backbone.vit
    if backbone.has_dist_token and "dist_token" not in state_dict and "cls_token" in state_dict:
        state_dict = _lift_to_distilled(state_dict)
    elif not isinstance(vit, eva.Eva):
        state_dict = _lift_to_layout(state_dict, vit)
    elif "fc_norm.weight" in state_dict and "norm.weight" not in state_dict and "norm.weight" in vit.state_dict():
        # an average-pooled EVA's final LayerNorm (on the pooled vector) becomes the token-pooled one's (on the tokens)
        state_dict = {
            ("norm" + k[len("fc_norm") :] if k.startswith("fc_norm.") else k): v for k, v in state_dict.items()
        }
    filter_fn = eva.checkpoint_filter_fn if isinstance(vit, eva.Eva) else checkpoint_filter_fn
    try:
        sd = filter_fn(state_dict, vit)
    except Exception as e:
        raise UsageError(f"pretrained weights {origin} do not fit backbone '{backbone.name}': {e}") from e
    # a plain ViT has no conv feed-forward and no registers: those keep their initialisation
    fresh = {k for k in vit.state_dict() if (".mlp.dwconv." in k or k == "reg_token") and k not in sd}
    _load_fitting(
        vit,
        sd,
        {"head.weight", "head.bias", "head_dist.weight", "head_dist.bias"},
        f"pretrained weights {origin} do not fit backbone '{backbone.name}'",
        fresh,
    )


def _load_fitting(
    module: nn.Module, sd: dict[str, Tensor], head_keys: set, misfit: str, fresh: Collection[str] = frozenset()
) -> None:
    """Load ``sd`` into ``module``; the head (``head_keys``) is dropped and left fresh when its shape differs (another
    class count), and ``fresh`` keys may be absent. Anything else missing, unexpected or of another shape is a
    ValueError starting with ``misfit``."""
    own = module.state_dict()
    sd = dict(sd)
    if not all(k in sd and sd[k].shape == own[k].shape for k in head_keys if k in own):
        for k in head_keys:
            sd.pop(k, None)
    mismatched = [k for k, v in sd.items() if k in own and own[k].shape != v.shape]
    if mismatched:
        k = mismatched[0]
        raise UsageError(f"{misfit}: {k} has shape {tuple(sd[k].shape)}, the model expects {tuple(own[k].shape)}")
    missing, unexpected = module.load_state_dict(sd, strict=False)
    missing = [k for k in missing if k not in head_keys and k not in fresh]
    if missing or unexpected:
        raise UsageError(f"{misfit}: " + (f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"))


def _load_npz(backbone: TokenBackbone, path: Path, plain: Callable[[], nn.Module] | None) -> None:
    """Google's .npz through timm's own loader; a distilled backbone through a plain twin (``plain`` builds it: timm's
    .npz loader knows the plain layout only), which first takes every tensor the two layouts share (the head among
    them), so what the file does not hold stays the backbone's own."""
    if backbone.has_dist_token and plain is None:
        raise UsageError(
            f"pretrained file {path}: a Google .npz loads into a distilled ViT through a plain one of the same "
            "arguments; build the backbone with build_backbone (or load the .npz before making it distilled)"
        )
    try:
        with torch.no_grad():
            if backbone.has_dist_token:
                assert plain is not None  # refused above
                twin = plain()
                mine, theirs = backbone.vit.state_dict(), twin.state_dict()
                twin.load_state_dict(
                    {k: v for k, v in mine.items() if k in theirs and theirs[k].shape == v.shape}, strict=False
                )
                cast(Any, twin).load_pretrained(str(path))
                _load_timm_state_dict(backbone, twin.state_dict(), str(path))
            else:
                backbone.vit.load_pretrained(str(path))
    except Exception as e:
        raise UsageError(
            f"pretrained file {path} is not a Google ViT .npz that fits backbone '{backbone.name}' "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no detail'})"
        ) from e
    backbone.set_normalization(*GOOGLE_MEAN_STD)


def _checkpoint_weights(ckpt: dict[str, Any]) -> dict[str, Tensor]:
    """A ramstrans checkpoint's weights to start from: its EMA weights when it has them (as its run reported)."""
    return ckpt["model_ema"] if isinstance(ckpt.get("model_ema"), dict) else _unwrap(ckpt)


def _load_ramstrans(backbone: TokenBackbone, ckpt: dict[str, Any], path: Path) -> None:
    """Backbone weights of a ramstrans checkpoint (its EMA weights when it has them), its normalisation, and its zoom
    CLS tokens where it has them for that scale."""
    model_sd = _checkpoint_weights(ckpt)
    prefix = "backbone.vit."
    _load_timm_state_dict(
        backbone, {k[len(prefix) :]: v for k, v in model_sd.items() if k.startswith(prefix)}, str(path)
    )
    _copy_cls_to_zoom_tokens(backbone)
    with torch.no_grad():
        for kind, tokens in (("cls", backbone.zoom_cls_tokens), ("dist", backbone.zoom_dist_tokens)):
            for i, token in enumerate(tokens):
                saved = model_sd.get(f"backbone.zoom_{kind}_tokens.{i}")
                if saved is not None and saved.shape == token.shape:
                    token.copy_(saved)
    if "backbone.norm_mean" in model_sd and "backbone.norm_std" in model_sd:
        backbone.set_normalization(model_sd["backbone.norm_mean"].tolist(), model_sd["backbone.norm_std"].tolist())


def _copy_cls_to_zoom_tokens(backbone: TokenBackbone) -> None:
    with torch.no_grad():
        for token in backbone.zoom_cls_tokens:
            token.copy_(backbone.vit.cls_token)
        for token in backbone.zoom_dist_tokens:
            token.copy_(backbone.vit.dist_token)


def _hub_file(model_name: str, tag: str, timeout_s: float) -> tuple[Path, dict | None]:
    """Find (in the local cache, or by download when online) the hub file of a timm pretrained tag."""
    full = model_name if tag in ("", "timm") else f"{model_name}.{tag}"
    try:
        cfg = get_pretrained_cfg(full, allow_unregistered=False)
    except RuntimeError:
        cfg = None
    if cfg is None:
        raise UsageError(f"timm has no pretrained weights '{full}' (pretrained= is neither a file nor a timm tag)")
    cfg = cfg.to_dict()
    hub_id = cfg.get("hf_hub_id")
    if not hub_id:
        raise UsageError(
            f"timm weights '{full}' are not on the Hugging Face hub; download them and pass the local file"
        )
    names = (cfg["hf_hub_filename"],) if cfg.get("hf_hub_filename") else _HUB_FILES
    for name in names:
        cached = huggingface_hub.try_to_load_from_cache(hub_id, name)
        if isinstance(cached, str):
            return Path(cached), cfg
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    if offline or not _online(min(3.0, timeout_s)):
        raise UsageError(
            f"cannot download timm weights '{full}': no network (or HF_HUB_OFFLINE is set) and they are "
            "not in the local cache; download them elsewhere and pass the file as pretrained=PATH"
        )
    for name in names:
        try:
            return _download(hub_id, name, full, timeout_s), cfg
        except EntryNotFoundError:
            continue
    raise UsageError(f"the hub repository {hub_id} holds none of {names}")


def _download(hub_id: str, name: str, full: str, timeout_s: float) -> Path:
    """``hf_hub_download`` with a total deadline: its own retries can wait for many minutes on a host that accepts
    connections and never answers."""
    result: dict[str, Any] = {}

    def fetch() -> None:
        try:
            result["path"] = huggingface_hub.hf_hub_download(hub_id, name)
        except Exception as e:  # handed to the caller's thread
            result["error"] = e

    worker = threading.Thread(target=fetch, daemon=True)  # abandoned, not joined, past the deadline
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        raise UsageError(
            f"downloading timm weights '{full}' did not finish within {timeout_s:g} s "
            "(model.download_timeout_s); download them elsewhere and pass the file as pretrained=PATH"
        )
    if "error" in result:
        if isinstance(result["error"], EntryNotFoundError):
            raise result["error"]
        raise UsageError(
            f"cannot download timm weights '{full}' ({type(result['error']).__name__}); download them "
            "elsewhere and pass the file as pretrained=PATH"
        ) from result["error"]
    return Path(str(result["path"]))


def _online(timeout: float = 3.0) -> bool:
    """Whether the hub answers: a HEAD request to huggingface_hub's own endpoint (``HF_ENDPOINT``: a mirror counts)
    through its own HTTP session (its proxies and certificates), within ``timeout`` seconds."""
    try:
        huggingface_hub.get_session().head(hf_constants.ENDPOINT, timeout=timeout)
        return True
    except Exception:  # any transport error (no route, DNS, a refusing proxy, a timeout) means not reachable
        return False


def shipped_weights() -> dict[str, Path]:
    """Name -> file of the weights shipped with the package."""
    return {p.stem: p for p in sorted(SHIPPED_DIR.glob("*.safetensors"))}


def _load_shipped(backbone: Any, name: str, load_sd: Callable[..., None]) -> None:
    file = shipped_weights()[name]
    meta = json.loads(file.with_suffix(".json").read_text(encoding="utf-8"))
    load_sd(backbone, _unwrap(read_state_dict(file)), f"'{name}' ({meta.get('architecture', '?')})")
    backbone.set_normalization(meta["mean"], meta["std"])


def load_vit_weights(
    backbone: TokenBackbone, source: str, download_timeout_s: float = 60.0, plain: Callable[[], nn.Module] | None = None
) -> None:
    """Initialise a ViT backbone in place from ``source``; every zoom-scale token starts from the pretrained one.

    Args:
        backbone: the backbone to fill (``ViTBackbone``).
        source: a path to Google's ``.npz``, a timm ``.safetensors`` / ``.pth`` state dict, or a ramstrans checkpoint
            (its EMA weights when it has them, its normalisation and its zoom tokens); the name of weights shipped
            with the package (``"synthetic-tiny"``); or ``"timm"`` (the model's default timm weights) or a timm
            pretrained tag such as ``"augreg_in21k"`` (downloaded from the hub unless cached; needs internet).
        download_timeout_s: the longest a hub download may take in all.
        plain: builds a plain (not distilled) ViT of the backbone's arguments, through which a distilled backbone
            reads a Google ``.npz``.

    Raises:
        FileNotFoundError: ``source`` looks like a path and does not exist.
        UsageError: the file has the wrong format or architecture, or the hub cannot be reached.
    """
    path = Path(os.path.expanduser(str(source)))
    if path.is_file() and path.suffix == ".npz":
        _load_npz(backbone, path, plain)
    elif _load_source(backbone, source, path, download_timeout_s, _load_timm_state_dict, _load_ramstrans):
        return  # a ramstrans checkpoint brought its own zoom tokens
    _copy_cls_to_zoom_tokens(backbone)


def load_net_weights(backbone: NetLike, source: str, download_timeout_s: float = 60.0) -> None:
    """Initialise a classifier's backbone in place from ``source`` (as ``load_vit_weights``, without .npz).

    Raises:
        FileNotFoundError: ``source`` looks like a path and does not exist.
        UsageError: the file has the wrong format or architecture, or the hub cannot be reached.
    """
    path = Path(os.path.expanduser(str(source)))
    _load_source(backbone, source, path, download_timeout_s, _load_net_state_dict, _load_ramstrans_net)


def _load_source(
    backbone: Any,
    source: str,
    path: Path,
    download_timeout_s: float,
    load_sd: Callable[..., None],
    load_ckpt: Callable[..., None],
) -> bool:
    """Shipped weights, a file (a ramstrans checkpoint through ``load_ckpt``, else a state dict through ``load_sd``)
    or a timm hub tag into ``backbone``; whether it was a ramstrans checkpoint."""
    if source in shipped_weights() and not path.exists():
        _load_shipped(backbone, source, load_sd)
    elif path.is_file():
        obj = read_state_dict(path)
        if obj.get("format") == "ramstrans":
            load_ckpt(backbone, obj, path)
            return True
        sd = _unwrap(obj)
        if not sd:
            raise UsageError(f"pretrained file {path} holds no tensors")
        load_sd(backbone, sd, str(path))
    elif path.suffix or os.sep in str(source) or path.exists():
        raise FileNotFoundError(f"pretrained file {source} does not exist")
    else:
        file, cfg = _hub_file(backbone.name, str(source), download_timeout_s)
        load_sd(backbone, _unwrap(read_state_dict(file)), f"'{source}'")
        if cfg is not None:
            backbone.set_normalization(cfg["mean"], cfg["std"])
    return False


def _load_ramstrans_net(backbone: NetLike, ckpt: dict[str, Any], path: Path) -> None:
    """A classifier's weights (its EMA weights when it has them) and normalisation from a ramstrans checkpoint."""
    sd = _checkpoint_weights(ckpt)
    _load_net_state_dict(
        backbone, {k[len("backbone.net.") :]: v for k, v in sd.items() if k.startswith("backbone.net.")}, str(path)
    )
    backbone.set_normalization(sd["backbone.norm_mean"].tolist(), sd["backbone.norm_std"].tolist())


def _load_net_state_dict(backbone: NetLike, state_dict: dict[str, Tensor], origin: str) -> None:
    """Load a timm classifier's state dict into a NetBackbone, dropping a classifier of another class count."""
    net: Any = backbone.net  # a timm classifier (get_classifier is timm's)
    head = net.get_classifier()
    head_ids = {id(p) for p in (head.parameters() if isinstance(head, nn.Module) else ())}
    _load_fitting(
        net,
        state_dict,
        {n for n, p in net.named_parameters() if id(p) in head_ids},
        f"pretrained weights {origin} do not fit model '{backbone.name}'",
    )

"""The extension points, one registry each, read without importing torch: backbone families (with the saliencies each
gives), model sources (what reads a checkpoint, a run folder or an export back) and export targets (each with the
source kind that reads its output back).

A built-in entry names its implementation ``"module:attribute"``, imported on first use, so that ``ramstrans --help``
and the config's checks stay light; an entry registered from outside may give the object itself. Adding a backbone
family is a module with a ``build`` function and one ``register_backbone`` line; adding an export target is a module
with a target object (``add_arguments``, ``write``) and one ``register_export_target`` line, which registers the reader
of its output too.
"""

import importlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from ramstrans.errors import UsageError

__all__ = [
    "EvalRequest",
    "Registry",
    "BackboneFamily",
    "SourceKind",
    "ExportTarget",
    "BACKBONES",
    "SOURCES",
    "EXPORT_TARGETS",
    "resolve",
    "saliencies",
    "family_of",
    "attention_saliencies",
    "register_export_target",
    "source_kind",
    "load_source",
    "open_arrays",
]

T = TypeVar("T")


@dataclass(frozen=True)
class EvalRequest:
    """What a command asks of a trained model: the options ``eval``, ``predict``, ``eval --calibrate``, ``fit-gate``,
    the zoom sweep, ``visualize``, ``export`` and the benches share, read by the reader of the source's kind.

    Attributes:
        source: a checkpoint file, a run folder (its newest checkpoint) or an export (a timm folder, an ONNX file).
        split: the data split evaluated ("val": the data set's own, or the one the run carved).
        weights: a checkpoint's "auto" (its EMA weights when it has them, as its run reported), "raw" or "ema".
        batch_size: images per batch.
        device: auto | cpu | cuda (a checkpoint's).
        data_root: the data set at another path than the training config's (used as it is, never generated).
        num_workers: loader workers (predict: decoding threads).
        skip_corrupt: skip and count unreadable images instead of stopping.
        shift: named distribution shifts of the test transform (``data.transforms.SHIFTS``).
        providers: an ONNX file's onnxruntime execution providers (empty: the CPU's).
        gate: attach the zoom gate a checkpoint holds (``ramstrans fit-gate``).
        temperature: apply the temperature fitted beside a checkpoint (off for ``eval --calibrate``, which refits it).
    """

    source: str
    split: str = "test"
    weights: str = "auto"
    batch_size: int = 32
    device: str = "auto"
    data_root: str | None = None
    num_workers: int = 2
    skip_corrupt: bool = False
    shift: tuple[str, ...] = ()
    providers: tuple[str, ...] = ()
    gate: bool = True
    temperature: bool = True


def resolve(ref: Any) -> Any:
    """A ``"module:attribute"`` reference imported, or the object itself."""
    if not isinstance(ref, str):
        return ref
    module, _, attribute = ref.partition(":")
    return getattr(importlib.import_module(module), attribute)


class Registry(Generic[T]):
    """Named entries of one extension point, in the order they were registered.

    Args:
        what: what an entry is, for messages ("backbone family").
        key: how the user names an entry (a config key or a flag), for messages.
    """

    def __init__(self, what: str, key: str) -> None:
        self.what, self.key = what, key
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T) -> T:
        """Add ``entry`` under ``name``.

        Raises:
            UsageError: ``name`` is taken.
        """
        if name in self._entries:
            raise UsageError(f"{self.what} '{name}' is registered already")
        self._entries[name] = entry
        return entry

    def unregister(self, name: str) -> None:
        """Remove ``name`` (a plug-in's test cleaning up after itself)."""
        self._entries.pop(name, None)

    def __getitem__(self, name: str) -> T:
        """The entry of ``name``.

        Raises:
            UsageError: no such entry, naming the key and the registered names.
        """
        if name not in self._entries:
            raise UsageError(f"{self.key} '{name}' is not a registered {self.what} (registered: {', '.join(self)})")
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._entries))

    def items(self) -> list[tuple[str, T]]:
        return list(self._entries.items())


@dataclass(frozen=True)
class BackboneFamily:
    """A family of backbones RAMS-Trans zooms with.

    Attributes:
        build: ``"module:function"`` or the function ``(model_cfg, num_classes, model=None) -> ZoomBackbone``: the
            backbone of ``model_cfg`` (a timm model by name, or the built ``model``), pretrained weights loaded.
        saliencies: the names of the maps it gives (``model.saliency``) and what each is, in words (pictures name it).
        attention: the saliencies whose passes capture the attention of the query the head reads (TransMix reads it).
    """

    build: Any
    saliencies: dict[str, str]
    attention: tuple[str, ...] = ()


@dataclass(frozen=True)
class SourceKind:
    """A kind of model source and how to tell it: a file with ``suffix``, a folder holding a file that matches the
    glob ``marker``, or (neither) any file.

    Attributes:
        load: ``"module:function"`` or the function ``(request) -> LoadedModel``: the model for torch.
        arrays: ``"module:function"`` or the function ``(request) -> ArrayModel``: the model behind ``deploy.predict``'s
            array interface (an ONNX file's runs without torch); by default the torch model's.
        suffix: a file's suffix (``".onnx"``).
        marker: a glob a folder holds a file of (``"config.json"``).
    """

    load: Any
    arrays: Any = "ramstrans.inference.predict:open_torch_arrays"
    suffix: str = ""
    marker: str = ""

    def matches(self, path: Path) -> bool:
        """Whether ``path`` is of this kind."""
        if self.marker:
            return path.is_dir() and any(p.is_file() for p in path.glob(self.marker))
        return path.is_file() and (not self.suffix or path.suffix == self.suffix)


@dataclass(frozen=True)
class ExportTarget:
    """An export target: ``target`` (``"module:attribute"`` or the object) has ``add_arguments(parser)`` (its own
    options) and ``write(loaded, out, scales, overwrite, options) -> Path``; ``reads`` names the source kind that
    reads what it writes."""

    target: Any
    reads: str
    help: str = field(default="")


BACKBONES: Registry[BackboneFamily] = Registry("backbone family", "model.saliency")
SOURCES: Registry[SourceKind] = Registry("model source", "the model")
EXPORT_TARGETS: Registry[ExportTarget] = Registry("export target", "--format")


def saliencies() -> dict[str, str]:
    """Every registered saliency and what its map is, in words: the one list config, plots and the CLI read."""
    return {name: title for family in BACKBONES.items() for name, title in family[1].saliencies.items()}


def attention_saliencies() -> tuple[str, ...]:
    """The registered saliencies whose passes capture attention (TransMix needs one)."""
    return tuple(name for _, family in BACKBONES.items() for name in family.attention)


def family_of(saliency: str) -> str:
    """The backbone family that gives ``saliency``.

    Raises:
        UsageError: no registered family gives it.
    """
    for name, family in BACKBONES.items():
        if saliency in family.saliencies:
            return name
    raise UsageError(
        f"model.saliency '{saliency}' is given by no registered backbone family (registered: {', '.join(saliencies())})"
    )


def register_backbone(name: str, family: BackboneFamily) -> BackboneFamily:
    """Register a backbone family; a saliency name belongs to one family.

    Raises:
        UsageError: the name, or one of its saliencies, is taken.
    """
    taken = set(family.saliencies) & set(saliencies())
    if taken:
        raise UsageError(f"saliency '{sorted(taken)[0]}' is given by another backbone family already")
    return BACKBONES.register(name, family)


def register_export_target(name: str, target: Any, reads: tuple[str, SourceKind], help: str = "") -> ExportTarget:
    """Register an export target and the source kind that reads its output back (one line for both).

    Args:
        name: the ``--format`` value.
        target: ``"module:attribute"`` or the target object (``add_arguments``, ``write``).
        reads: (kind name, ``SourceKind``) of what it writes.
        help: one line for ``ramstrans export --help``.
    """
    kind, source = reads
    SOURCES.register(kind, source)
    return EXPORT_TARGETS.register(name, ExportTarget(target=target, reads=kind, help=help))


def source_kind(path: Path) -> str:
    """The kind of model source ``path`` is: the one place that tells a file or folder's kind (by suffix, marker or
    the catch-all kinds checked last).

    Raises:
        FileNotFoundError: nothing at ``path``.
        UsageError: a folder of no registered kind.
    """
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: the model is a checkpoint file, a run folder or an export")
    specific = [(name, kind) for name, kind in SOURCES.items() if kind.suffix or kind.marker]
    generic = [(name, kind) for name, kind in SOURCES.items() if not (kind.suffix or kind.marker)]
    for name, kind in specific + generic:
        if kind.matches(path):
            return name
    kinds = " nor ".join(f"a {name} (no {k.marker})" for name, k in SOURCES.items() if k.marker)
    raise UsageError(f"{path} is a folder without a checkpoint or an export: it is not {kinds}")


def load_source(request: EvalRequest) -> Any:
    """The model of ``request.source`` for torch (a ``LoadedModel``), read by the reader of its kind."""
    return resolve(SOURCES[source_kind(Path(request.source).expanduser())].load)(request)


def open_arrays(request: EvalRequest) -> Any:
    """The model of ``request.source`` behind ``deploy.predict``'s array interface (an ``ArrayModel``), read by the
    reader of its kind: without torch where it runs without it (an ONNX file)."""
    return resolve(SOURCES[source_kind(Path(request.source).expanduser())].arrays)(request)


register_backbone(
    "vit",
    BackboneFamily(
        build="ramstrans.models.backbones.vit:build_vit",
        saliencies={"rollout": "attention rollout", "attn_pool": "attention pool's query"},
        attention=("rollout", "attn_pool"),
    ),
)
register_backbone(
    "net",
    BackboneFamily(build="ramstrans.models.backbones.net:build_net", saliencies={"activation": "activation (SCDA)"}),
)
SOURCES.register("checkpoint", SourceKind(load="ramstrans.inference.load:load_checkpoint_file"))
SOURCES.register("run folder", SourceKind(load="ramstrans.inference.load:load_run_folder", marker="checkpoint*.pth"))
register_export_target(
    "timm",
    "ramstrans.export.timm:TARGET",
    reads=("timm folder", SourceKind(load="ramstrans.inference.load:load_export_folder", marker="config.json")),
    help="a folder timm loads with create_model('local-dir:PATH', pretrained=True)",
)
register_export_target(
    "onnx",
    "ramstrans.export.onnx:TARGET",
    reads=(
        "ONNX file",
        SourceKind(
            load="ramstrans.inference.onnx_predictor:load_onnx",
            arrays="ramstrans.deploy.session:open_onnx",
            suffix=".onnx",
        ),
    ),
    help="an ONNX file onnxruntime runs (ramstrans predict runs it without torch)",
)

"""Configs from YAML files, ``--set`` overrides and checkpoints: strict on keys, types, sizes and duplicate keys; a
config file holds only its differences from the defaults."""

import dataclasses
import math
import types
import typing
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Union

import yaml

from ramstrans.config.rules import validate
from ramstrans.config.schema import Config
from ramstrans.errors import ConfigError, short_repr
from ramstrans.runtime.files import register_read, write_text_atomic

__all__ = [
    "load_config",
    "save_config",
    "config_from_dict",
    "find_config",
    "config_diff",
    "short_repr",
    "CONFIG_DIRS",
    "DEFAULT_CONFIG",
]

# the shipped configs are package data (ramstrans/configs/), found the same way by every kind of install
CONFIG_DIRS = (Path(__file__).resolve().parents[1] / "configs",)
DEFAULT_CONFIG = "synthetic_cpu"
MAX_VALUES = 10_000  # values one config key may hold (lists and mappings counted through): a YAML alias bomb stops here


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
            raise ConfigError(f"unknown config key {short_repr(key)} (known: {', '.join(sorted(names))})")
        current = getattr(node, k)
        if dataclasses.is_dataclass(current):
            _merge(current, v, key + ".")
        else:
            _check_size(v, key)
            setattr(node, k, _coerce(v, hints[k], key))


def config_from_dict(d: dict[str, Any]) -> Config:
    """A Config from nested dicts of differences (strict, validated)."""
    cfg = Config()
    _merge(cfg, d or {}, "")
    return validate(cfg)


def find_config(name_or_path: str) -> Path:
    """A path as given, or a config name (``synthetic_cpu``) looked up in the package's ``ramstrans/configs/``."""
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
        raise ConfigError(f"override {short_repr(item)} must look like section.key=value")
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


def _read_yaml(file: Path) -> dict[str, Any]:
    """A config file's mapping (strict: duplicate keys refused).

    Raises:
        ConfigError: not UTF-8, not valid YAML, or not a mapping.
    """
    register_read(file)
    try:
        with open(file, encoding="utf-8") as stream:  # the stream's name goes into YAML's messages
            data = yaml.load(stream, Loader=_StrictLoader) or {}
    except UnicodeDecodeError as e:
        raise ConfigError(f"config {file} is not UTF-8 text (a YAML file is expected)") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"config {file} is not valid YAML: {str(e).splitlines()[0]}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"config {file} must be a mapping of sections, got {short_repr(data)}")
    return data


def _config_chain(name: str, seen: tuple[Path, ...]) -> list[dict[str, Any]]:
    """The mappings to apply in order: a file's ``base:`` config (and its base, ...) first, then the file itself.

    Raises:
        ConfigError: a base that names itself through a cycle, or is not a config name.
    """
    file = find_config(name)
    if file.resolve() in seen:
        raise ConfigError(f"config {file} is its own base (base: cycle {' -> '.join(str(p) for p in seen)})")
    data = _read_yaml(file)
    parent = data.pop("base", None)
    if parent is None:
        return [data]
    if not isinstance(parent, str):
        raise ConfigError(f"config {file}: base must be a config name or file, got {short_repr(parent)}")
    return _config_chain(parent, (*seen, file.resolve())) + [data]


def load_config(path: str | None = None, overrides: Sequence[str] = (), base: dict[str, Any] | None = None) -> Config:
    """Defaults (or ``base``, e.g. a checkpoint's stored config), then the YAML file's differences, then
    ``section.key=value`` overrides.

    Raises:
        FileNotFoundError: the config file does not exist.
        ConfigError: unknown key, wrong type, value out of range, malformed YAML or override.
    """
    cfg = Config()
    _merge(cfg, base or {}, "")
    for data in _config_chain(path, ()) if path is not None else []:
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

"""``ramstrans export``: the targets of ``ramstrans.registry.EXPORT_TARGETS``, each with the options it declares."""

import argparse
from typing import Any

from ramstrans.cli.common import OVERWRITE_HELP, add_request_arguments
from ramstrans.errors import UsageError
from ramstrans.registry import EXPORT_TARGETS, resolve

__all__ = ["add", "run"]


class _Recorder:
    """An argument group that remembers the arguments a target declares in it."""

    def __init__(self, group: argparse._ArgumentGroup) -> None:
        self.group, self.actions = group, list[argparse.Action]()

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        action = self.group.add_argument(*args, **kwargs)
        self.actions.append(action)
        return action


def run(a: argparse.Namespace) -> None:
    for dest, (owner, flag, default) in a.target_options.items():
        if owner != a.format and getattr(a, dest) != default:
            raise UsageError(f"{flag} applies to --format {owner}, not to --format {a.format}")
    target = resolve(EXPORT_TARGETS[a.format].target)
    path = target.write(a.source, a.out, a.scales, a.weights, a.overwrite, a)
    print(f"wrote {target.wrote(path, a.scales, a)}")


def add(sub: argparse._SubParsersAction, targets: bool = False) -> None:
    """The export subcommand; with ``targets`` (when export runs) every target's own options too, each in its group
    (declaring them imports the targets, which ``ramstrans --help`` does not)."""
    x = sub.add_parser("export", help="write a trained model as a timm folder or an ONNX file")
    add_request_arguments(x, "weights")
    x.add_argument(
        "--format",
        default="timm",
        choices=tuple(EXPORT_TARGETS),
        help="; ".join(f"{name}: {entry.help}" for name, entry in EXPORT_TARGETS.items()),
    )
    x.add_argument("--out", required=True, help="the folder (timm) or file (onnx: a .onnx name) to write")
    x.add_argument(
        "--scales",
        type=int,
        default=1,
        help="1: the single-scale model; N: the fused N-scale model (onnx: in the graph; timm: rebuilt by "
        "ramstrans predict, timm itself loads scale 1)",
    )
    x.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    owners: dict[str, tuple[str, str, Any]] = {}
    for name, entry in EXPORT_TARGETS.items() if targets else []:
        recorder = _Recorder(x.add_argument_group(f"--format {name}"))
        resolve(entry.target).add_arguments(recorder)
        owners.update({act.dest: (name, act.option_strings[0], act.default) for act in recorder.actions})
    x.set_defaults(func=run, target_options=owners)

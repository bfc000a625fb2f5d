"""The ``ramstrans`` command: argument parsing and subcommands only, one module per subcommand (each with ``add``,
which declares its arguments, and ``run``).

A user's mistake (the typed errors of ``ramstrans.errors``, and an OS error on a path the user gave: a missing file,
no permission, a full disk) is one sentence and exit 2; ``check-data`` exits 0 when the data set is clean and 1 when
it found problems (which it lists); ``predict`` exits 1 when a file could not be read. Anything else is a bug: its
traceback is printed with a line asking to report it (exit 3). ``--debug`` shows the traceback of every error.
"""

import argparse
import sys
import traceback

from ramstrans.cli import bench, data, evaluate, export, gate, predict, train, visualize
from ramstrans.cli.common import NUMBERS
from ramstrans.errors import UsageError
from ramstrans.fields import number
from ramstrans.runtime.files import reads_scope
from ramstrans.runtime.runlog import setup_console_logging

__all__ = ["main", "parser"]

SUBCOMMANDS = (train, evaluate, visualize, export, data, gate, predict, bench)  # in the order --help lists them


def parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``ramstrans`` argument parser; for ``command`` "export", with every export target's own options (which
    imports the targets)."""
    p = argparse.ArgumentParser(prog="ramstrans", description="RAMS-Trans fine-grained recognition on timm ViTs.")
    p.add_argument("--debug", action="store_true", help="print the traceback of every error")
    sub = p.add_subparsers(dest="command", required=True)
    for module in SUBCOMMANDS:
        if module is export:
            export.add(sub, targets=command == "export")
        else:
            module.add(sub)
    return p


def _one_sentence(e: BaseException) -> str:
    """The user-facing line of an error (a DataLoader worker wraps it in a traceback: keep its last line)."""
    msg = str(e).strip()
    if "Original Traceback" in msg:
        msg = msg.splitlines()[-1].split(": ", 1)[-1]
    return msg.splitlines()[0] if msg else type(e).__name__


def _check(args: argparse.Namespace) -> None:
    """What argparse cannot: every numeric option finite and in its range (``common.NUMBERS``)."""
    for dest, (flag, bounds) in NUMBERS.items():
        value = getattr(args, dest, None)
        if isinstance(value, (int, float)):
            command = f"bench {args.what}" if args.command == "bench" else args.command
            number(value, f"{command} {flag}", **bounds)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parser(next((word for word in argv if not word.startswith("-")), None)).parse_args(argv)
    setup_console_logging()
    try:
        _check(args)
        with reads_scope():
            code = args.func(args)
    except (UsageError, OSError, FloatingPointError) as e:  # the user's to mend; named in one sentence
        if args.debug:
            traceback.print_exc()
        print(f"ramstrans: error: {_one_sentence(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ramstrans: interrupted", file=sys.stderr)
        return 130
    except Exception:  # a bug: the traceback is what a report needs
        traceback.print_exc()
        print(
            "ramstrans: internal error (a bug, not your input): please report it with the traceback above",
            file=sys.stderr,
        )
        return 3
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())

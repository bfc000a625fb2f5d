"""The documents say what the toolkit does: every ``ramstrans ...`` command line of README.md, BENCHMARKS.md and docs/
(shell code blocks) parses against the real argument parser; every command named in inline code is a real subcommand
whose flags exist; every ``--set`` key exists in the config and every ``--config`` names a shipped config; the Python
API's example runs; the README stays short."""

import argparse
import contextlib
import dataclasses
import io
import re
import shlex
from pathlib import Path

import pytest

from ramstrans.cli import parser
from ramstrans.config import Config, find_config

ROOT = Path(__file__).resolve().parent.parent
PAGES = [p for p in sorted((ROOT / "docs").glob("*.md")) if not p.is_symlink()]  # BENCHMARKS.md is linked in
DOCUMENTS = [ROOT / "README.md", ROOT / "BENCHMARKS.md", *PAGES]
_INLINE = re.compile(r"`((?:python -m |torchrun [^`]*-m )?ramstrans [^`]+)`")
_CALLS = re.compile(r"(^|\s)ramstrans\s")


def _commands(text: str) -> list[tuple[str, str]]:
    """Every ``ramstrans`` command of a Markdown text as (kind, command): "line" from shell code blocks (continuation
    lines joined, ``&&`` / ``;`` chains split, comments dropped), "inline" from inline code."""
    found, language = [], None  # language: that of the open code block, None outside one
    for line in re.sub(r"\\\n", " ", text).splitlines():
        if line.startswith("```"):
            language = line[3:].strip() if language is None else None
        elif language in ("bash", "console", "sh", ""):
            found += [("line", part.strip()) for part in re.split(r"&&|;|\|", line.split(" #")[0])]
    found += [("inline", c) for c in _INLINE.findall(text)]
    return [(kind, c) for kind, c in found if _CALLS.search(c + " ")]


def _argv(command: str) -> list[str]:
    words = [w.strip("[]") for w in shlex.split(command, comments=True)]  # [--flag VALUE]: an optional flag
    return [w for w in words[words.index("ramstrans") + 1 :] if w]


def _keys(node, prefix=""):
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        yield prefix + f.name
        if dataclasses.is_dataclass(value):
            yield from _keys(value, f"{prefix}{f.name}.")


KEYS = set(_keys(Config()))
CASES = [(doc.name, *found) for doc in DOCUMENTS for found in _commands(doc.read_text(encoding="utf-8"))]


def test_the_documents_hold_commands_to_check():
    assert len(CASES) > 80 and {name for name, _, _ in CASES} >= {"README.md", "getting-started.md", "deploy.md"}


def _subparser(command: str) -> argparse.ArgumentParser:
    top = parser(command)
    sub = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
    assert command in sub.choices, f"{command} is not a ramstrans subcommand"
    return sub.choices[command]


@pytest.mark.parametrize("where,kind,command", CASES, ids=[f"{w}:{c[:60]}" for w, _, c in CASES])
def test_every_command_parses_with_existing_flags_keys_and_configs(where, kind, command):
    argv = _argv(command)
    name = next((w for w in argv if not w.startswith("-")), None)
    own = _subparser(name)._actions if name is not None else []
    options = {s for a in own for s in a.option_strings} | {"--debug", "--help"}
    for word in argv:
        assert not word.startswith("--") or word.split("=")[0] in options, f"{where}: `{command}`: no flag {word}"
    for i, word in enumerate(argv[:-1]):
        if word == "--set":
            assert argv[i + 1].split("=", 1)[0] in KEYS, f"{where}: `{command}` sets an unknown key {argv[i + 1]}"
        if word == "--config":
            find_config(argv[i + 1])  # raises for a config that is not shipped
    if kind == "line":  # a command line to run: it parses whole
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                parser(name).parse_args(argv)
            except SystemExit as e:
                assert e.code == 0, f"{where}: `{command}` does not parse: {err.getvalue().strip()}"


def test_the_python_api_example_runs_as_written():
    text = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    example = re.findall(r"```python\n(.*?)```", text, re.S)[0]
    namespace: dict = {}
    exec(compile(example, "docs/api.md", "exec"), namespace)
    assert namespace["pred"].probs.shape == (2, 10) and namespace["cnn_rams"].backbone.saliency == "activation"


def test_the_readme_is_short_and_links_the_pages():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 250
    for page in PAGES:
        if page.name != "index.md":
            assert f"docs/{page.name}" in text, f"the README does not link docs/{page.name}"


def test_the_docs_site_lists_every_page():
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    assert [p.name for p in sorted((ROOT / "docs").glob("*.md")) if f": {p.name}" not in nav] == []

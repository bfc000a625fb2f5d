#!/usr/bin/env python
"""Benchmarks: the same as `ramstrans bench WHAT [options]` (see BENCHMARKS.md and `ramstrans bench --help`)."""

import sys

from ramstrans.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))

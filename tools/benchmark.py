#!/usr/bin/env python
"""Benchmarks: the same as `ramstrans bench {core,transmix,inat,demo} [options]` (see BENCHMARKS.md)."""

import sys

from ramstrans.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))

#!/usr/bin/env python
"""The same as `ramstrans train [options]`."""

import sys

from ramstrans.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))

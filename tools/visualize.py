#!/usr/bin/env python
"""The same as `ramstrans visualize [options]`."""

import sys

from ramstrans.cli import main

if __name__ == "__main__":
    sys.exit(main(["visualize", *sys.argv[1:]]))

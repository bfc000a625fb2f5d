#!/usr/bin/env python
"""The same as `ramstrans eval [options]`."""

import sys

from ramstrans.cli import main

if __name__ == "__main__":
    sys.exit(main(["eval", *sys.argv[1:]]))

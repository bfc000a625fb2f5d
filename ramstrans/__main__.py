import sys

from ramstrans.cli import main

sys.exit(main())

"""`python3 -m snaplab ...` runs the snaplab command line."""

import sys

from .cli import main

sys.exit(main())

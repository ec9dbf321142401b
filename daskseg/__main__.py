"""``python -m daskseg``: the daskseg command."""

import sys

from daskseg.cli import main

sys.exit(main())

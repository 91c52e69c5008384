"""``python -m ui --runs DIR --store DIR``: the same as ``twotower ui``."""

import sys

from ui.cli import main

sys.exit(main())

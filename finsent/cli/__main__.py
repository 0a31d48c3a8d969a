"""``python -m finsent.cli``: the same as the ``finsent`` command (tests start it this way)."""

import sys

from finsent.cli import main

sys.exit(main())

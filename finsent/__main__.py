"""``python -m finsent``: the same as the ``finsent`` command."""

import sys

from finsent.cli import main

sys.exit(main())

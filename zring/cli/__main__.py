"""``python -m zring.cli``: the ``zring`` command (LocalCluster starts its nodes this way)."""

import sys

from zring.cli import main

sys.exit(main())

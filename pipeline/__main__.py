"""``python -m pipeline`` runs the ``i2vgen`` CLI."""

import sys

from pipeline.cli import main

sys.exit(main())

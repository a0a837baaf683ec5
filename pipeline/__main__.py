"""``python -m pipeline`` runs the ``i2vgen`` command line (``commands.main``).

The one import from the core up to the command-line layer, named as the single exception in
the layer contracts (pyproject.toml, ``[tool.importlinter]``): ``ray job submit`` entrypoints
and the cluster manifests run ``python -m pipeline ...``, so that name must keep working.
"""

import sys

from commands.main import main

sys.exit(main())

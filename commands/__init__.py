"""The ``i2vgen`` command line: the layer above the stages.

One module per group of subcommands; each registers its parsers and imports its stage
inside its handlers, so ``i2vgen --help`` and ``i2vgen config show`` start without torch
or ray. ``python -m pipeline`` (what ``ray job submit`` runs) reaches ``commands.main``
through ``pipeline/__main__.py``, the one import from the core up to this layer.
"""

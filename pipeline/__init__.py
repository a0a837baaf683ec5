"""The core every stage shares: configs, table schemas, models, the diffusion core, media.
It imports no stage (``lint-imports`` checks it); the command line is ``commands``."""

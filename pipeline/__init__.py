"""What every stage shares: configs, table schemas, models, the diffusion core and the CLI."""

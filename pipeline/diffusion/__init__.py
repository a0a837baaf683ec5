"""The diffusion core: schedule, forward noising, samplers and guidance."""

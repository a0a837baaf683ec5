"""Generation from trained stages: requests, the cascade that samples them, and the files
it writes. Core, not a stage: training's validation, ``i2vgen eval``, ``i2vgen generate``
and the Serve endpoint all sample through the same code."""

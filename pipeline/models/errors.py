"""The weights error, in a module without torch: the CLI catches it, and a CLI that only
curates should not pay torch's import (about 500 MB of the driver's memory)."""


class WeightsError(ValueError):
    """A weights file is missing, unsafe, or does not fit the model; the message says which."""

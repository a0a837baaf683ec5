"""Typed configs, presets and overrides; see ``schema`` for every key."""

from pipeline.config.loader import ConfigError, load_config, preset_names
from pipeline.config.schema import Config

__all__ = ["Config", "ConfigError", "load_config", "preset_names"]

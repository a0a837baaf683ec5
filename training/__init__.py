"""Training: Ray Train with DeepSpeed ZeRO over the curated Lance tables."""

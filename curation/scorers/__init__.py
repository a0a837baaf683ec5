"""Weight-free and model-based scores for curation: motion, subject share, aesthetics."""

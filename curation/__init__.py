"""Curation: Ray Data stages from raw videos and images to the Lance training tables."""

"""Inference: the cascaded generator and the Ray Serve application."""

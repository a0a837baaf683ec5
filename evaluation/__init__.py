"""``i2vgen eval``: how well a trained stage animates held-out clips, and whether one model
beats another."""

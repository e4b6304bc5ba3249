"""Model settings saved beside weights (bgekit.json), the table of published checkpoints, and loading."""

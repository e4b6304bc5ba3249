"""Visualized-BGE's official inference code (FlagEmbedding 1.2.11, MIT), trimmed: the reference the tests
compare bgekit's implementation with. Not part of bgekit; see README.md here for what was kept."""

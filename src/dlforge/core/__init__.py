"""Core: the error family, the name registry, atomic file writes, and where pretrained weights come from.

Imports nothing else of dlforge; every other layer may import it.
"""

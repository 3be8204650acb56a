"""Workflows: the public functions behind each CLI command (train, evaluate, plan, lr-find, cv, init).

Each reads top to bottom and assembles lower layers; none holds logic a lower layer could own.
"""

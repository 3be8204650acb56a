"""Smaller and faster models from a run directory: ONNX export with parity, int8 quantization, pruning,
distillation, and `dlforge compress`, which searches them together under accuracy, latency and size budgets.

Every pass writes a complete run directory (a variant, `RUN/variants/<name>/`) that `evaluate`, `predict`,
`serve` and `dlforge.load()` accept like any other."""

"""The run directory as an artifact: its format on disk, the Predictor that loads it, the inputs it accepts."""

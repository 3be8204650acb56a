"""Why a model decides: attributions (Captum) for images, text, tables and mixes, with the model-randomisation
sanity check run beside every map. Reads a run directory; imports nothing above `artifact`."""

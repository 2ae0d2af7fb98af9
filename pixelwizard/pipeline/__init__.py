"""The product around the models: run configuration, presets, prompts, the stage table, provenance, status."""

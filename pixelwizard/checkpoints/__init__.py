"""Checkpoint files: strict loading, the Wan2.2 directory layout, PixelWizard trainer files, tiny random weights."""

"""What goes to and from disk: zarr latent stores, the patched VAE decode, MP4 output and its quality numbers."""

"""The three pretrained networks (Wan2.2 DiT, VAE, umT5 encoder), the PixelWizard HR model and their configs."""

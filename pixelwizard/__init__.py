"""PixelWizard: native 2K/4K text-to-video on Wan2.2-TI2V-5B."""

__version__ = "0.1.0"

"""PixelWizard: native 2K/4K text-to-video on Wan2.2-TI2V-5B.

    from pixelwizard import Pipeline     # the Python API (pixelwizard/api.py), imported on first use
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "Pipeline":
        from pixelwizard.api import Pipeline

        return Pipeline
    raise AttributeError(f"module 'pixelwizard' has no attribute {name!r}")

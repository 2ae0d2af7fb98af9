import pytest

from pixelwizard.checkpoints.tiny import write_tiny_checkpoint


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    """A complete tiny Wan2.2-TI2V-5B checkpoint directory (shared, read-only for tests)."""
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "Wan2.2-TI2V-5B", seed=0)

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from otterlite.images import load_rgb, sample_photo  # noqa: E402


@pytest.fixture(scope="session")
def photo():
    """A real photo (scikit-image's astronaut, 512x512)."""
    return load_rgb(sample_photo("astronaut.png"))


@pytest.fixture(scope="session")
def odd_photo():
    """A real photo whose sides are not multiples of 32 (coffee cropped to 301x450)."""
    return load_rgb(sample_photo("coffee.png"))[:301, :450]


@pytest.fixture
def rng():
    return np.random.default_rng(1234)

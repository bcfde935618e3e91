"""otterlite: the FRAPPE / SEA OTTER learned image codec, from research checkpoints
to deployable, bit-exact integer model files.

Pipeline: models (float torch, loaders) -> spec (frozen integers) -> export / runtime /
firmware_sim -> verify.  Core install needs only numpy and pillow.
"""
from otterlite.errors import OtterliteError

__version__ = "0.1.0"
__all__ = ["OtterliteError", "__version__"]

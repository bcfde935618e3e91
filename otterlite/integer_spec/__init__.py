"""The frozen integer spec: where floats end. Every emitter and runtime reads it."""
from otterlite.integer_spec.types import ConvStage, TableMixSpec, ThresholdConvSpec, load_spec, save_spec

__all__ = ["ConvStage", "ThresholdConvSpec", "TableMixSpec", "save_spec", "load_spec"]

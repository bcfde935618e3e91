"""The runtime a device would run: numpy (and Pillow for JPEG) only, no torch, onnx or
interpreters. It executes the integer spec blob that `otterlite export` writes.

    encoder.py   sensor: streaming_encoder (row by row: StreamingEncoder for FRAPPE,
                 WrapStreamingEncoder for WaLLoC) and FrameEncoder / encode_frame (whole frame)
    consumer.py  consumer: SEA OTTER JPEG -> RGB with the exported inverse transform
    forward.py   cloud: RGB -> SEA OTTER codec values with the exported forward transform
"""
from otterlite.runtime.consumer import ConsumerDecoder, apply_inverse, load_inverse_spec
from otterlite.runtime.forward import apply_forward, load_forward_spec
from otterlite.runtime.encoder import FrameEncoder, StreamingEncoder, encode_frame, load_encoder_spec, streaming_encoder

__all__ = ["FrameEncoder", "StreamingEncoder", "streaming_encoder", "encode_frame", "load_encoder_spec",
           "ConsumerDecoder", "apply_inverse", "load_inverse_spec", "apply_forward", "load_forward_spec"]

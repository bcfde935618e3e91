"""Firmware simulation: the FRAPPE encoder spec as generated C99 (streaming, integer only,
no malloc), built and run on the host and checked bit-exact, with resource reports; and the
SEA OTTER inverse as one generated C99 file (consumer.py).

    spec --codegen--> OUT/*.c *.h Makefile --host--> otl_host --run--> latents == reference
"""
from otterlite.firmware_sim.codegen import generate
from otterlite.firmware_sim.host import build_host, compiler_missing, encode_c

__all__ = ["build_host", "compiler_missing", "encode_c", "generate"]

"""Runs inside the tflite-runtime environment (numpy<2, no otterlite imports): loads the
.tflite given as argument with the default resolver, sends its input shape, then answers
each input on stdin with the outputs on stdout.

Framing (both ways): u32 array count, then per array: u8 length + dtype string, u8 ndim,
ndim u32 dims, the raw C-order bytes. (numpy's .npy reader needs a seekable file.)"""
import struct
import sys

import numpy as np


def write_arrays(out, arrays) -> None:
    out.write(struct.pack("<I", len(arrays)))
    for a in arrays:
        a = np.ascontiguousarray(a)
        dtype = a.dtype.str.encode()
        out.write(struct.pack("<B", len(dtype)) + dtype + struct.pack(f"<B{a.ndim}I", a.ndim, *a.shape))
        out.write(a.tobytes())
    out.flush()


def read_exact(stream, n: int) -> bytes:
    data = stream.read(n)
    if len(data) != n:
        raise EOFError("stream ended")
    return data


def read_arrays(stream) -> list:
    count, = struct.unpack("<I", read_exact(stream, 4))
    arrays = []
    for _ in range(count):
        dtype = np.dtype(read_exact(stream, read_exact(stream, 1)[0]).decode())
        ndim = read_exact(stream, 1)[0]
        shape = struct.unpack(f"<{ndim}I", read_exact(stream, 4 * ndim))
        size = int(np.prod(shape)) * dtype.itemsize
        arrays.append(np.frombuffer(read_exact(stream, size), dtype).reshape(shape))
    return arrays


def main():
    from tflite_runtime.interpreter import Interpreter

    interpreter = Interpreter(model_path=sys.argv[1], num_threads=1)
    interpreter.allocate_tensors()
    source = interpreter.get_input_details()[0]
    outputs = interpreter.get_output_details()
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    write_arrays(stdout, [source["shape"]])
    while stdin.peek(1):
        interpreter.set_tensor(source["index"], read_arrays(stdin)[0])
        interpreter.invoke()
        write_arrays(stdout, [interpreter.get_tensor(o["index"]) for o in outputs])


if __name__ == "__main__":
    main()

/* The .otl latent container, written by the sensor (byte layout: otterlite/container.py).
 *
 * Latent coder (adaptive Golomb-Rice, one context (A, N) per latent channel, initially
 * A = 2, N = 1), fed latent rows in readout order (FRAPPE: the order otl_push_row emits;
 * WaLLoC: row by row, after the frame, from the harness's latent buffer):
 *   u = v >= 0 ? 2v : -2v - 1;  k = min(k : N << k >= A, k <= 7);  q = u >> k
 *   q < 16:  q one-bits, a zero-bit, the k low bits of u;  q >= 16: 16 one-bits, u in 8 bits
 *   A += u; N += 1; if N == 32 then A >>= 1, N >>= 1.     Bits fill bytes MSB first.
 */
#ifndef OTL_CONTAINER_H
#define OTL_CONTAINER_H

#include <stddef.h>
#include <stdint.h>

#include "otl_model.h"

#define OTL_HEAD_BYTES (56 + 3 * OTL_GROUPS)  /* header up to and including the payload length */
#define OTL_MAX_CODE_BITS 24                   /* longest code of one latent */

typedef struct {
    uint8_t *out;        /* payload buffer */
    size_t capacity, length;
    uint32_t bits;       /* pending bits, the newest in the low end */
    int pending;         /* how many */
    int overflow;        /* set when the buffer was too small */
    uint32_t a[OTL_CHANNELS], n[OTL_CHANNELS];
} otl_coder;

void otl_coder_init(otl_coder *coder, uint8_t *out, size_t capacity);

/* Code one latent row (latents[c * width + j]) of the channels starting at first_channel. */
void otl_coder_row(otl_coder *coder, int first_channel, const int8_t *latents, int channels, int width);

/* Flush the last byte; returns the payload length, or 0 if the buffer overflowed. */
size_t otl_coder_finish(otl_coder *coder);

/* Write the OTL_HEAD_BYTES header for an image of width x height and a payload of the given length. */
void otl_container_head(uint8_t *out, int width, int height, uint32_t payload_length);

/* zlib's CRC-32: pass 0 first, then the previous result to continue. */
uint32_t otl_crc32(uint32_t crc, const uint8_t *data, size_t n);

#endif

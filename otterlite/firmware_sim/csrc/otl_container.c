/* The .otl container and its latent coder; formats in otl_container.h. */
#include <string.h>

#include "otl_container.h"
#include "otl_encoder.h"

void otl_coder_init(otl_coder *coder, uint8_t *out, size_t capacity) {
    int c;
    memset(coder, 0, sizeof(*coder));
    coder->out = out;
    coder->capacity = capacity;
    for (c = 0; c < OTL_CHANNELS; c++) {
        coder->a[c] = 2;
        coder->n[c] = 1;
    }
}

static void put_bits(otl_coder *coder, uint32_t value, int count) {  /* count <= 16 */
    coder->bits = (coder->bits << count) | value;
    coder->pending += count;
    while (coder->pending >= 8) {
        coder->pending -= 8;
        if (coder->length < coder->capacity)
            coder->out[coder->length++] = (uint8_t)(coder->bits >> coder->pending);
        else
            coder->overflow = 1;
    }
    coder->bits &= (1u << coder->pending) - 1u;
}

static void code_value(otl_coder *coder, int channel, int v) {
    const uint32_t u = v >= 0 ? (uint32_t)(2 * v) : (uint32_t)(-2 * v - 1);
    uint32_t *a = &coder->a[channel], *n = &coder->n[channel];
    int k = 0;
    uint32_t q;
    while ((*n << k) < *a && k < 7) k++;
    q = u >> k;
    if (q < 16) {
        put_bits(coder, ((1u << q) - 1u) << 1, (int)q + 1);
        if (k) put_bits(coder, u & ((1u << k) - 1u), k);
    } else {
        put_bits(coder, 0xFFFFu, 16);
        put_bits(coder, u, 8);
    }
    *a += u;
    if (++*n == 32) {
        *a >>= 1;
        *n >>= 1;
    }
}

void otl_coder_row(otl_coder *coder, int first_channel, const int8_t *latents, int channels, int width) {
    int c, j;
    for (c = 0; c < channels; c++)
        for (j = 0; j < width; j++) code_value(coder, first_channel + c, latents[c * width + j]);
}

size_t otl_coder_finish(otl_coder *coder) {
    if (coder->pending) put_bits(coder, 0, 8 - coder->pending);
    return coder->overflow ? 0 : coder->length;
}

static uint8_t *le16(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    return p + 2;
}

void otl_container_head(uint8_t *out, int width, int height, uint32_t payload_length) {
    static const char codec[8] = OTL_CODEC;
    uint8_t *p = out;
    int g;
    memcpy(p, "OTLF", 4);
    p[4] = 1;  /* container version */
    p[5] = 1;  /* latent coder id */
    memcpy(p + 6, codec, 8);
    memcpy(p + 14, otl_checkpoint_sha256, 32);
    p = le16(p + 46, (uint32_t)width);
    p = le16(p, (uint32_t)height);
    *p++ = OTL_CHANNELS;
    *p++ = OTL_GROUPS;
    for (g = 0; g < OTL_GROUPS; g++) {
        *p++ = (uint8_t)otl_groups[g].stride;
        *p++ = (uint8_t)otl_groups[g].first_channel;
        *p++ = (uint8_t)(otl_groups[g].first_channel + otl_groups[g].channels);
    }
    p = le16(p, payload_length & 0xFFFFu);
    le16(p, payload_length >> 16);
}

uint32_t otl_crc32(uint32_t crc, const uint8_t *data, size_t n) {
    static const uint32_t nibble[16] = {
        0x00000000u, 0x1DB71064u, 0x3B6E20C8u, 0x26D930ACu, 0x76DC4190u, 0x6B6B51F4u, 0x4DB26158u, 0x5005713Cu,
        0xEDB88320u, 0xF00F9344u, 0xD6D6A3E8u, 0xCB61B38Cu, 0x9B64C2B0u, 0x86D3D2D4u, 0xA00AE278u, 0xBDBDF21Cu};
    size_t i;
    crc = ~crc;
    for (i = 0; i < n; i++) {
        crc ^= data[i];
        crc = (crc >> 4) ^ nibble[crc & 15u];
        crc = (crc >> 4) ^ nibble[crc & 15u];
    }
    return ~crc;
}

/* The harness shared by every platform: a binary PPM (P6, maxval 255) in, row by row
 * through the streaming encoder, out as
 *   raw:       the int8 latents, scale group by scale group, each in C, H, W order, or
 *   container: the .otl bytes otterlite writes.
 * The platform supplies file access; the harness allocates nothing. */
#ifndef OTL_HARNESS_H
#define OTL_HARNESS_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    void *in, *out;
    int (*read)(void *file, uint8_t *buf, size_t n);                       /* 0: read all n bytes */
    int (*write_at)(void *file, size_t offset, const uint8_t *buf, size_t n);  /* 0: written */
} otl_files;

/* Parse the PPM header; NULL on success, else the error. */
const char *otl_read_ppm_header(const otl_files *io, int *width, int *height);

/* Bytes of raw latents of a width x height frame (padded to the largest patch). */
size_t otl_latent_bytes(int width, int height);

/* Work memory otl_encode_ppm needs (row, encoder state, and for a container the payload). */
size_t otl_work_bytes(int width, int height, int container);

/* Encode the pixels that follow the header; NULL on success, else the error. *written is
 * the output size. work must be 4-byte aligned. */
const char *otl_encode_ppm(const otl_files *io, int width, int height, int container, uint8_t *work,
                           size_t work_bytes, size_t *written);

/* A file in memory, for read and write_at. */
typedef struct {
    uint8_t *data;
    size_t size, pos;
    size_t plane;  /* reads of planar pixels (R, G, B planes this many bytes apart) give interleaved
                      rows; 0: the bytes as they are */
} otl_memory;

int otl_memory_read(void *file, uint8_t *buf, size_t n);
int otl_memory_write_at(void *file, size_t offset, const uint8_t *buf, size_t n);

/* Raw latents of width x height RGB pixels held in memory (no PPM header) into out
 * (otl_encode_ppm's raw layout): interleaved rows (H, W, 3), or with planar != 0 three planes
 * (3, H, W); NULL on success, else the error. */
const char *otl_encode_raw(const uint8_t *rgb, int width, int height, int planar, uint8_t *out, size_t out_bytes,
                           uint8_t *work, size_t work_bytes);

#endif

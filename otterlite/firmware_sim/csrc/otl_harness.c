/* PPM -> streaming encoder -> raw latents or .otl container; see otl_harness.h. */
#include <string.h>

#include "otl_container.h"
#include "otl_encoder.h"
#include "otl_harness.h"

static int read_byte(const otl_files *io, int *c) {
    uint8_t b;
    if (io->read(io->in, &b, 1)) return 0;
    *c = b;
    return 1;
}

/* A PPM header number: skips whitespace and # comments, consumes one byte after the digits. */
static int read_number(const otl_files *io, long *value) {
    int c, digits = 0;
    *value = 0;
    do {
        if (!read_byte(io, &c)) return 0;
        if (c == '#')
            do {
                if (!read_byte(io, &c)) return 0;
            } while (c != '\n');
    } while (c == ' ' || c == '\t' || c == '\r' || c == '\n');
    while (c >= '0' && c <= '9' && *value < 1000000) {
        *value = *value * 10 + (c - '0');
        digits++;
        if (!read_byte(io, &c)) return 0;
    }
    return digits > 0 && (c == ' ' || c == '\t' || c == '\r' || c == '\n');
}

const char *otl_read_ppm_header(const otl_files *io, int *width, int *height) {
    uint8_t magic[2];
    long w, h, maxval;
    if (io->read(io->in, magic, 2) || magic[0] != 'P' || magic[1] != '6')
        return "not a binary PPM (P6): convert the image with e.g. Pillow's save('x.ppm')";
    if (!read_number(io, &w) || !read_number(io, &h) || !read_number(io, &maxval))
        return "malformed PPM header (width, height, maxval)";
    if (maxval != 255) return "PPM maxval is not 255: only 8-bit PPM is supported";
    if (w < OTL_LARGEST_PATCH || h < OTL_LARGEST_PATCH || w > OTL_MAX_SIDE || h > OTL_MAX_SIDE)
        return "image size out of range: each side must be at least the largest patch and at most 65535";
    *width = (int)w;
    *height = (int)h;
    return NULL;
}

static size_t align4(size_t n) { return (n + 3u) & ~(size_t)3u; }

size_t otl_latent_bytes(int width, int height) {
    const int pw = (width + OTL_LARGEST_PATCH - 1) / OTL_LARGEST_PATCH * OTL_LARGEST_PATCH;
    const int ph = (height + OTL_LARGEST_PATCH - 1) / OTL_LARGEST_PATCH * OTL_LARGEST_PATCH;
    size_t n = 0;
    int g;
    for (g = 0; g < OTL_GROUPS; g++)
        n += (size_t)otl_groups[g].channels * (size_t)(pw / otl_groups[g].stride) * (size_t)(ph / otl_groups[g].stride);
    return n;
}

size_t otl_work_bytes(int width, int height, int container) {
    size_t n = align4((size_t)width * 3u) + align4(otl_state_bytes(width));
    if (container) n += OTL_HEAD_BYTES + otl_latent_bytes(width, height) * OTL_MAX_CODE_BITS / 8 + 4;
    if (container && OTL_WRAP) n += align4(otl_latent_bytes(width, height));  /* rows to code in order */
    return n;
}

typedef struct {
    const otl_files *io;
    otl_coder *coder;           /* container mode */
    int8_t *frame;              /* container mode, WaLLoC: the latents [row][c][j], coded after the frame */
    size_t group_offset[OTL_GROUPS];  /* raw mode: where each group starts in the output */
    int group_rows[OTL_GROUPS];
    int failed;
} sink;

static void on_latent_row(void *ctx, int group, int latent_row, const int8_t *latents, int channels, int width) {
    sink *s = (sink *)ctx;
    int c;
    if (s->frame) {
        memcpy(s->frame + (size_t)latent_row * (size_t)channels * (size_t)width, latents, (size_t)channels * (size_t)width);
        return;
    }
    if (s->coder) {
        otl_coder_row(s->coder, otl_groups[group].first_channel, latents, channels, width);
        return;
    }
    for (c = 0; c < channels; c++) {
        size_t at = s->group_offset[group] + ((size_t)c * (size_t)s->group_rows[group] + (size_t)latent_row) * (size_t)width;
        if (s->io->write_at(s->io->out, at, (const uint8_t *)latents + (size_t)c * (size_t)width, (size_t)width))
            s->failed = 1;
    }
}

/* otl_encode_ppm, with the rows read through io, or taken in place from `rows` (interleaved,
 * width * 3 bytes each) when it is not NULL. */
static const char *encode_rows(const otl_files *io, const uint8_t *rows, int width, int height, int container,
                               uint8_t *work, size_t work_bytes, size_t *written) {
    const size_t row_bytes = align4((size_t)width * 3u), state_bytes = align4(otl_state_bytes(width));
    otl_encoder enc;
    otl_coder coder;
    sink s;
    uint8_t *payload = work + row_bytes + state_bytes;
    int r, g;
    if (work_bytes < otl_work_bytes(width, height, container)) return "not enough work memory for this image size";
    if (otl_init(&enc, work + row_bytes, state_bytes, width, height) != OTL_OK) return "encoder refused the frame";
    memset(&s, 0, sizeof(s));
    s.io = io;
    *written = 0;
    for (g = 0; g < OTL_GROUPS; g++) {
        const int k = otl_groups[g].stride;
        s.group_rows[g] = enc.padded_height / k;
        if (g + 1 < OTL_GROUPS)
            s.group_offset[g + 1] = s.group_offset[g] + (size_t)otl_groups[g].channels * (size_t)s.group_rows[g] *
                                                        (size_t)(enc.padded_width / k);
        else
            *written = s.group_offset[g] + (size_t)otl_groups[g].channels * (size_t)s.group_rows[g] *
                                           (size_t)(enc.padded_width / k);
    }
    if (container) {
        const size_t frame_bytes = OTL_WRAP ? align4(otl_latent_bytes(width, height)) : 0;
        s.frame = OTL_WRAP ? (int8_t *)(payload + (work_bytes - row_bytes - state_bytes - frame_bytes)) : NULL;
        otl_coder_init(&coder, payload + OTL_HEAD_BYTES,
                       work_bytes - row_bytes - state_bytes - frame_bytes - OTL_HEAD_BYTES - 4);
        s.coder = &coder;
    }
    if (rows && !container) {  /* in place, raw: the rows in one call (written by row index, any order) */
        if (otl_push_rows(&enc, rows, (size_t)width * 3u, height, on_latent_row, &s) < 0) return "encoder refused a row";
        return s.failed ? "cannot write the output" : NULL;
    }
    for (r = 0; r < height; r++) {
        const uint8_t *row = rows ? rows + (size_t)r * (size_t)width * 3u : work;
        if (!rows && io->read(io->in, work, (size_t)width * 3u)) return "PPM pixel data ends early (truncated file)";
        if (otl_push_row(&enc, row, on_latent_row, &s) < 0) return "encoder refused a row";
        if (s.failed) return "cannot write the output";
    }
    if (container) {
        size_t length;
        if (s.frame) {  /* WaLLoC: rows were completed out of order; code them in order now */
            const int cols = enc.padded_width / otl_groups[0].stride, channels = otl_groups[0].channels;
            for (r = 0; r < s.group_rows[0]; r++)
                otl_coder_row(&coder, 0, s.frame + (size_t)r * (size_t)channels * (size_t)cols, channels, cols);
        }
        length = otl_coder_finish(&coder);
        uint32_t crc;
        if (length == 0) return "payload buffer overflow";
        otl_container_head(payload, width, height, (uint32_t)length);
        crc = otl_crc32(0, payload, OTL_HEAD_BYTES + length);
        payload[OTL_HEAD_BYTES + length + 0] = (uint8_t)crc;
        payload[OTL_HEAD_BYTES + length + 1] = (uint8_t)(crc >> 8);
        payload[OTL_HEAD_BYTES + length + 2] = (uint8_t)(crc >> 16);
        payload[OTL_HEAD_BYTES + length + 3] = (uint8_t)(crc >> 24);
        *written = OTL_HEAD_BYTES + length + 4;
        if (io->write_at(io->out, 0, payload, *written)) return "cannot write the output";
    }
    return NULL;
}

/* Planar pixels: n / 3 pixels from the R, G and B planes, interleaved into buf. */
static int planes_read(otl_memory *m, uint8_t *buf, size_t n) {
    const uint8_t *r = m->data + m->pos, *g = r + m->plane, *b = g + m->plane;
    size_t i;
    if (n % 3u || m->plane - m->pos < n / 3u) return 1;
    for (i = 0; i < n / 3u; i++, buf += 3) buf[0] = r[i], buf[1] = g[i], buf[2] = b[i];
    m->pos += n / 3u;
    return 0;
}

const char *otl_encode_ppm(const otl_files *io, int width, int height, int container, uint8_t *work,
                           size_t work_bytes, size_t *written) {
    return encode_rows(io, NULL, width, height, container, work, work_bytes, written);
}

int otl_memory_read(void *file, uint8_t *buf, size_t n) {
    otl_memory *m = (otl_memory *)file;
    if (m->plane) return planes_read(m, buf, n);
    if (m->size - m->pos < n) return 1;
    memcpy(buf, m->data + m->pos, n);
    m->pos += n;
    return 0;
}

int otl_memory_write_at(void *file, size_t offset, const uint8_t *buf, size_t n) {
    otl_memory *m = (otl_memory *)file;
    if (offset > m->size || m->size - offset < n) return 1;
    memcpy(m->data + offset, buf, n);
    return 0;
}

const char *otl_encode_raw(const uint8_t *rgb, int width, int height, int planar, uint8_t *out, size_t out_bytes,
                           uint8_t *work, size_t work_bytes) {
    otl_memory in, dst;
    otl_files io;
    size_t written;
    if (width < OTL_LARGEST_PATCH || height < OTL_LARGEST_PATCH || width > OTL_MAX_SIDE || height > OTL_MAX_SIDE)
        return "image size out of range: each side must be at least the largest patch and at most 65535";
    in.data = (uint8_t *)(uintptr_t)rgb, in.size = (size_t)width * (size_t)height * 3u, in.pos = 0;
    in.plane = planar ? (size_t)width * (size_t)height : 0;
    dst.data = out, dst.size = out_bytes, dst.pos = 0, dst.plane = 0;
    io.in = &in, io.out = &dst, io.read = otl_memory_read, io.write_at = otl_memory_write_at;
    return encode_rows(&io, planar ? NULL : rgb, width, height, 0, work, work_bytes, &written);
}

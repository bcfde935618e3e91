/* The consumer's JPEG decode for the host library (libotl_inverse.so with libjpeg): libjpeg
 * decodes the SEA OTTER JPEG with no colour conversion, and each band of decoded rows goes
 * through the inverse while it is still in cache. Built with OTL_INV_PLANES (the 1x1 mix of
 * three channels, otl_inverse_planes) a full-resolution JPEG (4:4:4, as transcode writes) is
 * read as libjpeg's raw data: 8 rows of each component plane at a time, no interleaving copy
 * (at 1080p here 3.2 against 4.1 ms for the interleaved YCbCr rows); otherwise out_color_space
 * JCS_YCbCr hands back the components interleaved (upsampled if subsampled), as Pillow's
 * draft("YCbCr") does. Not for the MCU (malloc, stdio, libjpeg).
 *
 * Strict: a libjpeg warning (corrupt data, premature end of file) is an error here, where
 * libjpeg alone would fill the rest with grey.
 */
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jpeglib.h>

void otl_inverse(const uint8_t *codes, int width, int height, uint8_t *rgb);
#ifdef OTL_INV_PLANES
void otl_inverse_planes(const uint8_t *z0, const uint8_t *z1, const uint8_t *z2, long n, uint8_t *rgb);
#endif

struct otl_jpeg_error {
    struct jpeg_error_mgr mgr;
    jmp_buf back;
    char *message;
    int message_size;
};

static void otl_jpeg_fail(j_common_ptr cinfo)
{
    struct otl_jpeg_error *err = (struct otl_jpeg_error *)cinfo->err;
    char text[JMSG_LENGTH_MAX];
    err->mgr.format_message(cinfo, text);
    snprintf(err->message, (size_t)err->message_size, "%s", text);
    longjmp(err->back, 1);
}

static void otl_jpeg_message(j_common_ptr cinfo, int level)
{
    if (level < 0) otl_jpeg_fail(cinfo); /* a warning: corrupt or truncated data */
}

#ifdef OTL_INV_PLANES
/* A full-resolution JPEG's raw data (raw_data_out set, decompression started), DCTSIZE rows of
 * each component at a time into buffer (3 x DCTSIZE rows of `padded` bytes: whole blocks),
 * each row through otl_inverse_planes. Errors longjmp to the caller. */
static void raw_planes(j_decompress_ptr cinfo, uint8_t *buffer, size_t padded, int width, int height, uint8_t *rgb)
{
    JSAMPROW rows[3][DCTSIZE];
    JSAMPARRAY planes[3];
    int c, n;

    for (c = 0; c < 3; c++) {
        for (n = 0; n < DCTSIZE; n++) rows[c][n] = buffer + ((size_t)c * DCTSIZE + (size_t)n) * padded;
        planes[c] = rows[c];
    }
    while (cinfo->output_scanline < cinfo->output_height) {
        const int top = (int)cinfo->output_scanline;
        if (jpeg_read_raw_data(cinfo, planes, DCTSIZE) != DCTSIZE) break; /* suspension: not with a memory source */
        for (n = 0; n < DCTSIZE && top + n < height; n++)
            otl_inverse_planes(rows[0][n], rows[1][n], rows[2][n], width, rgb + ((size_t)top + (size_t)n) * width * 3);
    }
}
#endif

static uint8_t *rows_buffer(size_t rows, size_t row_bytes, int width, char *message, int message_size)
{
    uint8_t *buffer = malloc(rows * row_bytes);
    if (!buffer) snprintf(message, (size_t)message_size, "out of memory for %zu rows of %d pixels", rows, width);
    return buffer;
}

/* jpeg: the file's bytes; width, height: the size its header declares (checked);
 * inverse 1: raw components through otl_inverse, a band of rows at a time when band_rows
 * is set (a 1x1 mix), else the whole image first (wider kernels read rows around each one);
 * inverse 0: libjpeg's own RGB conversion (the plain decode, a reference for bench).
 * rgb: height x width x 3. Returns 0, or -1 with the reason in message. */
int otl_decode_jpeg(const uint8_t *jpeg, unsigned long size, int width, int height, int inverse, int band_rows,
                    uint8_t *rgb, char *message, int message_size)
{
    struct jpeg_decompress_struct cinfo;
    struct otl_jpeg_error err;
    uint8_t *volatile codes = NULL;
    const size_t stride = (size_t)width * 3;
    size_t rows_held;

    cinfo.err = jpeg_std_error(&err.mgr);
    err.mgr.error_exit = otl_jpeg_fail;
    err.mgr.emit_message = otl_jpeg_message;
    err.message = message;
    err.message_size = message_size;
    if (setjmp(err.back)) {
        jpeg_destroy_decompress(&cinfo);
        free(codes);
        return -1;
    }
    jpeg_create_decompress(&cinfo);
    jpeg_mem_src(&cinfo, (unsigned char *)jpeg, size);
    jpeg_read_header(&cinfo, TRUE);
    if ((int)cinfo.image_width != width || (int)cinfo.image_height != height || cinfo.num_components != 3 ||
        cinfo.jpeg_color_space != JCS_YCbCr) {
        snprintf(message, (size_t)message_size, "a %ux%u JPEG of %d components (colour space %d), expected %dx%d YCbCr",
                 cinfo.image_width, cinfo.image_height, cinfo.num_components, (int)cinfo.jpeg_color_space, width,
                 height);
        jpeg_destroy_decompress(&cinfo);
        return -1;
    }
    cinfo.out_color_space = inverse ? JCS_YCbCr : JCS_RGB;
    cinfo.dct_method = JDCT_ISLOW; /* libjpeg's default, and Pillow's */
#ifdef OTL_INV_PLANES
    if (inverse && band_rows && cinfo.max_h_samp_factor == 1 && cinfo.max_v_samp_factor == 1) {
        const size_t padded = (size_t)cinfo.comp_info[0].width_in_blocks * DCTSIZE;
        codes = rows_buffer(3 * DCTSIZE, padded, width, message, message_size);
        if (!codes) {
            jpeg_destroy_decompress(&cinfo);
            return -1;
        }
        cinfo.raw_data_out = TRUE;
        jpeg_start_decompress(&cinfo);
        raw_planes(&cinfo, codes, padded, width, height, rgb);
        jpeg_finish_decompress(&cinfo);
        jpeg_destroy_decompress(&cinfo);
        free(codes);
        return 0;
    }
#endif
    jpeg_start_decompress(&cinfo);
    rows_held = !inverse ? 0 : band_rows ? (size_t)cinfo.rec_outbuf_height * 8 : (size_t)height;
    if (rows_held) {
        codes = rows_buffer(rows_held, stride, width, message, message_size);
        if (!codes) {
            jpeg_destroy_decompress(&cinfo);
            return -1;
        }
    }
    while (cinfo.output_scanline < cinfo.output_height) {
        const int top = (int)cinfo.output_scanline;
        uint8_t *into = !inverse ? rgb + (size_t)top * stride : band_rows ? codes : codes + (size_t)top * stride;
        JSAMPROW rows[64];
        int n = 0, got;
        const int want = !inverse || !band_rows ? (int)(cinfo.output_height - cinfo.output_scanline)
                                                : (int)rows_held;
        while (n < want && n < 64) {
            rows[n] = into + (size_t)n * stride;
            n++;
        }
        got = (int)jpeg_read_scanlines(&cinfo, rows, (JDIMENSION)n);
        if (inverse && band_rows) otl_inverse(codes, width, got, rgb + (size_t)top * stride);
    }
    if (inverse && !band_rows) otl_inverse(codes, width, height, rgb);
    jpeg_finish_decompress(&cinfo);
    jpeg_destroy_decompress(&cinfo);
    free(codes);
    return 0;
}

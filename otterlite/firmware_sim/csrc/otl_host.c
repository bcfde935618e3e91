/* Host harness (any hosted C99 system: x86-64, ARM Linux):
 *   otl_host IN.ppm OUT.bin               raw int8 latents, group by group, each C, H, W (the
 *                                         frame in memory, all rows in one otl_push_rows call)
 *   otl_host --container IN.ppm OUT.otl   the .otl container bytes (rows streamed from the file
 *                                         through otl_push_row, as on the MCU)
 *   otl_host --bench N IN.ppm             encode the frame N times from memory (raw), print the
 *                                         fastest frame's MPx/s
 *   otl_host --memory W                   print the RAM the encoder needs for rows of width W
 * Errors: a message on stderr, exit code 1, and no output file. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "otl_container.h"
#include "otl_encoder.h"
#include "otl_harness.h"

static int file_read(void *file, uint8_t *buf, size_t n) { return fread(buf, 1, n, (FILE *)file) != n; }

static int file_write_at(void *file, size_t offset, const uint8_t *buf, size_t n) {
    if (fseek((FILE *)file, (long)offset, SEEK_SET)) return 1;
    return fwrite(buf, 1, n, (FILE *)file) != n;
}

static int fail(const char *path, const char *message) {
    fprintf(stderr, "otl_host: %s: %s\n", path, message);
    return 1;
}

static int usage(void) {
    fprintf(stderr, "usage: otl_host [--container] IN.ppm OUT | --bench N IN.ppm | --memory WIDTH\n"
                    "example: otl_host photo.ppm photo.bin\n");
    return 2;
}

/* The PPM at path in memory (*rgb: malloc'd, width * height * 3 bytes); NULL or the error. */
static const char *read_frame(const char *path, int *width, int *height, uint8_t **rgb) {
    FILE *f = fopen(path, "rb");
    otl_files io;
    const char *error;
    *rgb = NULL;
    if (!f) return "cannot open";
    io.in = f, io.out = NULL, io.read = file_read, io.write_at = file_write_at;
    error = otl_read_ppm_header(&io, width, height);
    if (!error && !(*rgb = (uint8_t *)malloc((size_t)*width * (size_t)*height * 3u))) error = "out of memory";
    if (!error && file_read(f, *rgb, (size_t)*width * (size_t)*height * 3u))
        error = "PPM pixel data ends early (truncated file)";
    fclose(f);
    return error;
}

/* The raw output (otl_latent_bytes) and work memory (otl_work_bytes, raw) for a frame: malloc'd,
 * NULL where that fails (encode_frame says so). */
static void frame_buffers(int width, int height, uint8_t **out, uint8_t **work) {
    *out = (uint8_t *)malloc(otl_latent_bytes(width, height));
    *work = (uint8_t *)malloc(otl_work_bytes(width, height, 0));
}

/* Raw latents of the frame in memory, all rows in one otl_push_rows call (otl_encode_raw),
 * into out (otl_latent_bytes), with work (otl_work_bytes, raw). */
static const char *encode_frame(const uint8_t *rgb, int width, int height, uint8_t *out, uint8_t *work) {
    if (!out || !work) return "out of memory";
    return otl_encode_raw(rgb, width, height, 0, out, otl_latent_bytes(width, height), work,
                          otl_work_bytes(width, height, 0));
}

static int bench(int repeats, const char *path) {
    uint8_t *rgb = NULL, *out = NULL, *work = NULL;
    int width = 0, height = 0, i;
    double seconds = 0;
    const char *error = read_frame(path, &width, &height, &rgb);
    if (!error) frame_buffers(width, height, &out, &work);
    for (i = 0; i < repeats && !error; i++) {  /* the fastest frame: the least disturbed by other work */
        const clock_t start = clock();
        double frame;
        error = encode_frame(rgb, width, height, out, work);
        frame = (double)(clock() - start) / CLOCKS_PER_SEC;
        if (i == 0 || frame < seconds) seconds = frame;
    }
    free(rgb);
    free(out);
    free(work);
    if (error) return fail(path, error);
    printf("frames %d size %dx%d best_frame_seconds %.6f mpx_s %.3f\n", repeats, width, height, seconds,
           seconds > 0 ? (double)width * height / seconds / 1e6 : 0.0);
    return 0;
}

/* Raw mode: the frame in memory, encoded in one call, written to part. */
static const char *raw(const char *in_path, const char *part) {
    uint8_t *rgb = NULL, *out = NULL, *work = NULL;
    int width = 0, height = 0;
    const char *error = read_frame(in_path, &width, &height, &rgb);
    FILE *f = NULL;
    if (!error) {
        frame_buffers(width, height, &out, &work);
        error = encode_frame(rgb, width, height, out, work);
    }
    if (!error && !(f = fopen(part, "wb"))) error = "cannot create the output";
    if (!error) {
        const size_t bytes = otl_latent_bytes(width, height);
        const int short_write = fwrite(out, 1, bytes, f) != bytes;
        if (fclose(f) || short_write) error = "cannot write the output";
    }
    free(rgb);
    free(out);
    free(work);
    return error;
}

/* Container mode: the rows streamed from the file through otl_push_row (otl_encode_ppm), the
 * container written to part. */
static const char *container_file(const char *in_path, const char *part) {
    FILE *in = fopen(in_path, "rb"), *out = NULL;
    otl_files io;
    uint8_t *work = NULL;
    size_t written = 0;
    int width, height;
    const char *error;
    if (!in) return "cannot open";
    io.in = in, io.read = file_read, io.write_at = file_write_at;
    error = otl_read_ppm_header(&io, &width, &height);
    if (!error && !(work = (uint8_t *)malloc(otl_work_bytes(width, height, 1)))) error = "out of memory";
    if (!error && !(out = fopen(part, "wb"))) error = "cannot create the output";
    if (!error) {
        io.out = out;
        error = otl_encode_ppm(&io, width, height, 1, work, otl_work_bytes(width, height, 1), &written);
    }
    if (out && fclose(out) && !error) error = "cannot write the output";
    free(work);
    fclose(in);
    return error;
}

static int memory(int width) {
    if (otl_state_bytes(width) == 0) return fail("--memory", "width out of range");
    printf("state_bytes %lu row_bytes %lu encoder_bytes %lu coder_bytes %lu\n", (unsigned long)otl_state_bytes(width),
           (unsigned long)width * 3ul, (unsigned long)sizeof(otl_encoder), (unsigned long)sizeof(otl_coder));
    return 0;
}

int main(int argc, char **argv) {
    const int container = argc == 4 && strcmp(argv[1], "--container") == 0;
    const char *in_path, *out_path, *error;
    char part[4096];
    if (argc == 3 && strcmp(argv[1], "--memory") == 0) return memory(atoi(argv[2]));
    if (argc == 4 && strcmp(argv[1], "--bench") == 0) return atoi(argv[2]) > 0 ? bench(atoi(argv[2]), argv[3]) : usage();
    if (argc != 3 && !container) return usage();
    in_path = argv[argc - 2];
    out_path = argv[argc - 1];
    if (strlen(out_path) + 6 > sizeof(part)) return fail(out_path, "path too long");
    sprintf(part, "%s.part", out_path);  /* written here, renamed on success */
    if (!container) {
        if ((error = raw(in_path, part))) {
            remove(part);
            return fail(in_path, error);
        }
    } else if ((error = container_file(in_path, part))) {
        remove(part);
        return fail(in_path, error);
    }
    if (rename(part, out_path)) {
        remove(part);
        return fail(out_path, "cannot rename the finished output into place");
    }
    return 0;
}

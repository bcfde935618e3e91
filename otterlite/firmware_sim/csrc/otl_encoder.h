/* otterlite streaming encoder (FRAPPE or WaLLoC): C99, integers only, no malloc, no float, no
 * libc beyond memset. The caller owns every buffer.
 *
 * FRAPPE (OTL_WRAP 0). For scale group g (patch k = stride = kernel, C channels,
 * w = padded_width / k patch columns) and row r = k*i + u of the padded frame:
 *   acc[g][j][c] += sum_{t < 3k} row[3k*j + t] * W_g[u][c][t]          (t = 3v + ch; 16-bit
 *                   weights, int32 sums, exact: the freeze step proved |acc| < 2^31)
 * after the row with u = k - 1 the patch row i is complete:
 *   latent[c][j]  = OTL_BASE + #{n : acc[g][j][c] >= T_g[c][n]}       (no rounding at run time)
 * and acc[g] is cleared. The count is a bucket-table lookup (otl_buckets) or, where a
 * bucket would hold more than 4 thresholds, an 8-step binary search over T padded to 256
 * entries with INT32_MAX; both exact. A frame whose sides are not multiples of the largest patch is
 * padded by edge replication: each row to the right, and the last row repeated below
 * (the push of the last row emits every remaining latent row).
 *
 * WaLLoC (OTL_WRAP 1): one group, a K x K kernel at stride s with wrap-around border
 * (pad p = (K - 1) / 2): latent row i sums the padded rows t = s*i - p + u, u < K, taken
 * mod padded_height, each row wrapped the same way along x:
 *   acc[i][j][c] += sum_{t < 3K} wrapped_row[3s*j + t] * W[u][c][t],  wrapped_row[3q + ch] =
 *                   row[3 ((q - p) mod padded_width) + ch]
 * Each pushed row is added at once to every open latent row whose window holds one of its
 * wrapped copies; a latent row is counted and emitted when its K rows are in. No image row
 * is kept: latent rows 0 .. ceil(p/s) - 1 (their windows start with the frame's last rows)
 * complete with the last push, so rows are emitted out of order (the raw output is written
 * by row index; the container codes them after the frame). At most OTL_OPEN_ROWS latent rows
 * are open at once: ceil(p/s) at the top + floor((K-1-p)/s) at the bottom + (K-1)/s + 1.
 *
 * The sums are taken four channels at a time: the patch row (zero-padded to 2 * pairs values)
 * is read as pairs (x[2p], x[2p+1]), each multiplied with four channels' weight pairs and
 * added into four int32 lanes, the operation of PMADDWD / VPDPWSSD (x86), SMLAD (Arm DSP) and
 * VMLAL (NEON); channels are padded to blocks of four with zero weights (otl_encoder.c).
 */
#ifndef OTL_ENCODER_H
#define OTL_ENCODER_H

#include <stddef.h>
#include <stdint.h>

#include "otl_model.h"

#define OTL_MAX_SIDE 65535  /* the .otl container stores sizes as u16 */

/* Which weight layouts this build's kernels read (otl_encoder.c; otl_model.c holds only those):
 * pairs everywhere but Arm DSP builds, the int8 quads beside them on x86 with AVX-512 VNNI
 * compiled in, and the AMX tiles with them on Linux (-DOTL_NO_AMX leaves them out), the DSP
 * layout (trios of channels, quads of values) on Arm DSP builds. */
#if !defined(OTL_PORTABLE) && !defined(__SSE2__) && !defined(__ARM_NEON) && defined(__ARM_FEATURE_SIMD32)
#define OTL_DSP_WEIGHTS 1
#else
#define OTL_DSP_WEIGHTS 0
#endif
#if defined(__x86_64__) && defined(__GNUC__) && !defined(OTL_PORTABLE) && !defined(OTL_NO_AVX2) && \
    !defined(OTL_NO_AVX512) && !defined(OTL_NO_VNNI8)
#define OTL_BYTES_WEIGHTS 1
#else
#define OTL_BYTES_WEIGHTS 0
#endif
#if defined(__x86_64__) && defined(__GNUC__) && !defined(OTL_PORTABLE) && !defined(OTL_NO_AVX2) && \
    !defined(OTL_NO_AVX512)
#define OTL_PACKED_WEIGHTS 1  /* the AVX-512 pairs kernel's 3-channel layout */
#else
#define OTL_PACKED_WEIGHTS 0
#endif
#if OTL_BYTES_WEIGHTS && defined(__linux__) && !defined(OTL_NO_AMX)  /* Linux: the tile permission (otl_encoder.c) */
#define OTL_AMX_WEIGHTS 1
#else
#define OTL_AMX_WEIGHTS 0
#endif
#define OTL_LANE_SLACK 3    /* spare int32 after the accumulators (four-lane reads, otl_encoder.c) */

/* The threshold count as a table lookup (integer_spec.types.ThresholdBuckets): for channel c,
 *   x = clamp(a, lo[c], hi[c]), b = (x - lo[c]) >> shift[c],
 *   count = base[c][b] + #{m < M : x >= candidates[c][b][m]} + sum_k counts[c][k] * (a >= values[c][k])
 * exact for every int32 a < INT32_MAX; M compares instead of an 8-step search. */
typedef struct {
    int count;                 /* B: buckets per channel */
    int compares;              /* M: candidate thresholds per bucket (INT32_MAX padded) */
    int outside;               /* K: piles of thresholds outside the accumulator range per channel */
    const int32_t *lo, *hi;    /* [C] the accumulator range */
    const uint8_t *shift;      /* [C] log2 of the bucket width */
    const uint8_t *base;       /* [C][B] thresholds inside the range at or below the bucket's first value,
                                  then 3 zero bytes (read slack: the AVX-512 count loads 4 bytes at base[b]) */
    const int32_t *candidates; /* [C][B][M] the thresholds inside the bucket */
    const int32_t *values;     /* [C][K] a pile's threshold (INT32_MAX: none) */
    const uint8_t *counts;     /* [C][K] how many thresholds it holds */
} otl_buckets;

typedef struct {
    int stride;              /* s: latent rows and columns are s pixels apart */
    int kernel;              /* K: kernel side (FRAPPE: K = s, a patch) */
    int pad;                 /* p: WaLLoC's wrap-around border (FRAPPE: 0) */
    int channels;            /* C */
    int first_channel;       /* index of the group's first latent channel */
    int pairs;               /* ceil(3K / 8) * 4: weight pairs per kernel row */
    int blocks;              /* ceil(C / 4): blocks of four channels */
    const otl_weight_t *weights;  /* not OTL_DSP_WEIGHTS builds (else NULL): [K][blocks][pairs][4][2]: kernel row u,
                                     block b, pair p, lane l,
                                     = W[u][4b + l][2p + i] (t = 3v + ch), 0 past C or 3K */
    const otl_weight_t *weights_packed;  /* OTL_PACKED_WEIGHTS builds, C = 3 and at most 16 KB (else NULL):
                                     [K][3][pairs][4][2], as weights with block j lane l = channel (4j + l) mod 3
                                     (four patches' sums in three blocks) */
    int quads;               /* ceil(3K / 16) * 4: quads of values per kernel row (weights8) */
    const int8_t *weights8;  /* OTL_BYTES_WEIGHTS builds, 8-bit weights (else NULL): [K][blocks][quads][4][4]
                                = W[u][4b + l][4q + i], for u8 x s8 four-value dot products */
    int amx_planes;          /* weight tiles per chunk, one TDPBUSD each: int8 digit planes that add up to the
                                weights, or 1 with both planes in its columns (0: no AMX layout) */
    int amx_chunks;          /* ceil(E / 64), E = 3KP rounded up to 4: tiles of one kernel row */
    int amx_width;           /* bytes of each tile, E / chunks rounded up to 4; chunk q starts at min(q width, E - width) */
    int amx_patches;         /* P: patches side by side in a tile row (columns p C + c) */
    int amx_columns;         /* int32 columns of a tile: P C, or 2 P C where W = lo + 2 hi (lo = W mod 2) puts
                                lo in columns p C + c and hi in P C + p C + c (9-bit weights, one TDPBUSD) */
    const int8_t *weights_amx;  /* OTL_AMX_WEIGHTS builds, C <= 16 and at most 4 planes (else NULL):
                                [K][planes][chunks][width / 4][columns][4] = plane of W[u][c][start + 4 row + i
                                - 3K p] in column p C + c (+ P C: hi), 0 elsewhere: each chunk a TDPBUSD weight
                                tile (row = four values, column = plane, patch and channel) */
    int trios;               /* ceil(C / 3): blocks of three channels (weights_dsp) */
    int dsp_quads;           /* ceil(3K / 4): quads of values per kernel row (weights_dsp) */
    const uint64_t *weights_dsp;  /* OTL_DSP_WEIGHTS builds (else NULL): [K][trios][dsp_quads][3], per lane
                                the halfword pairs W[u][3b + l][4q + (0, 2)] (low word) and W[u][3b + l][4q + (1, 3)]
                                (high word): the pairs (x0, x2), (x1, x3) that UXTB16 makes of four bytes, for SMLAD */
    const int32_t *thresholds;    /* [C][256], ascending, padded with INT32_MAX (NULL with buckets) */
    const otl_buckets *buckets;   /* the count by table (NULL: by binary search over thresholds) */
} otl_group;

extern const otl_group otl_groups[OTL_GROUPS];
extern const uint8_t otl_checkpoint_sha256[32];

/* Called for each completed latent row: latents[c * width + j], c < channels. */
typedef void (*otl_emit_fn)(void *ctx, int group, int latent_row, const int8_t *latents, int channels,
                            int width);

typedef struct {
    int width, height;                /* the frame as the sensor delivers it */
    int padded_width, padded_height;  /* rounded up to multiples of OTL_LARGEST_PATCH */
    int row;                          /* rows pushed so far */
    int32_t *acc[OTL_GROUPS];         /* [w][C] accumulators (WaLLoC: OTL_OPEN_ROWS of them), inside
                                         the caller's state buffer */
    int8_t *latents;                  /* one completed latent row, inside the state buffer */
#if OTL_WRAP
    uint8_t *wrapped;                 /* the pushed row wrapped (see above), in the state buffer */
    int open_row[OTL_OPEN_ROWS];      /* latent row held by each accumulator row, -1 if free */
    int open_count[OTL_OPEN_ROWS];    /* kernel rows added to it so far */
#endif
} otl_encoder;

enum { OTL_OK = 0, OTL_ERR_SIZE = -1, OTL_ERR_STATE = -2, OTL_ERR_ROWS = -3 };

/* Bytes of state buffer otl_init needs for frames of this width (0 if the width is invalid). */
size_t otl_state_bytes(int width);

/* Start a frame; state must be 4-byte aligned and at least otl_state_bytes(width) bytes. */
int otl_init(otl_encoder *enc, void *state, size_t state_bytes, int width, int height);

/* Feed the next row (width x 3 bytes, RGB). Returns the number of latent rows emitted, or
 * OTL_ERR_ROWS if the frame already has all its rows (OTL_ERR_STATE: more than OTL_OPEN_ROWS
 * latent rows open, which the bound above rules out). */
int otl_push_row(otl_encoder *enc, const uint8_t *rgb, otl_emit_fn emit, void *ctx);

/* Feed the next `rows` rows, rgb + row_bytes * r: the latents of `rows` otl_push_row calls,
 * emitted group by group instead of row by row (use it only where the order does not matter:
 * raw output by row index, not the container's coder). Returns as otl_push_row. */
int otl_push_rows(otl_encoder *enc, const uint8_t *rgb, size_t row_bytes, int rows, otl_emit_fn emit, void *ctx);

#ifdef OTL_TRACE
/* Debug builds only (verify's divergence localisation): when set, called with each completed
 * accumulator row acc[j * channels + c], before the threshold count. */
typedef void (*otl_trace_fn)(int group, int latent_row, const int32_t *acc, int channels, int cols);
extern otl_trace_fn otl_trace;
#endif

#endif

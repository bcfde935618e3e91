/* The streaming encoder; the formula is in otl_encoder.h. */
#include <string.h>

#include "otl_encoder.h"

#if defined(__ARM_FEATURE_SIMD32)
#include <arm_acle.h>
#endif

static int round_up(int n, int m) { return (n + m - 1) / m * m; }

size_t otl_state_bytes(int width) {
    size_t acc = 0, row = 0;
    int g, padded;
    if (width < OTL_LARGEST_PATCH || width > OTL_MAX_SIDE) return 0;
    padded = round_up(width, OTL_LARGEST_PATCH);
    for (g = 0; g < OTL_GROUPS; g++) {
        size_t n = (size_t)otl_groups[g].channels * (size_t)(padded / otl_groups[g].patch);
        acc += n * sizeof(int32_t);
        if (n > row) row = n;
    }
    return acc + row;
}

int otl_init(otl_encoder *enc, void *state, size_t state_bytes, int width, int height) {
    size_t need = otl_state_bytes(width);
    uint8_t *p = (uint8_t *)state;
    int g;
    if (need == 0 || height < OTL_LARGEST_PATCH || height > OTL_MAX_SIDE) return OTL_ERR_SIZE;
    if (state == NULL || state_bytes < need || ((uintptr_t)state & 3u) != 0) return OTL_ERR_STATE;
    memset(state, 0, need);
    enc->width = width;
    enc->height = height;
    enc->padded_width = round_up(width, OTL_LARGEST_PATCH);
    enc->padded_height = round_up(height, OTL_LARGEST_PATCH);
    enc->row = 0;
    for (g = 0; g < OTL_GROUPS; g++) {
        enc->acc[g] = (int32_t *)(void *)p;
        p += (size_t)otl_groups[g].channels * (size_t)(enc->padded_width / otl_groups[g].patch) * sizeof(int32_t);
    }
    enc->latents = (int8_t *)p;
    return OTL_OK;
}

/* latent = OTL_BASE + #{n : a >= t[n]} over 256 ascending entries: 8 halving steps. */
static int8_t count_thresholds(int32_t a, const int32_t *t) {
    int n = 0, step;
    for (step = 128; step > 0; step >>= 1)
        if (a >= t[n + step - 1]) n += step;
    return (int8_t)(OTL_BASE + n);
}

#if defined(__ARM_FEATURE_SIMD32)
/* Arm DSP variant of dot(): SMLAD adds two 16 x 16-bit products per instruction (x and w
 * read as 16-bit pairs; the running sum stays below 2^31, as in the portable version). Kept
 * out of line so that its loop has the registers to itself. */
__attribute__((noinline)) static int32_t dot(const int16_t *x, const otl_weight_t *w, int n) {
    const int16_t *end = x + (n & ~1);
    int32_t s = 0;
    for (; x < end; x += 2, w += 2) {
        int16x2_t xx, ww;
        __builtin_memcpy(&xx, x, sizeof(xx));  /* one LDR (freestanding builds do not inline memcpy) */
        __builtin_memcpy(&ww, w, sizeof(ww));
        s = __smlad(xx, ww, s);
    }
    if (n & 1) s += x[0] * w[0];
    return s;
}
#else
static int32_t dot_n(const int16_t *x, const otl_weight_t *w, int n) {
    int32_t s = 0;
    int t;
    for (t = 0; t < n; t++) s += x[t] * w[t];
    return s;
}

/* sum x[t] * w[t], t < n; constant trip counts for the usual patch sizes (n = 3k), so that
 * compilers vectorize them at -O2 (16-bit multiply-add pairs into 32 bits). */
static int32_t dot(const int16_t *x, const otl_weight_t *w, int n) {
    switch (n) {
        case 96: return dot_n(x, w, 96);
        case 48: return dot_n(x, w, 48);
        case 24: return dot_n(x, w, 24);
        default: return dot_n(x, w, n);
    }
}
#endif

/* Patch j's pixels of this row widened to 16 bits; a patch reaching past the real width
 * repeats the last pixel (edge replication). */
static void widen_patch(int16_t *x, const uint8_t *rgb, int k, int j, int width) {
    const int n = 3 * k;
    int t;
    if (k * (j + 1) <= width) {
        const uint8_t *p = rgb + (size_t)j * (size_t)n;
        for (t = 0; t + 8 <= n; t += 8) {  /* blocks of 8: vectorized at -O2 */
            int i;
            for (i = 0; i < 8; i++) x[t + i] = p[t + i];
        }
        for (; t < n; t++) x[t] = p[t];
        return;
    }
    for (t = 0; t < n; t++) {
        int px = k * j + t / 3;
        if (px > width - 1) px = width - 1;
        x[t] = rgb[3 * px + t % 3];
    }
}

/* acc[c][j] += patch row j of `rgb` (phase u), for one group. */
static void accumulate(const otl_group *grp, int32_t *acc, const uint8_t *rgb, int width, int padded_width,
                       int u) {
    const int k = grp->patch, n = 3 * k, cols = padded_width / k;
    const otl_weight_t *w = grp->weights + (size_t)u * (size_t)grp->channels * (size_t)n;
    int16_t x[3 * OTL_LARGEST_PATCH];
    int c, j;
    for (j = 0; j < cols; j++) {
        widen_patch(x, rgb, k, j, width);
        for (c = 0; c < grp->channels; c++) acc[(size_t)c * cols + j] += dot(x, w + (size_t)c * n, n);
    }
}

static int emit_complete(otl_encoder *enc, int g, otl_emit_fn emit, void *ctx) {
    const otl_group *grp = &otl_groups[g];
    const int cols = enc->padded_width / grp->patch;
    int32_t *acc = enc->acc[g];
    int c, j;
    for (c = 0; c < grp->channels; c++)
        for (j = 0; j < cols; j++)
            enc->latents[c * cols + j] = count_thresholds(acc[c * cols + j], grp->thresholds + 256 * c);
    emit(ctx, g, enc->row / grp->patch, enc->latents, grp->channels, cols);
    memset(acc, 0, (size_t)grp->channels * (size_t)cols * sizeof(int32_t));
    return 1;
}

int otl_push_row(otl_encoder *enc, const uint8_t *rgb, otl_emit_fn emit, void *ctx) {
    int emitted = 0, g;
    if (enc->row >= enc->height) return OTL_ERR_ROWS;
    do {  /* the last real row stands in for the padding rows below it */
        for (g = 0; g < OTL_GROUPS; g++) {
            const int u = enc->row % otl_groups[g].patch;
            accumulate(&otl_groups[g], enc->acc[g], rgb, enc->width, enc->padded_width, u);
            if (u == otl_groups[g].patch - 1) emitted += emit_complete(enc, g, emit, ctx);
        }
        enc->row++;
    } while (enc->row >= enc->height && enc->row < enc->padded_height);
    return emitted;
}

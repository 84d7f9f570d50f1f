/* latentseg's native kernel for the SimpleEncoder's stages on AVX2 and AVX-512 CPUs:
   - first_stage_forward: the first stage, relu(max_pool2d(conv3x3(x), 2)), in one pass that
     never stores the full-resolution convolution output, keeping one byte per pooled output
     (which input of its window won, or that the ReLU cut it);
   - first_stage_weight_grad: that stage's weight and bias gradients when its input needs no
     gradient, straight from the stage's output gradient, without materialising the
     full-resolution gradient that max_pool2d's backward scatters (3/4 zeros) and without a
     dense GEMM over it. Each pooled output's gradient goes to the first input of its window
     that reached the maximum (max_pool2d's rule at ties) and is multiplied into that input
     position's im2col row: a sparse outer product, accumulated per channel in registers;
   - first_stage_pool and first_stage_unpool: relu(max_pool2d(y, 2)) of a convolution's
     output, and its backward, for the second stage (and the first where its channels are not
     a multiple of 16).

   Built by latentseg.models.native with -O3 -mavx2 -mfma; loaded with ctypes (no Python or
   torch headers). Built with -fopenmp: its threads are torch's. */
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define KP 32 /* a patch: 9*CI taps, a 1 for the bias, zeros to 32 (CI <= 3) */

typedef struct {
    const float *x, *y, *g;
    float *out;
    uint8_t *idx;
    int64_t b0, b1;
    int H, W, CI, C;
    double *acc; /* [C][KP] */
    int failed;
} job_t;

/* Runs work(&jobs[t]) for t < threads on the OpenMP threads of the process: built with
   -fopenmp, this library uses the libgomp that torch has already loaded (the same soname),
   so its threads are torch's own, not a second pool spinning against them. */
static void parallel(void *(*work)(void *), void *jobs, size_t size, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static, 1)
    for (int t = 0; t < threads; t++) work((char *)jobs + (size_t)t * size);
}

/* How many jobs to split B images into: threads, at least 1, at most B and at most `most`. */
static int job_count(int threads, int64_t B, int most) {
    if (threads > most) threads = most;
    if (threads > B) threads = (int)B;
    return threads < 1 ? 1 : threads;
}

/* Zero-padded copies ((W + 2) * CI floats each) of the 4 input rows that pooled row i2's
   windows and their 3x3 neighbourhoods read: rows 2*i2 - 1 to 2*i2 + 2 of the image xb. */
static void pad_rows(float *xrows, const float *xb, int i2, int H, int W, int CI) {
    const int64_t row = (int64_t)(W + 2) * CI;
    for (int r = 0; r < 4; r++) {
        const int i = 2 * i2 - 1 + r;
        float *dst = xrows + r * row;
        if (i < 0 || i >= H) {
            memset(dst, 0, (size_t)row * sizeof(float));
        } else {
            memset(dst, 0, CI * sizeof(float));
            memcpy(dst + CI, xb + (int64_t)i * W * CI, (size_t)W * CI * sizeof(float));
            memset(dst + (int64_t)(W + 1) * CI, 0, CI * sizeof(float));
        }
    }
}

#define WB 16 /* pooled columns a block: its 2 x 32 patches (8 KB) stay in the L1 cache */
#define NP (WB + 8) /* the selection's row stride (not a power of two: no cache-set clashes) */

static void *run(void *arg) {
    job_t *jb = (job_t *)arg;
    const int H = jb->H, W = jb->W, CI = jb->CI, C = jb->C;
    const int H2 = H / 2, W2 = W / 2, L = 3 * CI;
    const int64_t row = (int64_t)(W + 2) * CI;
    float *patch = aligned_alloc(64, (size_t)(2 * 2 * WB + 1) * KP * sizeof(float));
    const size_t selection = ((size_t)C * NP * sizeof(float) + 63) / 64 * 64; /* aligned_alloc
        wants a multiple of the alignment */
    float *vg = aligned_alloc(64, selection);
    int32_t *pi = aligned_alloc(64, selection);
    float *acc = aligned_alloc(64, (size_t)C * KP * sizeof(float));
    float *xrows = malloc(((size_t)4 * row + 16) * sizeof(float));
    if (!patch || !vg || !pi || !acc || !xrows) {
        jb->failed = 1;
        free(patch); free(vg); free(pi); free(acc); free(xrows);
        return NULL;
    }
    const __m256 tail = _mm256_setr_ps(1.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f);
    const __m256i four = _mm256_set1_epi32(4), one = _mm256_set1_epi32(1);
    const __m256i down = _mm256_set1_epi32(2 * WB); /* the next full-resolution row's patches */
    for (int64_t b = jb->b0; b < jb->b1; b++) {
        const float *xb = jb->x + b * (int64_t)H * W * CI;
        for (int i2 = 0; i2 < H2; i2++) {
            /* float sums over a pooled row, added into double sums: rounding does not grow
               with the image */
            memset(acc, 0, (size_t)C * KP * sizeof(float));
            pad_rows(xrows, xb, i2, H, W, CI);
            for (int j0 = 0; j0 < W2; j0 += WB) {
                const int jn = j0 + WB < W2 ? WB : W2 - j0;
                /* im2col rows of the block's 2 x 2jn input positions: 3 runs of 3*CI floats
                   (one per kernel row), copied 8 floats at a time plus the 9th (a later
                   store overwrites what an earlier one wrote past its run), then the bias's
                   1 and zeros */
                for (int r = 0; r < 2; r++) {
                    const float *s0 = xrows + r * row + (int64_t)2 * j0 * CI;
                    const float *s1 = s0 + row, *s2 = s1 + row;
                    float *p = patch + (int64_t)r * 2 * WB * KP;
                    for (int j = 0; j < 2 * jn; j++, p += KP, s0 += CI, s1 += CI, s2 += CI) {
                        _mm256_store_ps(p + 16, _mm256_setzero_ps());
                        _mm256_store_ps(p + 24, _mm256_setzero_ps());
                        _mm256_storeu_ps(p, _mm256_loadu_ps(s0));
                        p[8] = s0[8];
                        _mm256_storeu_ps(p + L, _mm256_loadu_ps(s1));
                        p[L + 8] = s1[8];
                        _mm256_storeu_ps(p + 2 * L, _mm256_loadu_ps(s2));
                        p[2 * L + 8] = s2[8];
                        _mm256_storeu_ps(p + 3 * L, tail);
                    }
                }
                /* each pooled output's gradient (0 where the ReLU cut it: window 4) and the
                   patch of the input that won its window in the forward */
                for (int n = 0; n < jn; n++) {
                    const int64_t at = ((b * H2 + i2) * (int64_t)W2 + j0 + n) * C;
                    const float *gg = jb->g + at;
                    const uint8_t *wi = jb->idx + at;
                    const __m256i base = _mm256_set1_epi32(2 * n);
                    int c = 0;
                    for (; c + 8 <= C; c += 8) {
                        const __m256i k = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(wi + c)));
                        const __m256 kept = _mm256_castsi256_ps(_mm256_cmpgt_epi32(four, k));
                        const __m256 v = _mm256_and_ps(_mm256_loadu_ps(gg + c), kept);
                        __m256i q = _mm256_add_epi32(base, _mm256_and_si256(k, one));
                        q = _mm256_add_epi32(q, _mm256_mullo_epi32(_mm256_and_si256(_mm256_srli_epi32(k, 1), one), down));
                        q = _mm256_slli_epi32(q, 5); /* x KP */
                        float vs[8];
                        int32_t qs[8];
                        _mm256_storeu_ps(vs, v);
                        _mm256_storeu_si256((__m256i *)qs, q);
                        for (int l = 0; l < 8; l++) {
                            vg[(c + l) * NP + n] = vs[l];
                            pi[(c + l) * NP + n] = qs[l];
                        }
                    }
                    for (; c < C; c++) {
                        const int k = wi[c];
                        vg[c * NP + n] = k < 4 ? gg[c] : 0.f;
                        pi[c * NP + n] = (2 * n + (k & 1) + ((k >> 1) & 1) * 2 * WB) * KP;
                    }
                }
                for (int c = 0; c < C; c++) {
                    float *a = acc + c * KP;
                    __m256 a0 = _mm256_load_ps(a), a1 = _mm256_load_ps(a + 8);
                    __m256 a2 = _mm256_load_ps(a + 16), a3 = _mm256_load_ps(a + 24);
                    const float *vv = vg + c * NP;
                    const int32_t *ii = pi + c * NP;
                    for (int m = 0; m < jn; m++) {
                        const __m256 v = _mm256_broadcast_ss(vv + m);
                        const float *pp = patch + ii[m];
                        a0 = _mm256_fmadd_ps(v, _mm256_load_ps(pp), a0);
                        a1 = _mm256_fmadd_ps(v, _mm256_load_ps(pp + 8), a1);
                        a2 = _mm256_fmadd_ps(v, _mm256_load_ps(pp + 16), a2);
                        a3 = _mm256_fmadd_ps(v, _mm256_load_ps(pp + 24), a3);
                    }
                    _mm256_store_ps(a, a0); _mm256_store_ps(a + 8, a1);
                    _mm256_store_ps(a + 16, a2); _mm256_store_ps(a + 24, a3);
                }
            }
            for (int64_t t = 0; t < (int64_t)C * KP; t++) jb->acc[t] += acc[t];
        }
    }
    free(patch); free(vg); free(pi); free(acc); free(xrows);
    return NULL;
}

/* The weight and bias gradients of relu(max_pool2d(conv3x3(x), 2)) (stride 1, padding 1),
   all tensors contiguous channels-last: x [B,H,W,CI] float32 (CI <= 3), idx [B,H/2,W/2,C] the
   window positions first_stage_pool chose, g [B,H/2,W/2,C] float32 the gradient of the
   stage's output. grad [C][32]: the taps in (kh, kw, ci) order, then the bias. Returns 0, or
   1 when memory ran out. */
int first_stage_weight_grad(const float *x, const uint8_t *idx, const float *g, int64_t B,
                            int H, int W, int CI, int C, float *grad, int threads) {
    if (B <= 0) {
        memset(grad, 0, (size_t)C * KP * sizeof(float));
        return 0;
    }
    threads = job_count(threads, B, 1 << 16);
    job_t *jobs = calloc(threads, sizeof(job_t));
    int rc = !jobs;
    for (int t = 0; !rc && t < threads; t++) {
        jobs[t] = (job_t){x, NULL, g, NULL, (uint8_t *)idx, B * t / threads, B * (t + 1) / threads,
                          H, W, CI, C, calloc((size_t)C * KP, sizeof(double)), 0};
        if (!jobs[t].acc) rc = 1;
    }
    if (!rc) {
        parallel(run, jobs, sizeof(job_t), threads);
        for (int64_t i = 0; i < (int64_t)C * KP; i++) {
            double s = 0;
            for (int t = 0; t < threads; t++) s += jobs[t].acc[i];
            grad[i] = (float)s;
        }
        for (int t = 0; t < threads; t++) rc |= jobs[t].failed;
    }
    for (int t = 0; jobs && t < threads; t++) free(jobs[t].acc);
    free(jobs);
    return rc;
}

static void *run_pool(void *arg) {
    job_t *jb = (job_t *)arg;
    const int H = jb->H, W = jb->W, C = jb->C;
    const int H2 = H / 2, W2 = W / 2;
    const __m256i q1 = _mm256_set1_epi32(1), q2 = _mm256_set1_epi32(2), q3 = _mm256_set1_epi32(3);
    const __m256i cut = _mm256_set1_epi32(4);
    for (int64_t b = jb->b0; b < jb->b1; b++) {
        for (int i2 = 0; i2 < H2; i2++) {
            for (int j2 = 0; j2 < W2; j2++) {
                const int64_t p = ((b * H2 + i2) * (int64_t)W2 + j2) * C;
                const float *y0 = jb->y + ((b * H + 2 * i2) * (int64_t)W + 2 * j2) * C;
                const float *y1 = y0 + C, *y2 = y0 + (int64_t)W * C, *y3 = y2 + C;
                float *o = jb->out + p;
                uint8_t *wi = jb->idx ? jb->idx + p : NULL;
                int c = 0;
                for (; c + 8 <= C; c += 8) {
                    /* max_pool2d's rule: a later input wins only if greater, or NaN */
                    __m256 m = _mm256_loadu_ps(y0 + c);
                    __m256i q = _mm256_setzero_si256();
                    const float *ys[3] = {y1, y2, y3};
                    const __m256i qs[3] = {q1, q2, q3};
                    for (int t = 0; t < 3; t++) {
                        const __m256 v = _mm256_loadu_ps(ys[t] + c);
                        const __m256 win = _mm256_or_ps(_mm256_cmp_ps(v, m, _CMP_GT_OQ),
                                                        _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
                        m = _mm256_blendv_ps(m, v, win);
                        q = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(q), _mm256_castsi256_ps(qs[t]), win));
                    }
                    /* the ReLU: keep m where m > 0 or NaN (as torch.relu), else 0 and window 4 */
                    const __m256 keep = _mm256_cmp_ps(m, _mm256_setzero_ps(), _CMP_NLE_UQ);
                    _mm256_storeu_ps(o + c, _mm256_and_ps(m, keep));
                    if (wi) {
                        q = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(cut), _mm256_castsi256_ps(q), keep));
                        int32_t k[8];
                        _mm256_storeu_si256((__m256i *)k, q);
                        for (int l = 0; l < 8; l++) wi[c + l] = (uint8_t)k[l];
                    }
                }
                for (; c < C; c++) {
                    const float v[4] = {y0[c], y1[c], y2[c], y3[c]};
                    float m = v[0];
                    int q = 0;
                    for (int t = 1; t < 4; t++)
                        if (v[t] > m || v[t] != v[t]) { m = v[t]; q = t; }
                    const int keep = m > 0.f || m != m;
                    o[c] = keep ? m : 0.f;
                    if (wi) wi[c] = (uint8_t)(keep ? q : 4);
                }
            }
        }
    }
    return NULL;
}

/* The stage's forward after the convolution: out = relu(max_pool2d(y, 2)) for y [B,H,W,C]
   float32 channels-last contiguous (H and W even), and, unless idx is NULL, idx [B,H/2,W/2,C]:
   which input of each window max_pool2d takes (0-3, row-major; a later input wins only if
   greater, or NaN), or 4 where the ReLU cut the output. */
void first_stage_pool(const float *y, float *out, uint8_t *idx, int64_t B, int H, int W, int C,
                      int threads) {
    if (B <= 0) return;
    threads = job_count(threads, B, 64);
    job_t jobs[64];
    for (int t = 0; t < threads; t++)
        jobs[t] = (job_t){NULL, y, NULL, out, idx, B * t / threads, B * (t + 1) / threads, H, W, 0,
                          C, NULL, 0};
    parallel(run_pool, jobs, sizeof(job_t), threads);
}

/* The convolution and pooling of one pooled output, 16 channels from cb on: the 4 inputs of
   its window (2 x 2 convolution outputs, 8 accumulators), then max_pool2d's choice among them
   and the ReLU, as in run_pool. rows: 4 zero-padded input rows, from the window's row - 1;
   col: the window's first padded column. CI is a constant at each call, so that the tap
   loops unroll. */
static inline __attribute__((always_inline)) void conv_pool16(
    const float *rows, int64_t row, int col, const float *wk, const float *bias, int C, int cb,
    float *o, uint8_t *wi, const int CI) {
    __m256 acc[4][2];
    const __m256 b0 = bias ? _mm256_loadu_ps(bias + cb) : _mm256_setzero_ps();
    const __m256 b1 = bias ? _mm256_loadu_ps(bias + cb + 8) : _mm256_setzero_ps();
    for (int p = 0; p < 4; p++) {
        acc[p][0] = b0;
        acc[p][1] = b1;
    }
    for (int kh = 0; kh < 3; kh++) {
        for (int kw = 0; kw < 3; kw++) {
            for (int ci = 0; ci < CI; ci++) {
                const float *w = wk + (int64_t)((kh * 3 + kw) * CI + ci) * C + cb;
                __m256 w0 = _mm256_loadu_ps(w), w1 = _mm256_loadu_ps(w + 8);
                /* keep the weights in registers for their 4 uses (else the compiler folds a
                   load into each multiply-add, and loads, not multiply-adds, set the pace) */
                __asm__("" : "+x"(w0), "+x"(w1));
                for (int p = 0; p < 4; p++) {
                    const float *s = rows + (int64_t)((p >> 1) + kh) * row + (int64_t)(col + (p & 1) + kw) * CI + ci;
                    const __m256 v = _mm256_broadcast_ss(s);
                    acc[p][0] = _mm256_fmadd_ps(v, w0, acc[p][0]);
                    acc[p][1] = _mm256_fmadd_ps(v, w1, acc[p][1]);
                }
            }
        }
    }
    const __m256i cut = _mm256_set1_epi32(4);
    for (int h = 0; h < 2; h++) {
        __m256 m = acc[0][h];
        __m256i q = _mm256_setzero_si256();
        for (int p = 1; p < 4; p++) {
            const __m256 v = acc[p][h];
            const __m256 win = _mm256_or_ps(_mm256_cmp_ps(v, m, _CMP_GT_OQ), _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
            m = _mm256_blendv_ps(m, v, win);
            q = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(q), _mm256_castsi256_ps(_mm256_set1_epi32(p)), win));
        }
        const __m256 keep = _mm256_cmp_ps(m, _mm256_setzero_ps(), _CMP_NLE_UQ);
        _mm256_storeu_ps(o + cb + 8 * h, _mm256_and_ps(m, keep));
        if (wi) {
            q = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(cut), _mm256_castsi256_ps(q), keep));
            int32_t k[8];
            _mm256_storeu_si256((__m256i *)k, q);
            for (int l = 0; l < 8; l++) wi[cb + 8 * h + l] = (uint8_t)k[l];
        }
    }
}

typedef struct {
    const float *x, *wk, *bias;
    float *out;
    uint8_t *idx;
    int64_t b0, b1;
    int H, W, CI, C, failed;
} conv_job_t;

static void *run_conv_pool(void *arg) {
    conv_job_t *jb = (conv_job_t *)arg;
    const int H = jb->H, W = jb->W, CI = jb->CI, C = jb->C;
    const int H2 = H / 2, W2 = W / 2;
    const int64_t row = (int64_t)(W + 2) * CI;
    float *xrows = malloc((size_t)4 * row * sizeof(float));
    if (!xrows) {
        jb->failed = 1;
        return NULL;
    }
    for (int64_t b = jb->b0; b < jb->b1; b++) {
        const float *xb = jb->x + b * (int64_t)H * W * CI;
        for (int i2 = 0; i2 < H2; i2++) {
            pad_rows(xrows, xb, i2, H, W, CI);
            for (int j2 = 0; j2 < W2; j2++) {
                const int64_t at = ((b * H2 + i2) * (int64_t)W2 + j2) * C;
                float *o = jb->out + at;
                uint8_t *wi = jb->idx ? jb->idx + at : NULL;
                for (int cb = 0; cb < C; cb += 16) {
                    switch (CI) {
                    case 1: conv_pool16(xrows, row, 2 * j2, jb->wk, jb->bias, C, cb, o, wi, 1); break;
                    case 2: conv_pool16(xrows, row, 2 * j2, jb->wk, jb->bias, C, cb, o, wi, 2); break;
                    default: conv_pool16(xrows, row, 2 * j2, jb->wk, jb->bias, C, cb, o, wi, 3); break;
                    }
                }
            }
        }
    }
    free(xrows);
    return NULL;
}

/* The whole forward of the stage: out = relu(max_pool2d(conv3x3(x) + bias, 2)) for x
   [B,H,W,CI] float32 channels-last contiguous (CI <= 3, H and W even), weights wk [K][C]
   (K = 9*CI taps in (kh, kw, ci) order; C a multiple of 16), bias [C] or NULL; and, unless
   idx is NULL, the windows' winners as first_stage_pool writes them. The convolution's
   output is never stored. Returns 0, or 1 when memory ran out. */
int first_stage_forward(const float *x, const float *wk, const float *bias, float *out,
                        uint8_t *idx, int64_t B, int H, int W, int CI, int C, int threads) {
    if (B <= 0) return 0;
    threads = job_count(threads, B, 64);
    conv_job_t jobs[64];
    int rc = 0;
    for (int t = 0; t < threads; t++)
        jobs[t] = (conv_job_t){x, wk, bias, out, idx, B * t / threads, B * (t + 1) / threads,
                               H, W, CI, C, 0};
    parallel(run_conv_pool, jobs, sizeof(conv_job_t), threads);
    for (int t = 0; t < threads; t++) rc |= jobs[t].failed;
    return rc;
}

typedef struct {
    const float *g;
    const uint8_t *idx;
    float *gy;
    int64_t b0, b1;
    int H, W, C;
} unpool_job_t;

static void *run_unpool(void *arg) {
    unpool_job_t *jb = (unpool_job_t *)arg;
    const int H = jb->H, W = jb->W, C = jb->C;
    const int H2 = H / 2, W2 = W / 2;
    const __m256 zero = _mm256_setzero_ps();
    for (int64_t b = jb->b0; b < jb->b1; b++) {
        for (int i2 = 0; i2 < H2; i2++) {
            for (int j2 = 0; j2 < W2; j2++) {
                const int64_t p = ((b * H2 + i2) * (int64_t)W2 + j2) * C;
                const float *g = jb->g + p;
                const uint8_t *q = jb->idx + p;
                float *y[4];
                y[0] = jb->gy + ((b * H + 2 * i2) * (int64_t)W + 2 * j2) * C;
                y[1] = y[0] + C;
                y[2] = y[0] + (int64_t)W * C;
                y[3] = y[2] + C;
                int c = 0;
                for (; c + 8 <= C; c += 8) {
                    const __m256 v = _mm256_loadu_ps(g + c);
                    const __m256i k = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(q + c)));
                    for (int t = 0; t < 4; t++) {
                        const __m256 hit = _mm256_castsi256_ps(_mm256_cmpeq_epi32(k, _mm256_set1_epi32(t)));
                        _mm256_storeu_ps(y[t] + c, _mm256_blendv_ps(zero, v, hit));
                    }
                }
                for (; c < C; c++)
                    for (int t = 0; t < 4; t++) y[t][c] = q[c] == t ? g[c] : 0.f;
            }
        }
    }
    return NULL;
}

/* The backward of first_stage_pool: gy [B,H,W,C] (every element written) gets each pooled
   output's gradient g [B,H/2,W/2,C] at the input of its window that idx names (0-3), and zero
   elsewhere; a window whose output the ReLU cut (idx 4) gets zeros. All float32 or uint8,
   contiguous channels-last. The same values as max_pool2d's backward after relu's. */
void first_stage_unpool(const float *g, const uint8_t *idx, float *gy, int64_t B, int H, int W,
                        int C, int threads) {
    if (B <= 0) return;
    threads = job_count(threads, B, 64);
    unpool_job_t jobs[64];
    for (int t = 0; t < threads; t++)
        jobs[t] = (unpool_job_t){g, idx, gy, B * t / threads, B * (t + 1) / threads, H, W, C};
    parallel(run_unpool, jobs, sizeof(unpool_job_t), threads);
}

/* The avg / max / GeM / attention branches of a hybrid pool, and log-sum-exp pooling, on a CPU, float32, forward
 * and backward: one pass over each sample's (C, N) feature map, N = H * W, with the elementwise log2 / exp2 inlined
 * as short polynomials that the compiler vectorises (AVX2: 8 lanes). Built and called by native.py, registered as
 * torch ops in ops.py; the batch is split over OpenMP threads; the maths is that of reference.py / blocked.py and
 * functional.lse_pool (see there), and tests/pooling/test_pool_native.py checks one against the other.
 *
 * Layouts (all contiguous, row-major): x (B, C, N); descriptors (B, k, C) for the k enabled branches in the order
 * avg, max, gem, attn; per-row statistics (B, C); attention logits / weights (B, heads, N); projection w (heads, C),
 * already divided by the softmax temperature. GeM's exponent p is read as p[c * p_stride] (p_stride 0: one scalar).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define LN2 0.6931471805599453f
#define POW_CHUNK 8192 /* floats of GeM's powers computed ahead of the row pass (32 KiB: the L1 cache) */

static inline float from_bits(uint32_t b) { float f; memcpy(&f, &b, sizeof f); return f; }
static inline uint32_t to_bits(float f) { uint32_t b; memcpy(&b, &f, sizeof b); return b; }

/* log2(v) for a positive normal float: v = 2^e m with m in [sqrt(1/2), sqrt(2)) (taken from the bits after
 * subtracting those of sqrt(1/2): no compare), and log2 m = (2 / ln 2) atanh(r), r = (m - 1) / (m + 1), |r| < 0.172,
 * from its series up to r^9 (absolute error < 1.2e-7 on m). */
static inline float fast_log2(float v) {
    uint32_t bits = to_bits(v) - 0x3F3504F3u;
    float e = (float)((int32_t)bits >> 23);
    float m = from_bits((bits & 0x007FFFFFu) + 0x3F3504F3u);
    float r = (m - 1.0f) / (m + 1.0f), r2 = r * r;
    float q = 0.3205988979753252f; /* 2 / ((2k + 1) ln 2), k = 4 .. 0 */
    q = q * r2 + 0.41219858311113244f;
    q = q * r2 + 0.5770780163555853f;
    q = q * r2 + 0.9617966939259757f;
    q = q * r2 + 2.8853900817779268f;
    return e + r * q;
}

/* 2^z for z clamped to [-126, 127]: 2^round(z) from the exponent bits times 2^f, f in [-1/2, 1/2], from the
 * degree-5 fit in reference._EXP2_COEFFS (relative error < 8e-8). */
static inline float fast_exp2(float z) {
    z = z < -126.0f ? -126.0f : (z > 127.0f ? 127.0f : z);
    float whole = (z + 12582912.0f) - 12582912.0f; /* round to nearest: 1.5 * 2^23 leaves no fraction bits */
    float f = z - whole;
    float q = 0.001326697038799394f;
    q = q * f + 0.009675459745510423f;
    q = q * f + 0.0555074261599759f;
    q = q * f + 0.2402212175356194f;
    q = q * f + 0.6931469491610677f;
    q = q * f + 1.0000000710297f;
    return from_bits(to_bits(q) + ((uint32_t)(int32_t)whole << 23));
}

static inline float clamp_min(float v, float lo) { return v < lo ? lo : v; } /* NaN stays NaN */

/* sum and max of a row; max is NaN when the row holds a NaN (as torch.amax) */
static void row_sum_max(const float *row, int64_t n, float *sum_out, float *max_out) {
    float sum = 0.0f, peak = -INFINITY;
#pragma omp simd reduction(+ : sum) reduction(max : peak)
    for (int64_t i = 0; i < n; i++) {
        sum += row[i];
        peak = row[i] > peak ? row[i] : peak;
    }
    if (isnan(sum))
        for (int64_t i = 0; i < n; i++)
            if (isnan(row[i])) peak = row[i];
    *sum_out = sum;
    *max_out = peak;
}

/* GeM's sums over a row, u = clamp(x, eps) / scale: sum u^p, and (t != NULL) sum u^p log2 u */
static float row_gem(const float *row, int64_t n, float p, float eps, float log2_scale, float *t) {
    float s = 0.0f, st = 0.0f;
    if (t) {
#pragma omp simd reduction(+ : s, st)
        for (int64_t i = 0; i < n; i++) {
            float log2_u = fast_log2(clamp_min(row[i], eps)) - log2_scale;
            float u_pow_p = fast_exp2(p * log2_u);
            s += u_pow_p;
            st += u_pow_p * log2_u;
        }
        *t = st;
    } else {
#pragma omp simd reduction(+ : s)
        for (int64_t i = 0; i < n; i++) s += fast_exp2(p * (fast_log2(clamp_min(row[i], eps)) - log2_scale));
    }
    return s;
}

static float dot(const float *a, const float *b, int64_t n) {
    float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
    for (int64_t i = 0; i < n; i++) acc += a[i] * b[i];
    return acc;
}

static void axpy(float alpha, const float *x, float *y, int64_t n) {
#pragma omp simd
    for (int64_t i = 0; i < n; i++) y[i] += alpha * x[i];
}

/* softmax over each of the `heads` rows of length n, from logits into weights */
static void softmax_rows(const float *logits, float *weights, int64_t heads, int64_t n) {
    for (int64_t h = 0; h < heads; h++) {
        const float *l = logits + h * n;
        float *a = weights + h * n;
        float peak = -INFINITY, total = 0.0f;
        for (int64_t i = 0; i < n; i++) peak = l[i] > peak ? l[i] : peak;
        for (int64_t i = 0; i < n; i++) total += (a[i] = expf(l[i] - peak));
        for (int64_t i = 0; i < n; i++) a[i] /= total;
    }
}

/* Whether GeM's elementwise powers of one sample may skip the shift by each row's max (the "flat" form): with x in
 * [eps, max], |log2 x| <= bound, and x^e stays a normal float for both e = p (forward) and e = p - 1 (backward)
 * when |e| * bound <= 100. Then x^e is computed over the sample's whole (C, N) block in one vector loop and each
 * row's sum is divided by max^e afterwards; otherwise (extreme values or exponents) row by row, shifted. */
static int flat_powers_fit(const float *peak_b, int64_t C, float p_abs_max, float eps) {
    float bound = fabsf(fast_log2(eps));
    for (int64_t c = 0; c < C; c++) {
        float l = fabsf(fast_log2(clamp_min(peak_b[c], eps)));
        bound = l > bound ? l : bound;
    }
    return bound * p_abs_max <= 100.0f; /* NaN: not flat */
}

/* x^e, e a scalar, over a whole block: out[i] = 2^(e log2 clamp(x[i], eps)); with keep_log, log_out[i] = x^e log2 x;
 * with masked, out[i] = 0 where x < eps (and NaN x gives NaN) */
static void block_pow(const float *x, int64_t n, float e, float eps, float *out, float *log_out, int masked) {
    if (log_out) {
#pragma omp simd
        for (int64_t i = 0; i < n; i++) {
            float l = fast_log2(clamp_min(x[i], eps));
            float v = fast_exp2(e * l);
            out[i] = v;
            log_out[i] = v * l;
        }
    } else if (masked) {
#pragma omp simd
        for (int64_t i = 0; i < n; i++) {
            float v = fast_exp2(e * fast_log2(clamp_min(x[i], eps)));
            out[i] = x[i] >= eps ? v : (x[i] < eps ? 0.0f : x[i]);
        }
    } else {
#pragma omp simd
        for (int64_t i = 0; i < n; i++) out[i] = fast_exp2(e * fast_log2(clamp_min(x[i], eps)));
    }
}

static float row_sum(const float *row, int64_t n) {
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int64_t i = 0; i < n; i++) sum += row[i];
    return sum;
}

/* Forward of samples [b0, b1). slots: the descriptor slot of avg, max, gem, attn (-1: off); k: the number of slots.
 * peak (B, C): row maxima (with max or gem); s (B, C): mean u^p; t (B, C) or NULL: mean u^p ln u (gem);
 * logits, attn (B, heads, N) (attn). p_abs_max: max over channels of max(|p|, |p - 1|). */
static void forward_samples(const float *x, int64_t b0, int64_t b1, int64_t C, int64_t N, const int32_t *slots,
                            int64_t k, const float *p, int64_t p_stride, float p_abs_max, float eps, const float *w,
                            int64_t heads, float *desc, float *peak, float *s, float *t, float *logits, float *attn) {
    const int use_gem = slots[2] >= 0, use_attn = slots[3] >= 0;
    const int64_t group = use_attn ? C / heads : 1;
    /* the flat form (scalar p): the powers (and their products with log2 x) of a chunk of channels in one vector
     * loop, then summed per row in the row pass; per-row sums in `sums` */
    const int64_t chunk = N >= POW_CHUNK ? 1 : POW_CHUNK / N; /* channels whose powers stay in the L1 cache */
    float *pow_buf = use_gem && p_stride == 0 ? malloc((size_t)(chunk * N) * sizeof(float) * (t ? 2 : 1)) : NULL;
    float *log_buf = pow_buf && t ? pow_buf + chunk * N : NULL;
    float *sums = pow_buf ? malloc((size_t)C * sizeof(float) * 2) : NULL;
    if (pow_buf && !sums) {
        free(pow_buf);
        pow_buf = log_buf = NULL;
    }
    for (int64_t b = b0; b < b1; b++) {
        const float *xb = x + b * C * N;
        float *db = desc + b * k * C, *peak_b = peak ? peak + b * C : NULL;
        float *lb = use_attn ? logits + b * heads * N : NULL;
        if (use_attn) memset(lb, 0, (size_t)(heads * N) * sizeof(float));
        for (int64_t c = 0; c < C; c++) {
            const float *row = xb + c * N;
            const int64_t in_chunk = c % chunk;
            if (pow_buf && in_chunk == 0) /* the next chunk's powers */
                block_pow(row, (C - c < chunk ? C - c : chunk) * N, p[0], eps, pow_buf, log_buf, 0);
            float sum, row_max;
            row_sum_max(row, N, &sum, &row_max);
            if (slots[0] >= 0) db[slots[0] * C + c] = sum / (float)N;
            if (slots[1] >= 0) db[slots[1] * C + c] = row_max;
            if (peak_b) peak_b[c] = row_max;
            if (pow_buf) {
                sums[c] = row_sum(pow_buf + in_chunk * N, N);
                if (log_buf) sums[C + c] = row_sum(log_buf + in_chunk * N, N);
            }
            if (use_attn)
                for (int64_t h = 0; h < heads; h++) axpy(w[h * C + c], row, lb + h * N, N);
        }
        if (use_gem && pow_buf && flat_powers_fit(peak_b, C, p_abs_max, eps)) {
            /* mean u^p = sum x^p / (N max^p); mean u^p ln u = (sum x^p log2 x - log2 max sum x^p) ln 2 / (N max^p) */
            const float pc = p[0], inv_p = 1.0f / pc;
            float *s_b = s + b * C, *t_b = t ? t + b * C : NULL, *y_b = db + slots[2] * C;
#pragma omp simd
            for (int64_t c = 0; c < C; c++) {
                float scale = clamp_min(peak_b[c], eps), log2_scale = fast_log2(scale);
                float unscale = fast_exp2(-pc * log2_scale) / (float)N;
                float mean_u_pow_p = sums[c] * unscale;
                s_b[c] = mean_u_pow_p;
                y_b[c] = scale * fast_exp2(fast_log2(mean_u_pow_p) * inv_p);
                if (t_b) t_b[c] = (sums[C + c] - log2_scale * sums[c]) * unscale * LN2;
            }
        } else if (use_gem) { /* row by row, each row shifted by its max */
            for (int64_t c = 0; c < C; c++) {
                float pc = p[c * p_stride], scale = clamp_min(peak_b[c], eps), sum_t = 0.0f;
                float mean_u_pow_p = row_gem(xb + c * N, N, pc, eps, fast_log2(scale), t ? &sum_t : NULL) / (float)N;
                s[b * C + c] = mean_u_pow_p;
                db[slots[2] * C + c] = scale * fast_exp2(fast_log2(mean_u_pow_p) / pc);
                if (t) t[b * C + c] = sum_t * (LN2 / (float)N);
            }
        }
        if (use_attn) {
            float *ab = attn + b * heads * N;
            softmax_rows(lb, ab, heads, N);
            for (int64_t c = 0; c < C; c++) db[slots[3] * C + c] = dot(ab + (c / group) * N, xb + c * N, N);
        }
    }
    free(pow_buf);
    free(sums);
}

/* Backward of samples [b0, b1). Upstream gradients per branch (B, C), NULL when the branch is off: g_avg, g_max,
 * gem_coef (the factor of u^(p-1), reference.gem_row_coef), g_attn. Writes d_logits (B, heads, N) (attn: the
 * gradient of the temperature-scaled logits), grad_w (B, heads, C) per sample (NULL: not needed) and grad_x
 * (B, C, N) (NULL: not needed). */
static void backward_samples(const float *x, int64_t b0, int64_t b1, int64_t C, int64_t N, const float *g_avg,
                             const float *g_max, const float *peak, const float *gem_coef, const float *p,
                             int64_t p_stride, float p_abs_max, float eps, const float *g_attn, const float *attn,
                             const float *w, int64_t heads, float *d_logits, float *grad_w, float *grad_x) {
    const int64_t group = g_attn ? C / heads : 1;
    for (int64_t b = b0; b < b1; b++) {
        const float *xb = x + b * C * N;
        const float *ab = g_attn ? attn + b * heads * N : NULL;
        float *dl = g_attn ? d_logits + b * heads * N : NULL;
        if (g_attn) { /* d_attn[h, n] = sum over the channels c of head h of g_attn[c] x[c, n], then the softmax */
            memset(dl, 0, (size_t)(heads * N) * sizeof(float));
            for (int64_t c = 0; c < C; c++) axpy(g_attn[b * C + c], xb + c * N, dl + (c / group) * N, N);
            for (int64_t h = 0; h < heads; h++) {
                float *d = dl + h * N;
                const float *a = ab + h * N;
                float mean_d = dot(a, d, N);
#pragma omp simd
                for (int64_t i = 0; i < N; i++) d[i] = a[i] * (d[i] - mean_d);
            }
        }
        if (grad_w)
            for (int64_t c = 0; c < C; c++)
                for (int64_t h = 0; h < heads; h++) grad_w[(b * heads + h) * C + c] = dot(xb + c * N, dl + h * N, N);
        if (!grad_x) continue;
        float *gb = grad_x + b * C * N;
        /* GeM's term coef * u^(p-1) (0 where the clamp cuts x off); flat: x^(p-1) into grad_x first, scaled per row
         * below */
        const int gem_flat = gem_coef && p_stride == 0 && flat_powers_fit(peak + b * C, C, p_abs_max, eps);
        if (gem_flat) block_pow(xb, C * N, p[0] - 1.0f, eps, gb, NULL, 1);
        for (int64_t c = 0; c < C; c++) {
            const float *row = xb + c * N;
            float *out = gb + c * N;
            const float avg_term = g_avg ? g_avg[b * C + c] / (float)N : 0.0f;
            if (gem_flat) {
                const float row_factor = gem_coef[b * C + c] *
                                         fast_exp2((1.0f - p[0]) * fast_log2(clamp_min(peak[b * C + c], eps)));
#pragma omp simd
                for (int64_t i = 0; i < N; i++) out[i] = out[i] * row_factor + avg_term;
            } else {
#pragma omp simd
                for (int64_t i = 0; i < N; i++) out[i] = avg_term;
                if (gem_coef) {
                    const float coef = gem_coef[b * C + c], p_m1 = p[c * p_stride] - 1.0f;
                    const float log2_scale = fast_log2(clamp_min(peak[b * C + c], eps));
#pragma omp simd
                    for (int64_t i = 0; i < N; i++) {
                        float u_pow = fast_exp2(p_m1 * (fast_log2(clamp_min(row[i], eps)) - log2_scale));
                        out[i] += row[i] >= eps ? coef * u_pow : 0.0f;
                    }
                }
            }
            if (g_attn) {
                axpy(g_attn[b * C + c], ab + (c / group) * N, out, N);
                for (int64_t h = 0; h < heads; h++) axpy(w[h * C + c], dl + h * N, out, N);
            }
            if (g_max) { /* tied maxima share the gradient, as torch.amax's */
                const float row_max = peak[b * C + c];
                float ties = 0.0f;
#pragma omp simd reduction(+ : ties)
                for (int64_t i = 0; i < N; i++) ties += row[i] == row_max ? 1.0f : 0.0f;
                const float share = g_max[b * C + c] / ties;
#pragma omp simd
                for (int64_t i = 0; i < N; i++) out[i] += row[i] == row_max ? share : 0.0f;
            }
        }
    }
}

/* Log-sum-exp pooling of samples [b0, b1), rows of x shifted by their max m: with k = r log2(e) and
 * e_i = 2^(k (x_i - m)), y = m + ln(sum e_i / N) / r; ew = sum e_i x_i / sum e_i, the mean of x under the softmax
 * weights of r x (dy/dr = (ew - y) / r); m and sum e_i are kept for backward. r is read as r[c * r_stride]. A row
 * whose max is not finite (+-inf, NaN) gives y = ew = m, as torch.logsumexp; terms with k (x_i - m) < -126 (x_i = -inf
 * among them) count as 0. */
static void lse_forward_samples(const float *x, int64_t b0, int64_t b1, int64_t C, int64_t N, const float *r,
                                int64_t r_stride, float *y, float *ew, float *peak, float *total) {
    for (int64_t row_i = b0 * C; row_i < b1 * C; row_i++) {
        const float *row = x + row_i * N;
        const float rc = r[(row_i % C) * r_stride], k = rc * 1.4426950408889634f;
        float sum, m;
        row_sum_max(row, N, &sum, &m);
        peak[row_i] = m;
        if (!isfinite(m)) {
            y[row_i] = ew[row_i] = m;
            total[row_i] = 1.0f;
            continue;
        }
        float s = 0.0f, sx = 0.0f;
#pragma omp simd reduction(+ : s, sx)
        for (int64_t i = 0; i < N; i++) {
            float z = k * (row[i] - m);
            float e = z >= -126.0f ? fast_exp2(z) : 0.0f;
            s += e;
            sx += e > 0.0f ? e * row[i] : 0.0f;
        }
        total[row_i] = s;
        y[row_i] = m + logf(s / (float)N) / rc;
        ew[row_i] = sx / s;
    }
}

/* grad_x[i] = g e_i / sum e (the softmax weights of r x), from the row max and sum kept by the forward */
static void lse_backward_samples(const float *x, int64_t b0, int64_t b1, int64_t C, int64_t N, const float *r,
                                 int64_t r_stride, const float *g, const float *peak, const float *total,
                                 float *grad_x) {
    for (int64_t row_i = b0 * C; row_i < b1 * C; row_i++) {
        const float *row = x + row_i * N;
        float *out = grad_x + row_i * N;
        const float m = peak[row_i], k = r[(row_i % C) * r_stride] * 1.4426950408889634f;
        const float scale = g[row_i] / total[row_i];
        if (!isfinite(m)) {
            for (int64_t i = 0; i < N; i++) out[i] = NAN;
            continue;
        }
#pragma omp simd
        for (int64_t i = 0; i < N; i++) {
            float z = k * (row[i] - m);
            out[i] = z >= -126.0f ? scale * fast_exp2(z) : 0.0f;
        }
    }
}

/* The entry points: the B samples split into `threads` contiguous parts, one per OpenMP thread. Loaded into a
 * process that has imported torch, this library shares torch's libgomp.so.1 and so its thread pool (two pools would
 * spin against each other between calls). Arguments as forward_samples / backward_samples. */
void hp_forward(int threads, const float *x, int64_t B, int64_t C, int64_t N, const int32_t *slots, int64_t k,
                const float *p, int64_t p_stride, float p_abs_max, float eps, const float *w, int64_t heads,
                float *desc, float *peak, float *s, float *t, float *logits, float *attn) {
    if (threads <= 1) { /* no OpenMP region at all (a forked child's libgomp may not survive one) */
        forward_samples(x, 0, B, C, N, slots, k, p, p_stride, p_abs_max, eps, w, heads, desc, peak, s, t, logits,
                        attn);
        return;
    }
#pragma omp parallel for num_threads(threads) schedule(static, 1)
    for (int part = 0; part < threads; part++)
        forward_samples(x, B * part / threads, B * (part + 1) / threads, C, N, slots, k, p, p_stride, p_abs_max, eps,
                        w, heads, desc, peak, s, t, logits, attn);
}

void hp_backward(int threads, const float *x, int64_t B, int64_t C, int64_t N, const float *g_avg,
                 const float *g_max, const float *peak, const float *gem_coef, const float *p, int64_t p_stride,
                 float p_abs_max, float eps, const float *g_attn, const float *attn, const float *w, int64_t heads,
                 float *d_logits, float *grad_w, float *grad_x) {
    if (threads <= 1) {
        backward_samples(x, 0, B, C, N, g_avg, g_max, peak, gem_coef, p, p_stride, p_abs_max, eps, g_attn, attn, w,
                         heads, d_logits, grad_w, grad_x);
        return;
    }
#pragma omp parallel for num_threads(threads) schedule(static, 1)
    for (int part = 0; part < threads; part++)
        backward_samples(x, B * part / threads, B * (part + 1) / threads, C, N, g_avg, g_max, peak, gem_coef, p,
                         p_stride, p_abs_max, eps, g_attn, attn, w, heads, d_logits, grad_w, grad_x);
}

void hp_lse_forward(int threads, const float *x, int64_t B, int64_t C, int64_t N, const float *r, int64_t r_stride,
                    float *y, float *ew, float *peak, float *total) {
    if (threads <= 1) {
        lse_forward_samples(x, 0, B, C, N, r, r_stride, y, ew, peak, total);
        return;
    }
#pragma omp parallel for num_threads(threads) schedule(static, 1)
    for (int part = 0; part < threads; part++)
        lse_forward_samples(x, B * part / threads, B * (part + 1) / threads, C, N, r, r_stride, y, ew, peak, total);
}

void hp_lse_backward(int threads, const float *x, int64_t B, int64_t C, int64_t N, const float *r, int64_t r_stride,
                     const float *g, const float *peak, const float *total, float *grad_x) {
    if (threads <= 1) {
        lse_backward_samples(x, 0, B, C, N, r, r_stride, g, peak, total, grad_x);
        return;
    }
#pragma omp parallel for num_threads(threads) schedule(static, 1)
    for (int part = 0; part < threads; part++)
        lse_backward_samples(x, B * part / threads, B * (part + 1) / threads, C, N, r, r_stride, g, peak, total,
                             grad_x);
}

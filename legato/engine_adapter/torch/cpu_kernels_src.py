"""C source of the fused CPU kernels (built and bound by `cpu_kernels.py`).

Kept as a Python string rather than a `.c` file so it ships inside the package with no
package-data configuration. Every kernel is single-threaded, float32 and written so gcc -O3
vectorises the inner loops (fixed-width lane accumulators instead of reductions that would need
-ffast-math); `lg_exp` is a Cephes-style polynomial exp (about 1 ulp) that vectorises where libm's
expf would not.

Layouts (all row-major, contiguous unless a stride is passed):
* qkv `[tokens, heads + 2 * kv_heads, dim]`: the fused projection's output, rotated in place.
* kv cache (one layer) `[slots, kv_heads, 2 * dim]`: keys then values of a token and head.
* decode workspace (one layer): keys transposed `[rows, kv_heads, dim, capacity]` so the scores of
  consecutive positions are contiguous lanes, values `[rows, kv_heads, capacity, dim]`.
"""

C_SOURCE = r"""
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>

/* 16 float lanes (one AVX-512 register, two AVX2 ones); unaligned, may alias plain floats */
typedef float v16 __attribute__((vector_size(64), aligned(4), may_alias));
typedef int32_t v16i __attribute__((vector_size(64)));
#define LANES 16
#define INLINE static inline __attribute__((always_inline))

static inline v16 splat(float x) { return (v16){0} + x; }
static inline v16 vload(const float *p) { return *(const v16 *)p; }
static inline void vstore(float *p, v16 x) { *(v16 *)p = x; }

static inline float hsum(v16 x) {
    float s = 0.0f;
    for (int j = 0; j < LANES; j++) s += x[j];
    return s;
}

/* exp on 16 lanes: Cephes expf polynomial with round-to-nearest by the 1.5 * 2^23 trick */
static inline v16 vexp(v16 x) {
    v16i lo = x < -87.0f, hi = x > 88.0f; /* lane masks: all ones where true */
    x = (v16)(((v16i)x & ~lo) | ((v16i)splat(-87.0f) & lo));
    x = (v16)(((v16i)x & ~hi) | ((v16i)splat(88.0f) & hi));
    v16 n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    v16 r = x - n * 0.693359375f + n * 2.12194440e-4f;
    v16 p = splat(1.9875691500e-4f);
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    v16 y = p * r * r + r + 1.0f;
    v16i bits = (__builtin_convertvector(n, v16i) + 127) << 23;
    return y * (v16)bits;
}

static inline float sexp(float x) {
    v16 v = splat(x);
    return vexp(v)[0];
}

/* out[r] = x[r] * rsqrt(mean(x[r]^2) + eps) * w */
void lg_rmsnorm(const float *restrict x, const float *restrict w, float *restrict out,
                int64_t rows, int64_t dim, float eps) {
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * dim;
        float *o = out + r * dim;
        v16 acc = splat(0.0f);
        int64_t d = 0;
        for (; d + LANES <= dim; d += LANES) acc += vload(xr + d) * vload(xr + d);
        float ss = hsum(acc);
        for (; d < dim; d++) ss += xr[d] * xr[d];
        float inv = 1.0f / sqrtf(ss / (float)dim + eps);
        for (d = 0; d + LANES <= dim; d += LANES) vstore(o + d, vload(xr + d) * inv * vload(w + d));
        for (; d < dim; d++) o[d] = xr[d] * inv * w[d];
    }
}

/* out[r] = silu(gate[r]) * up[r] where gate_up[r] = [gate | up] */
void lg_silu_mul(const float *restrict gate_up, float *restrict out, int64_t rows, int64_t inter) {
    for (int64_t r = 0; r < rows; r++) {
        const float *g = gate_up + r * 2 * inter;
        const float *u = g + inter;
        float *o = out + r * inter;
        int64_t j = 0;
        for (; j + LANES <= inter; j += LANES) {
            v16 gv = vload(g + j);
            vstore(o + j, gv / (1.0f + vexp(-gv)) * vload(u + j));
        }
        for (; j < inter; j++) o[j] = g[j] / (1.0f + sexp(-g[j])) * u[j];
    }
}
/* Rotate the query and key heads of every token in place (rotate-half RoPE, cos/sin tables
   [positions, dim]), then store each token's keys and values in its KV-cache slot. */
void lg_rope_store(float *restrict qkv, int64_t ntok, int64_t heads, int64_t kv_heads, int64_t dim,
                   const float *restrict cos_tab, const float *restrict sin_tab,
                   const int64_t *restrict pos, float *restrict kv, const int64_t *restrict slots) {
    int64_t half = dim / 2, width = heads + 2 * kv_heads;
    for (int64_t i = 0; i < ntok; i++) {
        float *x = qkv + i * width * dim;
        const float *c = cos_tab + pos[i] * dim;
        const float *s = sin_tab + pos[i] * dim;
        for (int64_t h = 0; h < heads + kv_heads; h++) {
            float *xh = x + h * dim;
            for (int64_t d = 0; d < half; d++) {
                float a = xh[d], b = xh[d + half];
                xh[d] = a * c[d] - b * s[d];
                xh[d + half] = b * c[d + half] + a * s[d + half];
            }
        }
        float *dst = kv + slots[i] * kv_heads * 2 * dim;
        const float *k = x + heads * dim;
        const float *v = k + kv_heads * dim;
        for (int64_t h = 0; h < kv_heads; h++) {
            memcpy(dst + h * 2 * dim, k + h * dim, dim * sizeof(float));
            memcpy(dst + h * 2 * dim + dim, v + h * dim, dim * sizeof(float));
        }
    }
}

/* Key (d, t) of one head in the tiled transposed layout [cap / tile][dim][tile]; tile is cap
   itself (plain [dim][cap]) or a multiple of 16, so 16 lanes from a multiple of 16 are contiguous. */
static inline int64_t key_at(int64_t d, int64_t t, int64_t dim, int64_t tile) {
    return (t / tile) * dim * tile + d * tile + t % tile;
}

/* Scores of NQ query heads (1 or 2, sharing one KV head) against positions [0, len):
   sc[g * stride + t] = scale * q_g . k[t], keys tiled and transposed (key_at). Blocks of 64
   positions keep 4 * NQ FMA chains in flight and load each key vector once for all NQ heads. */
INLINE void scores(const float *restrict q, int nq, const float *restrict kt, int64_t len, int64_t dim,
                   int64_t cap, int64_t tile, float scale, float *restrict sc, int64_t stride) {
    int64_t t = 0;
    for (; t + 4 * LANES <= len; t += 4 * LANES) {
        v16 a[2][4];
        for (int g = 0; g < nq; g++)
            for (int b = 0; b < 4; b++) a[g][b] = splat(0.0f);
        const float *k0p = kt + key_at(0, t, dim, tile), *k1p = kt + key_at(0, t + LANES, dim, tile);
        const float *k2p = kt + key_at(0, t + 2 * LANES, dim, tile);
        const float *k3p = kt + key_at(0, t + 3 * LANES, dim, tile);
        for (int64_t d = 0; d < dim; d++) {
            v16 k0 = vload(k0p + d * tile), k1 = vload(k1p + d * tile);
            v16 k2 = vload(k2p + d * tile), k3 = vload(k3p + d * tile);
            for (int g = 0; g < nq; g++) {
                float qd = q[g * dim + d];
                a[g][0] += qd * k0;
                a[g][1] += qd * k1;
                a[g][2] += qd * k2;
                a[g][3] += qd * k3;
            }
        }
        for (int g = 0; g < nq; g++)
            for (int b = 0; b < 4; b++) vstore(sc + g * stride + t + b * LANES, a[g][b] * scale);
    }
    for (; t + LANES <= cap && t < len; t += LANES) { /* may read past len, never past cap */
        v16 a[2];
        for (int g = 0; g < nq; g++) a[g] = splat(0.0f);
        const float *kp = kt + key_at(0, t, dim, tile);
        for (int64_t d = 0; d < dim; d++) {
            v16 k0 = vload(kp + d * tile);
            for (int g = 0; g < nq; g++) a[g] += q[g * dim + d] * k0;
        }
        for (int g = 0; g < nq; g++) vstore(sc + g * stride + t, a[g] * scale);
    }
    for (; t < len; t++)
        for (int g = 0; g < nq; g++) {
            float s = 0.0f;
            for (int64_t d = 0; d < dim; d++) s += q[g * dim + d] * kt[key_at(d, t, dim, tile)];
            sc[g * stride + t] = s * scale;
        }
}

/* In place sc[t] = exp(sc[t] - max) over [0, len); returns 1 / sum. sc has room for len + 16. */
static inline float softmax_unnormalised(float *sc, int64_t len) {
    int64_t full = len / LANES * LANES;
    float m = sc[0];
    if (full) {
        v16 mv = vload(sc);
        for (int64_t t = LANES; t < full; t += LANES) {
            v16 x = vload(sc + t);
            v16i gt = x > mv;
            mv = (v16)(((v16i)x & gt) | ((v16i)mv & ~gt));
        }
        for (int j = 0; j < LANES; j++) m = mv[j] > m ? mv[j] : m;
    }
    for (int64_t t = full; t < len; t++) m = sc[t] > m ? sc[t] : m;
    v16 sum = splat(0.0f);
    for (int64_t t = 0; t < full; t += LANES) {
        v16 e = vexp(vload(sc + t) - m);
        vstore(sc + t, e);
        sum += e;
    }
    float s = hsum(sum);
    for (int64_t t = full; t < len; t++) {
        sc[t] = sexp(sc[t] - m);
        s += sc[t];
    }
    return 1.0f / s;
}

/* o_g[0:NV*16] = inv_g * sum_t p_g[t] * v[t] for NQ (1 or 2) heads: each value vector is loaded
   once for all heads, and two position streams give 2 * NQ * NV independent FMA chains. */
INLINE void weighted_sum(const float *restrict p, int64_t stride, int nq, const float *restrict vv,
                         int64_t len, int nv, const float *inv, float *restrict o) {
    v16 a[2][16], b[2][16];
    for (int g = 0; g < nq; g++)
        for (int k = 0; k < nv; k++) a[g][k] = b[g][k] = splat(0.0f);
    int64_t dim = (int64_t)nv * LANES, t = 0;
    for (; t + 2 <= len; t += 2) {
        const float *v0 = vv + t * dim, *v1 = v0 + dim;
        for (int k = 0; k < nv; k++) {
            v16 x0 = vload(v0 + k * LANES), x1 = vload(v1 + k * LANES);
            for (int g = 0; g < nq; g++) {
                a[g][k] += p[g * stride + t] * x0;
                b[g][k] += p[g * stride + t + 1] * x1;
            }
        }
    }
    for (; t < len; t++)
        for (int k = 0; k < nv; k++)
            for (int g = 0; g < nq; g++) a[g][k] += p[g * stride + t] * vload(vv + t * dim + k * LANES);
    for (int g = 0; g < nq; g++)
        for (int k = 0; k < nv; k++) vstore(o + g * dim + k * LANES, (a[g][k] + b[g][k]) * inv[g]);
}

/* One KV head's share of a sequence: NQ consecutive query heads q [nq, dim] -> o [nq, dim]. */
INLINE void attend(const float *restrict q, int nq, const float *restrict kt, const float *restrict vv,
                   int64_t len, int64_t dim, int64_t cap, int64_t tile, float scale, float *restrict sc,
                   int64_t stride, float *restrict o) {
    float inv[2];
    scores(q, nq, kt, len, dim, cap, tile, scale, sc, stride);
    for (int g = 0; g < nq; g++) inv[g] = softmax_unnormalised(sc + g * stride, len);
    switch (dim / LANES) { /* constant trip counts keep the accumulators in registers */
    case 2: weighted_sum(sc, stride, nq, vv, len, 2, inv, o); break;
    case 4: weighted_sum(sc, stride, nq, vv, len, 4, inv, o); break;
    case 8: weighted_sum(sc, stride, nq, vv, len, 8, inv, o); break;
    default: weighted_sum(sc, stride, nq, vv, len, (int)(dim / LANES), inv, o); break;
    }
}

/* Single-token attention of n decode tokens over their workspace rows. Token i's row of qkv
   (qkv + i * qkv_stride: [heads + 2 * kv_heads, dim], already rotated) holds its query heads, then
   its new key and value heads: those are first written at position lens[i] - 1 of workspace row
   rows[i] (here rather than in a separate pass, so the cache lines are fetched once for the write
   and the read), then the query heads attend to positions [0, lens[i]); query head j reads KV head
   j / (heads / kv_heads) (GQA). Writes out [n, heads, dim]. A head's keys are laid out
   [cap / tile][dim][tile] (key_at): tile = cap is the plain transposed layout; tile = 16 keeps
   every 16 positions' keys in one contiguous 64 * dim bytes, which the hardware prefetcher
   streams (plain rows of dim strided reads defeat it, and decode attention is bound by fetching
   keys). dim must be a multiple of 16, at most 256 (the caller checks).
   Consecutive tokens of one row at consecutive positions (a speculative verify chunk: the last
   token and its draft) form a run, done one KV head at a time: the run's new keys and values of
   that head are written first (token i reads only positions below lens[i], so a later token's
   write never reaches an earlier token's keys), then each token attends while the head's keys
   and values are still in cache. Every token's arithmetic is the single-token one. */
void lg_decode_attention(const float *restrict qkv, int64_t qkv_stride, float *restrict ws_kt,
                         float *restrict ws_v, const int64_t *restrict rows,
                         const int64_t *restrict lens, int64_t n, int64_t heads, int64_t kv_heads,
                         int64_t dim, int64_t cap, int64_t tile, float scale, float *restrict out) {
    int64_t group = heads / kv_heads;
    int64_t maxlen = 1;
    for (int64_t i = 0; i < n; i++) maxlen = lens[i] > maxlen ? lens[i] : maxlen;
    int64_t stride = maxlen + 2 * LANES;
    float *sc = (float *)malloc((size_t)(2 * stride) * sizeof(float));
    if (!sc) return;
    for (int64_t i0 = 0, i1; i0 < n; i0 = i1) {
        int64_t row = rows[i0];
        for (i1 = i0 + 1; i1 < n && rows[i1] == row && lens[i1] == lens[i1 - 1] + 1; i1++) {
        }
        for (int64_t h = 0; h < kv_heads; h++) {
            float *kt = ws_kt + (row * kv_heads + h) * dim * cap;
            float *vv = ws_v + (row * kv_heads + h) * cap * dim;
            for (int64_t i = i0; i < i1; i++) {
                const float *q = qkv + i * qkv_stride;
                const float *k_new = q + (heads + h) * dim, *v_new = q + (heads + kv_heads + h) * dim;
                for (int64_t d = 0; d < dim; d++) kt[key_at(d, lens[i] - 1, dim, tile)] = k_new[d];
                memcpy(vv + (lens[i] - 1) * dim, v_new, dim * sizeof(float));
            }
            for (int64_t i = i0; i < i1; i++) {
                const float *q = qkv + i * qkv_stride;
                for (int64_t g = 0; g < group; g += 2) {
                    int64_t head = h * group + g;
                    const float *qh = q + head * dim;
                    float *o = out + (i * heads + head) * dim;
                    if (g + 1 < group)
                        attend(qh, 2, kt, vv, lens[i], dim, cap, tile, scale, sc, stride, o);
                    else
                        attend(qh, 1, kt, vv, lens[i], dim, cap, tile, scale, sc, stride, o);
                }
            }
        }
    }
    free(sc);
}
/* ---- the whole decode step in one call -------------------------------------------------------
   Matrix products go through MKL's packed GEMM (cblas_sgemm_compute with the weight packed once by
   cblas_sgemm_pack), reached through a function pointer the caller takes from the MKL that torch
   itself links: nothing here links against MKL. MKL_INT arguments are passed as int64_t, which
   is right for both the LP64 and ILP64 interfaces on x86-64 (a 32-bit callee reads the low half). */
typedef void (*lg_gemm_compute_t)(int layout, int64_t transa, int64_t transb, int64_t m, int64_t n,
                                  int64_t k, const float *a, int64_t lda, const float *b, int64_t ldb,
                                  float beta, float *c, int64_t ldc);
#define LG_ROW_MAJOR 101
#define LG_NO_TRANS 111
#define LG_PACKED 151

/* y[n, out] = x[n, in] . W^T + beta * y, W [out, in] packed by cblas_sgemm_pack */
static void packed_linear(lg_gemm_compute_t gemm, int64_t n, int64_t out, int64_t in, const float *x,
                          const float *w_packed, float beta, float *y) {
    gemm(LG_ROW_MAJOR, LG_NO_TRANS, LG_PACKED, n, out, in, x, in, w_packed, out, beta, y, out);
}

/* One decoder layer's weights: norms plain, projections packed (qkv_bias may be NULL). */
typedef struct {
    const float *input_norm, *post_norm, *qkv, *qkv_bias, *o, *gate_up, *down;
} lg_layer;

/* Every layer of a decode-only step (n tokens, each with a workspace row: one per sequence, or a
   verify chunk's consecutive tokens sharing one, as in lg_decode_attention),
   the same arithmetic as the per-op path: x += o(attention(rope(qkv(norm(x))))); x += down(
   silu(gate) * up(norm(x))). `x` [n, hidden] holds the embeddings on entry and the residual
   stream on return; `out` [n, hidden] gets the final norm. Workspace and KV-cache layouts as in
   lg_decode_attention and lg_rope_store, layer l at `+ l * *_layer_stride` floats.
   Returns 0, or -1 when scratch memory could not be allocated (outputs are then undefined). */
int lg_decode_step(void *gemm_fn, const lg_layer *layers, int64_t num_layers, int64_t n,
                   int64_t hidden, int64_t heads, int64_t kv_heads, int64_t dim, int64_t inter,
                   float eps, float *restrict x, const float *final_norm, float *restrict out,
                   const int64_t *pos, const float *cos_tab, const float *sin_tab, float *kv,
                   int64_t kv_layer_stride, const int64_t *slots, float *ws_kt, float *ws_v,
                   int64_t ws_layer_stride, const int64_t *rows, const int64_t *lens, int64_t cap,
                   int64_t tile, float scale) {
    lg_gemm_compute_t gemm = (lg_gemm_compute_t)gemm_fn;
    int64_t width = (heads + 2 * kv_heads) * dim;
    float *h = (float *)malloc((size_t)(n * hidden) * sizeof(float));
    float *qkv = (float *)malloc((size_t)(n * width) * sizeof(float));
    float *att = (float *)malloc((size_t)(n * heads * dim) * sizeof(float));
    float *gu = (float *)malloc((size_t)(n * 2 * inter) * sizeof(float));
    float *act = (float *)malloc((size_t)(n * inter) * sizeof(float));
    int status = (h && qkv && att && gu && act) ? 0 : -1;
    for (int64_t l = 0; status == 0 && l < num_layers; l++) {
        const lg_layer *w = layers + l;
        lg_rmsnorm(x, w->input_norm, h, n, hidden, eps);
        float beta = 0.0f;
        if (w->qkv_bias) {
            for (int64_t i = 0; i < n; i++) memcpy(qkv + i * width, w->qkv_bias, width * sizeof(float));
            beta = 1.0f;
        }
        packed_linear(gemm, n, width, hidden, h, w->qkv, beta, qkv);
        lg_rope_store(qkv, n, heads, kv_heads, dim, cos_tab, sin_tab, pos, kv + l * kv_layer_stride, slots);
        lg_decode_attention(qkv, width, ws_kt + l * ws_layer_stride, ws_v + l * ws_layer_stride, rows,
                            lens, n, heads, kv_heads, dim, cap, tile, scale, att);
        packed_linear(gemm, n, hidden, heads * dim, att, w->o, 1.0f, x);
        lg_rmsnorm(x, w->post_norm, h, n, hidden, eps);
        packed_linear(gemm, n, 2 * inter, hidden, h, w->gate_up, 0.0f, gu);
        lg_silu_mul(gu, act, n, inter);
        packed_linear(gemm, n, hidden, inter, act, w->down, 1.0f, x);
    }
    if (status == 0) lg_rmsnorm(x, final_norm, out, n, hidden, eps);
    free(h);
    free(qkv);
    free(att);
    free(gu);
    free(act);
    return status;
}
"""

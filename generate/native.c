/* The whole sampling step of a stacked GRU language model in plain C, many tokens per call.
 *
 * Loaded by generate/native.py (compiled on first use with the system C compiler; no torch headers).
 * At batch 1 PyTorch spends most of a step dispatching ~20 small kernels; here one call runs every
 * layer, the output projection and the Gumbel-max draw for `steps` tokens, reading the weights in
 * the order they are packed (generate/native.py: pack()). The matrix products keep a tile of the
 * output in registers across the whole reduction, so each weight is read once per group of rows.
 *
 * Gates are ordered r, z, n as in torch.nn.GRU. Per layer the packed floats are:
 *   bias (3H): b_ih with every part of b_hh that may be folded into it (generate/gru.py: fold_biases)
 *   w_ih^T (H x 3H), only for layers > 0 (layer 0's input projection is the per-token `table`)
 *   reset_after = 1 (nn.GRU form): w_hh^T (H x 3H), then b_hn (H)
 *   reset_after = 0 (seed form):   w_hh[r,z]^T (H x 2H), then w_hh[n]^T (H x H)
 * then head^T (H x V) and the head bias (V).
 *
 * zoneout p (generate/regularize.py) is sampled as its expectation, a rescaled update gate:
 * reset_after: z' = p + (1 - p) z; seed form: z' = (1 - p) z. p = 0 leaves z as it is.
 *
 * layer_norm = 1 (the layer-normalized cell, generate/regularize.py): the table holds W_ih e without
 * bias, and per layer the packed floats are instead:
 *   b_ih (3H), g_ih (3H), w_ih^T (H x 3H, layers > 0 only),
 *   reset_after = 1: w_hh^T (H x 3H), b_hh (3H), g_hh (3H)
 *   reset_after = 0: w_hh[r,z]^T (H x 2H), w_hh[n]^T (H x H), b_hh (3H), g_hh (2H), g_hn (H)
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__AVX512F__)  /* 32 vector registers: 6 x 4 accumulators */
#define VW 16   /* floats per vector */
#define TILE 4  /* vectors per output tile */
#define ROWS 6  /* batch rows sharing one read of a weight row */
#else           /* 16 registers: 4 x 2 accumulators */
#define VW 8
#define TILE 2
#define ROWS 4
#endif

typedef float vf __attribute__((vector_size(VW * sizeof(float))));

static inline vf load(const float *p) { vf v; memcpy(&v, p, sizeof v); return v; }
static inline void store(float *p, vf v) { memcpy(p, &v, sizeof v); }

/* out[r, c0:c0+w] = bias[r, c0:] + x[r, :k] @ w[:k, c0:], for `rows` rows and `nv` vectors of columns. */
static inline __attribute__((always_inline)) void tile(
    int rows, int nv, int64_t k, const float *x, int64_t xs, const float *w, int64_t ldw,
    const float *bias, int64_t bs, float *out, int64_t os)
{
    vf acc[ROWS][TILE];
    for (int r = 0; r < rows; r++)
        for (int v = 0; v < nv; v++) acc[r][v] = load(bias + r * bs + v * VW);
    for (int64_t i = 0; i < k; i++) {
        vf wv[TILE];
        for (int v = 0; v < nv; v++) wv[v] = load(w + i * ldw + v * VW);
        for (int r = 0; r < rows; r++) {
            const float xr = x[r * xs + i];  /* broadcast by the vector product */
            for (int v = 0; v < nv; v++) acc[r][v] += xr * wv[v];
        }
    }
    for (int r = 0; r < rows; r++)
        for (int v = 0; v < nv; v++) store(out + r * os + v * VW, acc[r][v]);
}

/* Weight matrices (k x n) are packed in panels (generate/native.py: panels()): the first n / PANEL * PANEL
 * columns as k x PANEL blocks, one after another, then the remaining columns as one k x (n % PANEL) block,
 * so every tile streams through contiguous memory. */
#define PANEL (TILE * VW)

int64_t gru_panel_width(void) { return PANEL; }

/* out (batch x n, row stride os) = bias (row stride bs; 0: one row for all) + x (batch x k) @ w (k x n, in panels).
 * Panel by panel, every group of ROWS rows in turn: a panel is read from memory once per call, not once per group. */
static void matmul(int64_t batch, int64_t k, int64_t n, const float *x, int64_t xs, const float *w,
                   const float *bias, int64_t bs, float *out, int64_t os)
{
    const int64_t full = n / PANEL * PANEL, rest = n - full;
    for (int64_t c = 0; c < full; c += PANEL) {
        const float *p = w + c * k;
        for (int64_t b = 0; b < batch; b += ROWS) {
            const float *xb = x + b * xs, *bb = bias + b * bs + c;
            float *ob = out + b * os + c;
            switch (batch - b < ROWS ? batch - b : ROWS) {  /* constant row counts: accumulators stay in registers */
#if ROWS > 4
            case 6: tile(6, TILE, k, xb, xs, p, PANEL, bb, bs, ob, os); break;
            case 5: tile(5, TILE, k, xb, xs, p, PANEL, bb, bs, ob, os); break;
#endif
            case 4: tile(4, TILE, k, xb, xs, p, PANEL, bb, bs, ob, os); break;
            case 3: tile(3, TILE, k, xb, xs, p, PANEL, bb, bs, ob, os); break;
            case 2: tile(2, TILE, k, xb, xs, p, PANEL, bb, bs, ob, os); break;
            default: tile(1, TILE, k, xb, xs, p, PANEL, bb, bs, ob, os);
            }
        }
    }
    const float *p = w + full * k;  /* the last block: k x rest, row stride rest */
    for (int64_t r = 0; r < batch; r++) {
        int64_t c = 0;
        for (; c + VW <= rest; c += VW)
            tile(1, 1, k, x + r * xs, xs, p + c, rest, bias + r * bs + full + c, bs, out + r * os + full + c, os);
        for (; c < rest; c++) {  /* columns past the last whole vector */
            float s = bias[r * bs + full + c];
            for (int64_t i = 0; i < k; i++) s += x[r * xs + i] * p[i * rest + c];
            out[r * os + full + c] = s;
        }
    }
}

/* exp(x) for x in [-87, 88], to ~2 ulp: 2^n * p(r), branch-free so that the compiler vectorizes its loops. */
static inline float exp_(float x)
{
    x = x < -87.0f ? -87.0f : x;
    x = x > 88.0f ? 88.0f : x;
    float fn = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  /* round(x / ln 2): 1.5 * 2^23 trick */
    float r = x - fn * 0.693359375f + fn * 2.12194440e-4f;  /* x - n ln 2, ln 2 in two parts */
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    union { int32_t i; float f; } scale = {.i = ((int32_t)fn + 127) << 23};  /* 2^n */
    return p * scale.f;
}

static inline float sigmoid_(float x) { return 1.0f / (1.0f + exp_(-x)); }
static inline float tanh_(float x) { return 2.0f / (1.0f + exp_(-2.0f * x)) - 1.0f; }

/* One layer's gates from gi (input part, biases folded) and gh: the state h (batch x H) updated in place. */
static void gates_after(int64_t batch, int64_t H, float *gi, const float *gh, float *h, float keep)
{
    for (int64_t b = 0; b < batch; b++) {
        float *g = gi + b * 3 * H, *hb = h + b * H;
        const float *u = gh + b * 3 * H;
        for (int64_t j = 0; j < H; j++) {
            float r = sigmoid_(g[j] + u[j]), z = keep + (1.0f - keep) * sigmoid_(g[H + j] + u[H + j]);
            float n = tanh_(g[2 * H + j] + r * u[2 * H + j]);  /* reset after the product */
            hb[j] = n + z * (hb[j] - n);
        }
    }
}

/* v (n floats) = g * (v - mean) / sqrt(var + 1e-5) + b: layer norm with gain g, then the GRU bias b. */
static void norm_add(int64_t n, float *v, const float *g, const float *b)
{
    float mean = 0.0f, var = 0.0f;
    for (int64_t j = 0; j < n; j++) mean += v[j];
    mean /= (float)n;
    for (int64_t j = 0; j < n; j++) var += (v[j] - mean) * (v[j] - mean);
    const float scale = 1.0f / sqrtf(var / (float)n + 1e-5f);
    for (int64_t j = 0; j < n; j++) v[j] = g[j] * ((v[j] - mean) * scale) + b[j];
}

/* layer_step for the layer-normalized cell (the packing in the header); zeros: 3H zero floats (a bias row). */
static const float *layer_step_norm(int64_t batch, int64_t H, int reset_after, float keep, int layer, const float *p,
                                    const float *x, float *h, float *gi, float *gh, float *rh, const float *zeros)
{
    const float *b_ih = p, *g_ih = p + 3 * H;
    p += 6 * H;
    if (layer > 0) {
        matmul(batch, H, 3 * H, x, H, p, zeros, 0, gi, 3 * H);
        p += 3 * H * H;
    }
    for (int64_t b = 0; b < batch; b++) norm_add(3 * H, gi + b * 3 * H, g_ih, b_ih);
    if (reset_after) {
        const float *b_hh = p + 3 * H * H, *g_hh = b_hh + 3 * H;
        matmul(batch, H, 3 * H, h, H, p, zeros, 0, gh, 3 * H);
        for (int64_t b = 0; b < batch; b++) norm_add(3 * H, gh + b * 3 * H, g_hh, b_hh);
        gates_after(batch, H, gi, gh, h, keep);  /* gi, gh now hold a and c of the module docstring */
        return g_hh + 3 * H;
    }
    const float *w_rz = p, *w_n = p + 2 * H * H, *b_hh = w_n + H * H, *g_hh = b_hh + 3 * H, *g_hn = g_hh + 2 * H;
    matmul(batch, H, 2 * H, h, H, w_rz, zeros, 0, gh, 3 * H);
    for (int64_t b = 0; b < batch; b++) {
        float *c = gh + b * 3 * H;
        const float *a = gi + b * 3 * H;
        norm_add(2 * H, c, g_hh, b_hh);
        for (int64_t j = 0; j < 2 * H; j++) c[j] = sigmoid_(a[j] + c[j]);
        for (int64_t j = 0; j < H; j++) rh[b * H + j] = c[j] * h[b * H + j];  /* reset before the product */
    }
    matmul(batch, H, H, rh, H, w_n, zeros, 0, gh + 2 * H, 3 * H);
    for (int64_t b = 0; b < batch; b++) {
        float *c = gh + b * 3 * H, *hb = h + b * H;
        const float *a = gi + b * 3 * H;
        norm_add(H, c + 2 * H, g_hn, b_hh + 2 * H);
        for (int64_t j = 0; j < H; j++) {
            float cand = tanh_(a[2 * H + j] + c[2 * H + j]);
            hb[j] = hb[j] + (1.0f - keep) * c[H + j] * (cand - hb[j]);
        }
    }
    return g_hn + H;
}

/* Layer `layer`'s step: x (batch x I) is the layer below's new state (unused at layer 0: gi holds the lookup). */
static const float *layer_step(int64_t batch, int64_t H, int reset_after, float keep, int layer, const float *p,
                               const float *x, float *h, float *gi, float *gh, float *rh)
{
    const float *bias = p;
    p += 3 * H;
    if (layer > 0) {
        matmul(batch, H, 3 * H, x, H, p, bias, 0, gi, 3 * H);
        p += 3 * H * H;
    }
    if (reset_after) {
        const float *w = p, *b_hn = p + 3 * H * H;
        memset(gh, 0, sizeof(float) * 2 * H);  /* bias row: [0, 0, b_hn], read with stride 0 */
        memcpy(gh + 2 * H, b_hn, sizeof(float) * H);
        matmul(batch, H, 3 * H, h, H, w, gh, 0, gh + 3 * H, 3 * H);  /* gh row 0 is the bias: results from row 1 */
        gates_after(batch, H, gi, gh + 3 * H, h, keep);
        return p + 3 * H * H + H;
    }
    const float *w_rz = p, *w_n = p + 2 * H * H;
    matmul(batch, H, 2 * H, h, H, w_rz, gi, 3 * H, gh, 3 * H);  /* r, z pre-activations */
    for (int64_t b = 0; b < batch; b++)
        for (int64_t j = 0; j < 2 * H; j++) gh[b * 3 * H + j] = sigmoid_(gh[b * 3 * H + j]);
    for (int64_t b = 0; b < batch; b++)
        for (int64_t j = 0; j < H; j++) rh[b * H + j] = gh[b * 3 * H + j] * h[b * H + j];  /* reset before the product */
    matmul(batch, H, H, rh, H, w_n, gi + 2 * H, 3 * H, gh + 2 * H, 3 * H);
    for (int64_t b = 0; b < batch; b++) {
        float *hb = h + b * H;
        const float *g = gh + b * 3 * H;
        for (int64_t j = 0; j < H; j++) {
            float cand = tanh_(g[2 * H + j]);
            hb[j] = hb[j] + (1.0f - keep) * g[H + j] * (cand - hb[j]);
        }
    }
    return p + 3 * H * H;
}

/* Sample `steps` tokens for `batch` sequences. prev (batch): the tokens before the first step; tokens
 * (steps x batch) receives the draws; state (layers x batch x H) is carried in place. noise (steps x
 * batch x V): Gumbel noise, the draw is argmax(logits * inv_temperature + noise); NULL: greedy argmax.
 * logits_out (steps x batch x V), when not NULL, receives every step's logits (for tests).
 * work: batch * (7H + V) + 6H floats. Returns 0. */
int gru_sample(int64_t layers, int64_t H, int64_t V, int64_t batch, int reset_after, float zoneout, int layer_norm,
               const float *table,
               const float *params, float *state, float *work, const int64_t *prev, int64_t steps,
               const float *noise, float inv_temperature, int64_t *tokens, float *logits_out)
{
    float *gi = work, *gh = gi + batch * 3 * H, *rh = gh + (batch + 1) * 3 * H, *logits = rh + batch * H;
    float *zeros = logits + batch * V;
    memset(zeros, 0, sizeof(float) * 3 * H);
    for (int64_t t = 0; t < steps; t++) {
        const int64_t *in = t == 0 ? prev : tokens + (t - 1) * batch;
        for (int64_t b = 0; b < batch; b++)  /* layer 0's input projection: a row lookup */
            memcpy(gi + b * 3 * H, table + in[b] * 3 * H, sizeof(float) * 3 * H);
        const float *p = params, *x = NULL;
        for (int l = 0; l < layers; l++) {
            float *h = state + l * batch * H;
            p = layer_norm ? layer_step_norm(batch, H, reset_after, zoneout, l, p, x, h, gi, gh, rh, zeros)
                           : layer_step(batch, H, reset_after, zoneout, l, p, x, h, gi, gh, rh);
            x = h;
        }
        matmul(batch, H, V, x, H, p, p + H * V, 0, logits, V);
        if (logits_out) memcpy(logits_out + t * batch * V, logits, sizeof(float) * batch * V);
        for (int64_t b = 0; b < batch; b++) {
            const float *row = logits + b * V, *g = noise ? noise + (t * batch + b) * V : NULL;
            int64_t best = 0;
            float top = g ? g[0] + row[0] * inv_temperature : row[0];
            for (int64_t j = 1; j < V; j++) {
                float s = g ? g[j] + row[j] * inv_temperature : row[j];
                if (s > top) { top = s; best = j; }  /* the first of equal maxima, as torch.argmax */
            }
            tokens[t * batch + b] = best;
        }
    }
    return 0;
}

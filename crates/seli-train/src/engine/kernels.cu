// The engine's kernels (crate::engine::device): CUDA C++ without headers, compiled by NVRTC
// at run time with `#define T <threads per block>` in front; on the CPU, compiled by the system
// C++ compiler under an emulation of CUDA's launch model for the tests (engine/emulate.rs).
// Values f32; the sums of batch norm, bias gradients, pooling and the loss f64. Every tensor
// has fewer than 2^32 entries (the engine checks), so index arithmetic is 32-bit: a GPU
// divides 32-bit integers several times faster than 64-bit ones.

typedef unsigned long long u64;
typedef unsigned u32;
// Grid-stride loop over i < len (the loop counter 64-bit, so that it cannot wrap).
#define GRID(i, len) for (u64 i##_ = (u64)blockIdx.x * blockDim.x + threadIdx.x; i##_ < (len); \
                          i##_ += (u64)gridDim.x * blockDim.x) \
                         for (u32 i = (u32)i##_, i##_once = 1; i##_once; i##_once = 0)

__device__ double block_sum(double v) {
    __shared__ double sh[T];
    sh[threadIdx.x] = v;
    __syncthreads();
    for (int o = blockDim.x / 2; o > 0; o >>= 1) {
        if (threadIdx.x < o) sh[threadIdx.x] += sh[threadIdx.x + o];
        __syncthreads();
    }
    double r = sh[0];
    __syncthreads();
    return r;
}

extern "C" __global__ void add_bias(float* y, const float* b, u32 rows, u32 cols) {
    GRID(i, (u64)rows * cols) y[i] += b[i % cols];
}

extern "C" __global__ void bias_grad(const float* dy, float* db, u32 rows, u32 cols) {
    u32 j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= cols) return;
    double s = 0.0;
    for (u32 i = 0; i < rows; ++i) s += dy[i * cols + j];
    db[j] = (float)s;
}

extern "C" __global__ void relu(const float* x, float* y, u32 len) {
    GRID(i, len) y[i] = x[i] > 0.0f ? x[i] : 0.0f;
}

extern "C" __global__ void relu_backward(const float* y, const float* dy, float* dx, u32 len,
                                         int acc) {
    GRID(i, len) {
        float g = y[i] > 0.0f ? dy[i] : 0.0f;
        dx[i] = acc ? dx[i] + g : g;
    }
}

// Entry j of channel ch's m = rows·s values in a [rows, c, s] tensor.
#define AT(ch, j) ((((j) / s) * c + (ch)) * s + (j) % s)

// The share of channel ch's m values that block part of `parts` sums: [lo, hi).
#define SHARE(m, part, parts, lo, hi) \
    u32 per_ = ((m) + (parts) - 1) / (parts), lo = (part) * per_, \
        hi = lo + per_ < (m) ? lo + per_ : (m)

// Batch norm's channel sums in two stages, so that a channel's values are read by many blocks:
// block (ch, part) of c × parts writes its share's Σx and Σx² (f64) to partial[2·block + 0, 1];
// norm_finish adds the parts in order (the same result at every call).
extern "C" __global__ void norm_partial(const float* x, u32 rows, u32 c, u32 s, u32 parts,
                                        double* partial) {
    u32 ch = blockIdx.x / parts, part = blockIdx.x % parts;
    SHARE(rows * s, part, parts, lo, hi);
    double s1 = 0.0, s2 = 0.0;
    for (u32 j = lo + threadIdx.x; j < hi; j += blockDim.x) {
        double v = x[AT(ch, j)];
        s1 += v;
        s2 += v * v;
    }
    s1 = block_sum(s1);
    s2 = block_sum(s2);
    if (threadIdx.x == 0) {
        partial[2 * blockIdx.x] = s1;
        partial[2 * blockIdx.x + 1] = s2;
    }
}

// One thread per channel: the batch mean and 1/sqrt(σ² + ε) (biased σ²) into saved, the
// running statistics moved by r ← (1 − m) r + m·(batch value).
extern "C" __global__ void norm_finish(const double* partial, u32 rows, u32 c, u32 s,
                                       u32 parts, float* saved, float* running, float momentum,
                                       float eps) {
    u32 ch = blockIdx.x * blockDim.x + threadIdx.x;
    if (ch >= c) return;
    double s1 = 0.0, s2 = 0.0;
    for (u32 p = 0; p < parts; ++p) {
        s1 += partial[2 * (ch * parts + p)];
        s2 += partial[2 * (ch * parts + p) + 1];
    }
    double m = (double)rows * s, mean = s1 / m, var = s2 / m - mean * mean;
    var = var > 0.0 ? var : 0.0;
    saved[ch] = (float)mean;
    saved[c + ch] = (float)(1.0 / sqrt(var + (double)eps));
    running[ch] = (1.0f - momentum) * running[ch] + momentum * (float)mean;
    running[c + ch] = (1.0f - momentum) * running[c + ch] + momentum * (float)var;
}

// y = γ (x − mean)·inv + β (+ skip), then ReLU; stats holds mean then inv, or (is_var) the
// running mean then variance.
extern "C" __global__ void norm_apply(const float* x, const float* skip, float* y,
                                      const float* gb, const float* stats, u32 rows, u32 c,
                                      u32 s, int relu, int is_var, float eps) {
    GRID(i, (u64)rows * c * s) {
        u32 ch = (i / s) % c;
        float inv = is_var ? 1.0f / sqrtf(stats[c + ch] + eps) : stats[c + ch];
        float v = gb[ch] * (x[i] - stats[ch]) * inv + gb[c + ch];
        if (skip) v += skip[i];
        y[i] = relu && v < 0.0f ? 0.0f : v;
    }
}

// The backward's channel sums in two stages, as norm_partial: Σg and Σg·x̂ of each block's
// share, g = ∂y (masked by y > 0 with relu).
extern "C" __global__ void norm_grad_partial(const float* x, const float* y, const float* dy,
                                             const float* saved, u32 rows, u32 c, u32 s,
                                             u32 parts, int relu, double* partial) {
    u32 ch = blockIdx.x / parts, part = blockIdx.x % parts;
    SHARE(rows * s, part, parts, lo, hi);
    double mean = saved[ch], inv = saved[c + ch];
    double sg = 0.0, sgx = 0.0;
    for (u32 j = lo + threadIdx.x; j < hi; j += blockDim.x) {
        u32 at = AT(ch, j);
        double g = (!relu || y[at] > 0.0f) ? dy[at] : 0.0f;
        sg += g;
        sgx += g * (x[at] - mean) * inv;
    }
    sg = block_sum(sg);
    sgx = block_sum(sgx);
    if (threadIdx.x == 0) {
        partial[2 * blockIdx.x] = sg;
        partial[2 * blockIdx.x + 1] = sgx;
    }
}

// One thread per channel: ∂γ = Σ g x̂ and ∂β = Σ g, the parts added in order.
extern "C" __global__ void norm_grad_finish(const double* partial, u32 c, u32 parts,
                                            float* grad) {
    u32 ch = blockIdx.x * blockDim.x + threadIdx.x;
    if (ch >= c) return;
    double sg = 0.0, sgx = 0.0;
    for (u32 p = 0; p < parts; ++p) {
        sg += partial[2 * (ch * parts + p)];
        sgx += partial[2 * (ch * parts + p) + 1];
    }
    grad[ch] = (float)sgx;
    grad[c + ch] = (float)sg;
}

// ∂x (+)= γ·inv·(g − ∂β/m − x̂ ∂γ/m); ∂skip (+)= g when dskip is given.
extern "C" __global__ void norm_grad_input(const float* x, const float* y, const float* dy,
                                           const float* saved, const float* gamma,
                                           const float* grad, u32 rows, u32 c, u32 s,
                                           int relu, float* dx, int acc, float* dskip,
                                           int acc_skip) {
    float m = (float)rows * (float)s;
    GRID(i, (u64)rows * c * s) {
        u32 ch = (i / s) % c;
        float g = (!relu || y[i] > 0.0f) ? dy[i] : 0.0f;
        float inv = saved[c + ch];
        float xh = (x[i] - saved[ch]) * inv;
        float v = gamma[ch] * inv * (g - grad[c + ch] / m - xh * grad[ch] / m);
        dx[i] = acc ? dx[i] + v : v;
        if (dskip) dskip[i] = acc_skip ? dskip[i] + g : g;
    }
}

extern "C" __global__ void pool(const float* x, float* y, u32 planes, u32 s) {
    GRID(p, planes) {
        double sum = 0.0;
        for (u32 j = 0; j < s; ++j) sum += x[p * s + j];
        y[p] = (float)(sum / (double)s);
    }
}

extern "C" __global__ void pool_backward(const float* dy, float* dx, u32 planes, u32 s,
                                         int acc) {
    GRID(i, (u64)planes * s) {
        float v = dy[i / s] / (float)s;
        dx[i] = acc ? dx[i] + v : v;
    }
}

// One block: u = m ⊙ z + ι per row (in f64), the loss log Σ exp(u) − u_y and the gradient
// (softmax(u) − e_y) ⊙ m / rows; then, in a fixed order, the sums of the losses and of the rows
// whose largest z is their label's added to totals.
extern "C" __global__ void cross_entropy(const float* z, const unsigned* labels,
                                         const float* delta, const float* shift, int per_label,
                                         u32 rows, u32 k, float* dz, double* rowwise,
                                         double* totals) {
    for (u32 i = threadIdx.x; i < rows; i += blockDim.x) {
        const float* zr = z + (u64)i * k;
        unsigned y = labels[i];
#define MUL(c) ((double)(per_label ? delta[y] : delta[c]))
#define U(c) (MUL(c) * (double)zr[c] + (double)shift[c])
        double top = U(0);
        for (u32 c = 1; c < k; ++c) top = U(c) > top ? U(c) : top;
        double sum = 0.0;
        for (u32 c = 0; c < k; ++c) sum += exp(U(c) - top);
        rowwise[i] = top + log(sum) - U(y);
        u32 best = 0;
        for (u32 c = 0; c < k; ++c) {
            double p = exp(U(c) - top) / sum - (c == y ? 1.0 : 0.0);
            dz[(u64)i * k + c] = (float)(p * MUL(c) / (double)rows);
            if (zr[c] > zr[best]) best = c;
        }
        rowwise[rows + i] = best == y ? 1.0 : 0.0;
#undef U
#undef MUL
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        double l = 0.0, h = 0.0;
        for (u32 i = 0; i < rows; ++i) { l += rowwise[i]; h += rowwise[rows + i]; }
        totals[0] += l;
        totals[1] += h;
    }
}

extern "C" __global__ void sgd(float* w, const float* g, float* v, u32 len, float lr, float mu,
                               float wd) {
    GRID(i, len) {
        float u = mu * v[i] + g[i] + wd * w[i];
        v[i] = u;
        w[i] -= lr * u;
    }
}

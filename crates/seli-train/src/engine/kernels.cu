// The engine's kernels (crate::engine::device): CUDA C++ without headers, compiled by NVRTC
// at run time with `#define T <threads per block>` in front; on the CPU, compiled by the system
// C++ compiler under an emulation of CUDA's launch model for the tests (engine/emulate.rs).
// Values f32; the sums of batch norm, bias gradients, pooling and the loss f64.

typedef unsigned long long u64;
#define GRID(i, len) for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < (len); \
                          i += (u64)gridDim.x * blockDim.x)

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

extern "C" __global__ void add_bias(float* y, const float* b, u64 rows, u64 cols) {
    GRID(i, rows * cols) y[i] += b[i % cols];
}

extern "C" __global__ void bias_grad(const float* dy, float* db, u64 rows, u64 cols) {
    u64 j = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= cols) return;
    double s = 0.0;
    for (u64 i = 0; i < rows; ++i) s += dy[i * cols + j];
    db[j] = (float)s;
}

extern "C" __global__ void relu(const float* x, float* y, u64 len) {
    GRID(i, len) y[i] = x[i] > 0.0f ? x[i] : 0.0f;
}

extern "C" __global__ void relu_backward(const float* y, const float* dy, float* dx, u64 len,
                                         int acc) {
    GRID(i, len) {
        float g = y[i] > 0.0f ? dy[i] : 0.0f;
        dx[i] = acc ? dx[i] + g : g;
    }
}

// Entry j of channel ch's m = rows·s values in a [rows, c, s] tensor.
#define AT(ch, j) ((((j) / s) * c + (ch)) * s + (j) % s)

// One block per channel: the batch mean and 1/sqrt(σ² + ε) (biased σ²) into saved, the
// running statistics moved by r ← (1 − m) r + m·(batch value).
extern "C" __global__ void norm_stats(const float* x, u64 rows, u64 c, u64 s, float* saved,
                                      float* running, float momentum, float eps) {
    u64 ch = blockIdx.x, m = rows * s;
    double sum = 0.0;
    for (u64 j = threadIdx.x; j < m; j += blockDim.x) sum += x[AT(ch, j)];
    double mean = block_sum(sum) / (double)m;
    double sq = 0.0;
    for (u64 j = threadIdx.x; j < m; j += blockDim.x) {
        double d = x[AT(ch, j)] - mean;
        sq += d * d;
    }
    double var = block_sum(sq) / (double)m;
    if (threadIdx.x == 0) {
        saved[ch] = (float)mean;
        saved[c + ch] = (float)(1.0 / sqrt(var + (double)eps));
        running[ch] = (1.0f - momentum) * running[ch] + momentum * (float)mean;
        running[c + ch] = (1.0f - momentum) * running[c + ch] + momentum * (float)var;
    }
}

// y = γ (x − mean)·inv + β (+ skip), then ReLU; stats holds mean then inv, or (is_var) the
// running mean then variance.
extern "C" __global__ void norm_apply(const float* x, const float* skip, float* y,
                                      const float* gb, const float* stats, u64 rows, u64 c,
                                      u64 s, int relu, int is_var, float eps) {
    GRID(i, rows * c * s) {
        u64 ch = (i / s) % c;
        float inv = is_var ? 1.0f / sqrtf(stats[c + ch] + eps) : stats[c + ch];
        float v = gb[ch] * (x[i] - stats[ch]) * inv + gb[c + ch];
        if (skip) v += skip[i];
        y[i] = relu && v < 0.0f ? 0.0f : v;
    }
}

// One block per channel: ∂γ = Σ g x̂, ∂β = Σ g, g = ∂y (masked by y > 0 with relu).
extern "C" __global__ void norm_grad_stats(const float* x, const float* y, const float* dy,
                                           const float* saved, u64 rows, u64 c, u64 s,
                                           int relu, float* grad) {
    u64 ch = blockIdx.x, m = rows * s;
    double mean = saved[ch], inv = saved[c + ch];
    double sg = 0.0, sgx = 0.0;
    for (u64 j = threadIdx.x; j < m; j += blockDim.x) {
        u64 at = AT(ch, j);
        double g = (!relu || y[at] > 0.0f) ? dy[at] : 0.0f;
        sg += g;
        sgx += g * (x[at] - mean) * inv;
    }
    sg = block_sum(sg);
    sgx = block_sum(sgx);
    if (threadIdx.x == 0) {
        grad[ch] = (float)sgx;
        grad[c + ch] = (float)sg;
    }
}

// ∂x (+)= γ·inv·(g − ∂β/m − x̂ ∂γ/m); ∂skip (+)= g when dskip is given.
extern "C" __global__ void norm_grad_input(const float* x, const float* y, const float* dy,
                                           const float* saved, const float* gamma,
                                           const float* grad, u64 rows, u64 c, u64 s,
                                           int relu, float* dx, int acc, float* dskip,
                                           int acc_skip) {
    float m = (float)(rows * s);
    GRID(i, rows * c * s) {
        u64 ch = (i / s) % c;
        float g = (!relu || y[i] > 0.0f) ? dy[i] : 0.0f;
        float inv = saved[c + ch];
        float xh = (x[i] - saved[ch]) * inv;
        float v = gamma[ch] * inv * (g - grad[c + ch] / m - xh * grad[ch] / m);
        dx[i] = acc ? dx[i] + v : v;
        if (dskip) dskip[i] = acc_skip ? dskip[i] + g : g;
    }
}

extern "C" __global__ void pool(const float* x, float* y, u64 planes, u64 s) {
    GRID(p, planes) {
        double sum = 0.0;
        for (u64 j = 0; j < s; ++j) sum += x[p * s + j];
        y[p] = (float)(sum / (double)s);
    }
}

extern "C" __global__ void pool_backward(const float* dy, float* dx, u64 planes, u64 s,
                                         int acc) {
    GRID(i, planes * s) {
        float v = dy[i / s] / (float)s;
        dx[i] = acc ? dx[i] + v : v;
    }
}

// One block: u = m ⊙ z + ι per row (in f64), the loss log Σ exp(u) − u_y and the gradient
// (softmax(u) − e_y) ⊙ m / rows; then, in a fixed order, the sums of the losses and of the rows
// whose largest z is their label's added to totals.
extern "C" __global__ void cross_entropy(const float* z, const unsigned* labels,
                                         const float* delta, const float* shift, int per_label,
                                         u64 rows, u64 k, float* dz, double* rowwise,
                                         double* totals) {
    for (u64 i = threadIdx.x; i < rows; i += blockDim.x) {
        const float* zr = z + i * k;
        unsigned y = labels[i];
#define MUL(c) ((double)(per_label ? delta[y] : delta[c]))
#define U(c) (MUL(c) * (double)zr[c] + (double)shift[c])
        double top = U(0);
        for (u64 c = 1; c < k; ++c) top = U(c) > top ? U(c) : top;
        double sum = 0.0;
        for (u64 c = 0; c < k; ++c) sum += exp(U(c) - top);
        rowwise[i] = top + log(sum) - U(y);
        u64 best = 0;
        for (u64 c = 0; c < k; ++c) {
            double p = exp(U(c) - top) / sum - (c == y ? 1.0 : 0.0);
            dz[i * k + c] = (float)(p * MUL(c) / (double)rows);
            if (zr[c] > zr[best]) best = c;
        }
        rowwise[rows + i] = best == y ? 1.0 : 0.0;
#undef U
#undef MUL
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        double l = 0.0, h = 0.0;
        for (u64 i = 0; i < rows; ++i) { l += rowwise[i]; h += rowwise[rows + i]; }
        totals[0] += l;
        totals[1] += h;
    }
}

extern "C" __global__ void sgd(float* w, const float* g, float* v, u64 len, float lr,
                               float mu, float wd) {
    GRID(i, len) {
        float u = mu * v[i] + g[i] + wd * w[i];
        v[i] = u;
        w[i] -= lr * u;
    }
}

// Register-tiled CPU kernels for the locally-connected layers (models/lc_native.py loads them).
//
// Why our own: no BLAS or engine has a locally-connected GEMM. A position's product is a
// (O x K)(K x N) GEMM with O = 16 in the ICLR nets, a shape MKL runs at ~40 GFLOP/s, and
// the gather of its K inputs costs as much again when done with copies or strided views
// (BENCHMARKS.md, "Training step cost on CPU"). Here each kernel keeps an output tile in
// vector registers across all kh*kw taps and reads the input in place, padding skipped.
//
// Layouts (all contiguous, row-major): activations (H, W, C, N), batch innermost; layer
// outputs (Ho, Wo, O, N) = (L, O, N); weights (L, O, K) with K ordered (kh, kw, C). The
// weight gradient reads the input as (H, N, W, C) (`xt`), so that one kernel row's kw*C
// inputs of one sample are contiguous, in the weight's own K order.
//
// Vectors are GCC/Clang vector extensions as wide as the target's registers (64 bytes with
// AVX-512, 32 with AVX/AVX2, 16 otherwise), and a tile holds TILE_VECTORS of them per row:
// 4 rows x TILE_VECTORS accumulators must fit the register file (32 registers with AVX-512,
// 16 with AVX2). A 64-byte vector on an AVX2 machine is two registers, so the AVX-512 tile
// there needs 32 accumulators and spills: measured 5-9x slower than PyTorch's kernels on an
// AVX2-only EPYC (BENCHMARKS.md, "LC kernels on AVX2"). Lanes run over the batch (forward,
// adjoint) or along K (weight gradient), never along a sum, so every output number is the
// same sum in the same order whatever the width: results do not depend on the CPU kind.
// Scalar tails cover sizes that are not a whole vector. Sums run in the tensor's dtype
// (float32 or float64), taps in (kh, kw, C) order.
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

namespace {

#if defined(__AVX512F__)
constexpr int VECTOR_BYTES = 64, TILE_VECTORS = 4;
#elif defined(__AVX__)
constexpr int VECTOR_BYTES = 32, TILE_VECTORS = 3;  // 12 accumulators + 3 loads + 1 broadcast = 16
#else
constexpr int VECTOR_BYTES = 16, TILE_VECTORS = 2;
#endif
typedef float vf __attribute__((vector_size(VECTOR_BYTES)));
typedef double vd __attribute__((vector_size(VECTOR_BYTES)));
template <typename T> struct Vec;
template <> struct Vec<float> { typedef vf type; };
template <> struct Vec<double> { typedef vd type; };

template <typename V> inline V load(const void* p) { V v; std::memcpy(&v, p, sizeof(V)); return v; }
template <typename V> inline void store(void* p, const V& v) { std::memcpy(p, &v, sizeof(V)); }

struct Geom {
  int64_t h, w, c, n, ho, wo, o, kh, kw, sh, sw, pt, pl;
  int64_t k() const { return kh * kw * c; }
};

// A persistent worker pool: creating threads per call cost 0.09-2.7 ms per call on the 2-core
// dev VM (2-32 threads), more than a small layer's whole work. Workers sleep on a condition
// variable and are woken per call; the calling thread takes parts too, so a call never
// waits for a slow wake-up (spinning workers measured no better, and on SMT siblings they
// take issue slots from the kernel). Never destroyed (no static destructor racing them at
// exit). After fork() the child has none of them: it starts its own pool. A call that finds
// the pool busy (another Python thread inside a kernel) runs serially rather than wait.
class Pool {
 public:
  static Pool& get() {
    static Pool* pool = new Pool();  // leaked on purpose, see above
    if (pool->owner_ != getpid()) pool = new Pool();  // forked: the parent's workers are not here
    return *pool;
  }

  // Runs part(i) for i in [0, parts); the calling thread takes parts too.
  template <typename F> void run(int parts, F& part) {
    std::unique_lock<std::mutex> busy(busy_, std::try_to_lock);
    if (parts <= 1 || !busy.owns_lock()) {
      for (int i = 0; i < parts; ++i) part(i);
      return;
    }
    grow(parts - 1);
    // One Job per call, shared with the workers that saw it: a worker late for a call only
    // ever touches that call's (by then exhausted) counters, never the next call's.
    auto job = std::make_shared<Job>();
    job->call = [](void* f, int i) { (*static_cast<F*>(f))(i); };
    job->arg = &part;
    job->parts = parts;
    {
      std::lock_guard<std::mutex> lock(m_);
      std::atomic_store(&current_, job);
      generation_.fetch_add(1);
    }
    wake_.notify_all();
    job->work();
    while (job->done.load() < parts) std::this_thread::yield();
  }

 private:
  struct Job {
    void (*call)(void*, int) = nullptr;
    void* arg = nullptr;
    int parts = 0;
    std::atomic<int> next{0}, done{0};
    void work() {
      for (int i; (i = next.fetch_add(1)) < parts;) {
        call(arg, i);
        done.fetch_add(1);
      }
    }
  };

  Pool() : owner_(getpid()) {}

  void grow(int workers) {
    for (; started_ < workers; ++started_) std::thread([this] { loop(); }).detach();
  }

  void loop() {
    uint64_t seen = 0;
    for (;;) {
      {
        std::unique_lock<std::mutex> lock(m_);
        wake_.wait(lock, [&] { return generation_.load() != seen; });
        seen = generation_.load();
      }
      if (auto job = std::atomic_load(&current_)) job->work();
    }
  }

  const pid_t owner_;
  std::mutex busy_, m_;
  std::condition_variable wake_;
  std::atomic<uint64_t> generation_{0};
  std::shared_ptr<Job> current_;
  int started_ = 0;
};

// Runs body(begin, end) over [0, count) split into `threads` contiguous ranges.
template <typename F> void parallel(int64_t count, int threads, F body) {
  const int parts = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, count)));
  auto part = [&](int t) { body(count * t / parts, count * (t + 1) / parts); };
  Pool::get().run(parts, part);
}

// ---- forward: out[p, o, n] = bias[p, o] + sum_k w[p, o, k] x[pixel(p, k), c, n] ----
// Tile: RO outputs x RV vectors of the batch; per input (tap, c) RV loads, RO broadcasts,
// RO*RV FMAs. `V` = T with RV = 1 is the scalar tail over n.
template <typename T, typename V, int RO, int RV>
void fwd_tile(const T* x, const T* wp, const T* bias, T* outp, const Geom& g, int64_t i, int64_t j,
              int64_t o0, int64_t n0) {
  constexpr int64_t lanes = sizeof(V) / sizeof(T);
  const int64_t K = g.k(), N = g.n, C = g.c;
  V acc[RO][RV];
  for (int r = 0; r < RO; ++r)
    for (int v = 0; v < RV; ++v) acc[r][v] = (V){} + (bias ? bias[o0 + r] : T(0));
  for (int64_t a = 0; a < g.kh; ++a) {
    const int64_t row = i * g.sh + a - g.pt;
    if (row < 0 || row >= g.h) continue;
    for (int64_t b = 0; b < g.kw; ++b) {
      const int64_t col = j * g.sw + b - g.pl;
      if (col < 0 || col >= g.w) continue;
      const T* xs = x + (row * g.w + col) * C * N + n0;
      const T* ws = wp + o0 * K + (a * g.kw + b) * C;
      for (int64_t c = 0; c < C; ++c) {
        V xv[RV];
        for (int v = 0; v < RV; ++v) xv[v] = load<V>(xs + c * N + v * lanes);
        for (int r = 0; r < RO; ++r) {
          const T s = ws[r * K + c];
          for (int v = 0; v < RV; ++v) acc[r][v] += s * xv[v];
        }
      }
    }
  }
  for (int r = 0; r < RO; ++r)
    for (int v = 0; v < RV; ++v) store<V>(outp + (o0 + r) * N + n0 + v * lanes, acc[r][v]);
}

template <typename T, typename V, int RV>
void fwd_otiles(const T* x, const T* wp, const T* bias, T* outp, const Geom& g, int64_t i, int64_t j, int64_t n0) {
  int64_t o0 = 0;
  for (; o0 + 4 <= g.o; o0 += 4) fwd_tile<T, V, 4, RV>(x, wp, bias, outp, g, i, j, o0, n0);
  for (; o0 < g.o; ++o0) fwd_tile<T, V, 1, RV>(x, wp, bias, outp, g, i, j, o0, n0);
}

template <typename T>
void forward(const T* x, const T* w, const T* bias, T* out, const Geom& g, int threads) {
  typedef typename Vec<T>::type V;
  constexpr int64_t lanes = sizeof(V) / sizeof(T);
  parallel(g.ho * g.wo, threads, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t i = p / g.wo, j = p % g.wo;
      const T* wp = w + p * g.o * g.k();
      const T* bp = bias ? bias + p * g.o : nullptr;
      T* op = out + p * g.o * g.n;
      int64_t n0 = 0;
      for (; n0 + TILE_VECTORS * lanes <= g.n; n0 += TILE_VECTORS * lanes)
        fwd_otiles<T, V, TILE_VECTORS>(x, wp, bp, op, g, i, j, n0);
      for (; n0 + lanes <= g.n; n0 += lanes) fwd_otiles<T, V, 1>(x, wp, bp, op, g, i, j, n0);
      for (; n0 < g.n; ++n0) fwd_otiles<T, T, 1>(x, wp, bp, op, g, i, j, n0);
    }
  });
}

// ---- adjoint: out[pixel, c, n] (+)= bias[pixel, c] + sum over (p, tap) reading it, sum_o w[p, o, tap, c] y[p, o, n] ----
// Gathered per input pixel, so every output number is written once (no read-modify-write
// per tap). Tile: RC channels x RV vectors; per (tap, o) RV loads, RC broadcasts.
template <typename T, typename V, int RC, int RV>
void adj_tile(const T* w, const T* y, const T* biasp, T* outp, const Geom& g, int64_t row, int64_t col, int64_t c0,
              int64_t n0, bool accumulate) {
  constexpr int64_t lanes = sizeof(V) / sizeof(T);
  const int64_t K = g.k(), N = g.n, C = g.c, O = g.o;
  V acc[RC][RV];
  for (int r = 0; r < RC; ++r)
    for (int v = 0; v < RV; ++v) {
      acc[r][v] = accumulate ? load<V>(outp + (c0 + r) * N + n0 + v * lanes) : (V){};
      if (biasp) acc[r][v] += biasp[c0 + r];
    }
  for (int64_t a = 0; a < g.kh; ++a) {
    const int64_t ti = row + g.pt - a;  // = i * sh
    if (ti < 0 || ti % g.sh) continue;
    const int64_t i = ti / g.sh;
    if (i >= g.ho) continue;
    for (int64_t b = 0; b < g.kw; ++b) {
      const int64_t tj = col + g.pl - b;
      if (tj < 0 || tj % g.sw) continue;
      const int64_t j = tj / g.sw;
      if (j >= g.wo) continue;
      const int64_t p = i * g.wo + j;
      const T* ws = w + p * O * K + (a * g.kw + b) * C + c0;
      const T* ys = y + p * O * N + n0;
      for (int64_t o = 0; o < O; ++o) {
        V yv[RV];
        for (int v = 0; v < RV; ++v) yv[v] = load<V>(ys + o * N + v * lanes);
        for (int r = 0; r < RC; ++r) {
          const T s = ws[o * K + r];
          for (int v = 0; v < RV; ++v) acc[r][v] += s * yv[v];
        }
      }
    }
  }
  for (int r = 0; r < RC; ++r)
    for (int v = 0; v < RV; ++v) store<V>(outp + (c0 + r) * N + n0 + v * lanes, acc[r][v]);
}

template <typename T, typename V, int RV>
void adj_ctiles(const T* w, const T* y, const T* bp, T* outp, const Geom& g, int64_t row, int64_t col, int64_t n0,
                bool acc) {
  int64_t c0 = 0;
  for (; c0 + 4 <= g.c; c0 += 4) adj_tile<T, V, 4, RV>(w, y, bp, outp, g, row, col, c0, n0, acc);
  for (; c0 < g.c; ++c0) adj_tile<T, V, 1, RV>(w, y, bp, outp, g, row, col, c0, n0, acc);
}

template <typename T>
void adjoint(const T* w, const T* y, const T* bias, T* out, const Geom& g, bool accumulate, int threads) {
  typedef typename Vec<T>::type V;
  constexpr int64_t lanes = sizeof(V) / sizeof(T);
  parallel(g.h * g.w, threads, [&](int64_t q0, int64_t q1) {
    for (int64_t q = q0; q < q1; ++q) {
      const int64_t row = q / g.w, col = q % g.w;
      T* op = out + q * g.c * g.n;
      const T* bp = bias ? bias + q * g.c : nullptr;
      int64_t n0 = 0;
      for (; n0 + TILE_VECTORS * lanes <= g.n; n0 += TILE_VECTORS * lanes)
        adj_ctiles<T, V, TILE_VECTORS>(w, y, bp, op, g, row, col, n0, accumulate);
      for (; n0 + lanes <= g.n; n0 += lanes) adj_ctiles<T, V, 1>(w, y, bp, op, g, row, col, n0, accumulate);
      for (; n0 < g.n; ++n0) adj_ctiles<T, T, 1>(w, y, bp, op, g, row, col, n0, accumulate);
    }
  });
}

// ---- weight gradient: gw[p, o, k] = sum_n grad[p, o, n] x[pixel(p, k), c, n] ----
// Per position and kernel row, the valid taps' kw'*C inputs of sample n are one contiguous
// run of xt (H, N, W, C), in K order. Tile: RO outputs x RV vectors of that run, the sum
// over n kept in registers; per n RV loads and RO broadcasts. Taps reading padding get 0.
template <typename T, typename V, int RO, int RV>
void wg_tile(const T* grad, const T* xt, T* gwp, const Geom& g, int64_t p, int64_t row, int64_t col0,
             int64_t o0, int64_t k0, int64_t e0) {
  // k0: offset of this tile inside the position's K; e0: offset inside the xt run.
  constexpr int64_t lanes = sizeof(V) / sizeof(T);
  const int64_t N = g.n, WC = g.w * g.c, K = g.k();
  V acc[RO][RV];
  for (int r = 0; r < RO; ++r)
    for (int v = 0; v < RV; ++v) acc[r][v] = (V){};
  const T* gs = grad + (p * g.o + o0) * N;
  const T* xs = xt + row * N * WC + col0 * g.c + e0;
  for (int64_t n = 0; n < N; ++n) {
    V xv[RV];
    for (int v = 0; v < RV; ++v) xv[v] = load<V>(xs + n * WC + v * lanes);
    for (int r = 0; r < RO; ++r) {
      const T s = gs[r * N + n];
      for (int v = 0; v < RV; ++v) acc[r][v] += s * xv[v];
    }
  }
  for (int r = 0; r < RO; ++r)
    for (int v = 0; v < RV; ++v) store<V>(gwp + (o0 + r) * K + k0 + v * lanes, acc[r][v]);
}

template <typename T, typename V, int RO>
void wg_run(const T* grad, const T* xt, T* gwp, const Geom& g, int64_t p, int64_t row, int64_t col0,
            int64_t o0, int64_t k0, int64_t len) {
  constexpr int64_t lanes = sizeof(V) / sizeof(T);
  int64_t e = 0;
  for (; e + TILE_VECTORS * lanes <= len; e += TILE_VECTORS * lanes)
    wg_tile<T, V, RO, TILE_VECTORS>(grad, xt, gwp, g, p, row, col0, o0, k0 + e, e);
  for (; e + lanes <= len; e += lanes) wg_tile<T, V, RO, 1>(grad, xt, gwp, g, p, row, col0, o0, k0 + e, e);
  for (; e < len; ++e) wg_tile<T, T, RO, 1>(grad, xt, gwp, g, p, row, col0, o0, k0 + e, e);
}

template <typename T>
void weight_grad(const T* grad, const T* xt, T* gw, const Geom& g, int threads) {
  typedef typename Vec<T>::type V;
  const int64_t K = g.k(), C = g.c;
  parallel(g.ho * g.wo, threads, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t i = p / g.wo, j = p % g.wo;
      T* gwp = gw + p * g.o * K;
      for (int64_t a = 0; a < g.kh; ++a) {
        const int64_t row = i * g.sh + a - g.pt;
        // valid taps b in [b0, b1): the kernel row's columns that fall inside the input
        const int64_t c_first = j * g.sw - g.pl;
        const int64_t b0 = std::max<int64_t>(0, -c_first), b1 = std::min<int64_t>(g.kw, g.w - c_first);
        const bool inside = row >= 0 && row < g.h && b0 < b1;
        for (int64_t o = 0; o < g.o; ++o) {  // zero the taps that read padding
          T* z = gwp + o * K + a * g.kw * C;
          if (!inside) { std::fill(z, z + g.kw * C, T(0)); continue; }
          std::fill(z, z + b0 * C, T(0));
          std::fill(z + b1 * C, z + g.kw * C, T(0));
        }
        if (!inside) continue;
        const int64_t k0 = (a * g.kw + b0) * C, len = (b1 - b0) * C, col0 = c_first + b0;
        int64_t o0 = 0;
        for (; o0 + 4 <= g.o; o0 += 4) wg_run<T, V, 4>(grad, xt, gwp, g, p, row, col0, o0, k0, len);
        for (; o0 < g.o; ++o0) wg_run<T, V, 1>(grad, xt, gwp, g, p, row, col0, o0, k0, len);
      }
    }
  });
}

// ---- (H, W, C, N) -> (H, N, W, C), the weight gradient's input: per row an (M = W*C) x N
// -> N x M transpose, lanes x lanes blocks in registers (log2(lanes) stages of two-vector
// shuffles), scalar at the edges. Exact: a copy. PyTorch's permute copy is a strided
// element-by-element walk here (~1-2 ms for iclr_mnist_lc's 14x14x32x128).
template <typename V, int L, int H, size_t... J>
inline V mix_lo(V a, V b, std::index_sequence<J...>) {
  return __builtin_shufflevector(a, b, ((J & H) ? (L + J - H) : J)...);
}
template <typename V, int L, int H, size_t... J>
inline V mix_hi(V a, V b, std::index_sequence<J...>) {
  return __builtin_shufflevector(a, b, ((J & H) ? (L + J) : (J + H))...);
}
template <typename V, int L, int H>
inline void stage(V* r) {
  if constexpr (H < L) {
    for (int i = 0; i < L; ++i)
      if (!(i & H)) {
        const V a = r[i], b = r[i + H];
        r[i] = mix_lo<V, L, H>(a, b, std::make_index_sequence<L>{});
        r[i + H] = mix_hi<V, L, H>(a, b, std::make_index_sequence<L>{});
      }
    stage<V, L, 2 * H>(r);
  }
}

template <typename T>
void to_hnwc(const T* x, T* xt, int64_t h, int64_t m, int64_t n, int threads) {
  typedef typename Vec<T>::type V;
  constexpr int L = sizeof(V) / sizeof(T);
  parallel(h, threads, [&](int64_t r0, int64_t r1) {
    for (int64_t row = r0; row < r1; ++row) {
      const T* src = x + row * m * n;  // (m, n)
      T* dst = xt + row * m * n;       // (n, m)
      const int64_t mb = m - m % L, nb = n - n % L;
      for (int64_t i0 = 0; i0 < mb; i0 += L)
        for (int64_t j0 = 0; j0 < nb; j0 += L) {
          V r[L];
          for (int i = 0; i < L; ++i) r[i] = load<V>(src + (i0 + i) * n + j0);
          stage<V, L, 1>(r);
          for (int j = 0; j < L; ++j) store<V>(dst + (j0 + j) * m + i0, r[j]);
        }
      for (int64_t i = 0; i < m; ++i)  // the edges: the last n % L columns, the last m % L rows
        for (int64_t j = (i < mb ? nb : 0); j < n; ++j) dst[j * m + i] = src[i * n + j];
    }
  });
}

Geom geom(const int64_t* d) { return Geom{d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7], d[8], d[9], d[10], d[11], d[12]}; }

}  // namespace

// C ABI for ctypes. dims: h, w, c, n, ho, wo, o, kh, kw, sh, sw, pt, pl.
extern "C" {
void lc_forward_f32(const float* x, const float* w, const float* bias, float* out, const int64_t* d, int t) {
  forward<float>(x, w, bias, out, geom(d), t);
}
void lc_forward_f64(const double* x, const double* w, const double* bias, double* out, const int64_t* d, int t) {
  forward<double>(x, w, bias, out, geom(d), t);
}
void lc_adjoint_f32(const float* w, const float* y, const float* bias, float* out, const int64_t* d, int acc,
                    int t) {
  adjoint<float>(w, y, bias, out, geom(d), acc != 0, t);
}
void lc_adjoint_f64(const double* w, const double* y, const double* bias, double* out, const int64_t* d, int acc,
                    int t) {
  adjoint<double>(w, y, bias, out, geom(d), acc != 0, t);
}
void lc_to_hnwc_f32(const float* x, float* xt, int64_t h, int64_t m, int64_t n, int t) {
  to_hnwc<float>(x, xt, h, m, n, t);
}
void lc_to_hnwc_f64(const double* x, double* xt, int64_t h, int64_t m, int64_t n, int t) {
  to_hnwc<double>(x, xt, h, m, n, t);
}
void lc_weight_grad_f32(const float* grad, const float* xt, float* gw, const int64_t* d, int t) {
  weight_grad<float>(grad, xt, gw, geom(d), t);
}
void lc_weight_grad_f64(const double* grad, const double* xt, double* gw, const int64_t* d, int t) {
  weight_grad<double>(grad, xt, gw, geom(d), t);
}
}

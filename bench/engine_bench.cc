// Engine benchmarks (Google Benchmark): the workloads bench/compare_torch.py runs against PyTorch.
//
//   build/bin/dropnet-bench --benchmark_filter=Mlp
//
// The Fashion-MNIST MLP of the reference experiments (784-512-512-10, dropout 0.5 after each
// hidden ReLU, Adam, batch 128) trained, evaluated at batch 1 and 256, and sampled by the
// Monte-Carlo estimator (T = 100 for one input); the CNN of the convolution experiment trained at
// batch 128; and the GEMM shapes of those networks on each available kernel. Data: the first rows
// of Fashion-MNIST from DROPNET_DATA_DIR (default /usr/share/datasets/fashion-mnist), or uniform
// noise when it is absent. DROPNET_BENCH_THREADS sets the thread count (default 2).
#include <benchmark/benchmark.h>
#include <dlfcn.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <cstdlib>
#include <filesystem>
#include <random>
#include <string>

#include "server/engine/gemm.h"
#include "server/engine/mc.h"
#include "server/engine/network.h"
#include "server/engine/thread_pool.h"
#include "server/engine/trainer.h"

namespace dropnet::engine {
namespace {

int Threads() {
  const char* t = std::getenv("DROPNET_BENCH_THREADS");
  return t ? std::max(1, std::atoi(t)) : 2;
}

// The first `rows` training rows of Fashion-MNIST, or seeded noise of the same shape.
const Dataset& Data() {
  static const Dataset data = [] {
    const char* env = std::getenv("DROPNET_DATA_DIR");
    const std::filesystem::path dir = env ? env : "/usr/share/datasets/fashion-mnist";
    constexpr int64_t kRows = 12800;
    Dataset d;
    if (std::filesystem::exists(dir / "train-images-idx3-ubyte.gz")) {
      Dataset all = LoadIdx((dir / "train-images-idx3-ubyte.gz").string(),
                            (dir / "train-labels-idx1-ubyte.gz").string());
      std::vector<int64_t> rows(kRows);
      for (int64_t i = 0; i < kRows; ++i) rows[i] = i;
      d = Subset(all, rows);
    } else {
      std::mt19937 gen(1);
      std::uniform_real_distribution<float> u(0, 1);
      d.x.resize(kRows, 784);
      for (int64_t i = 0; i < d.x.size(); ++i) d.x.data()[i] = u(gen);
      d.y.resize(kRows, 1);
      for (int64_t i = 0; i < kRows; ++i) d.y(i, 0) = static_cast<float>(i % 10);
      d.input_shape = Shape{{1, 28, 28}};
      d.num_classes = 10;
    }
    return d;
  }();
  return data;
}

LayerConfig Layer(std::string type, int units = 0, double rate = 0) {
  LayerConfig c;
  c.type = std::move(type);
  c.units = units;
  c.rate = rate;
  c.init = "glorot_uniform";
  return c;
}

NetworkSpec MlpSpec() {
  NetworkSpec spec;
  spec.input = Shape{{1, 28, 28}};
  spec.seed = 1;
  spec.layers = {Layer("flatten"),         Layer("dense", 512), Layer("relu"),
                 Layer("dropout", 0, 0.5), Layer("dense", 512), Layer("relu"),
                 Layer("dropout", 0, 0.5), Layer("dense", 10)};
  return spec;
}

// conv32-conv64 (3x3, ReLU), SpatialDropout2D 0.1, max-pool 2, dense 128 (dropout 0.5), dense 10.
NetworkSpec CnnSpec() {
  NetworkSpec spec;
  spec.input = Shape{{1, 28, 28}};
  spec.seed = 1;
  auto conv = [](int filters) {
    LayerConfig c = Layer("conv2d");
    c.filters = filters;
    c.kernel_size = 3;
    c.init = "he_uniform";
    return c;
  };
  LayerConfig pool = Layer("max_pool2d");
  pool.pool_size = 2;
  spec.layers = {conv(32),
                 Layer("relu"),
                 conv(64),
                 Layer("relu"),
                 Layer("spatial_dropout2d", 0, 0.1),
                 pool,
                 Layer("flatten"),
                 Layer("dense", 128),
                 Layer("relu"),
                 Layer("dropout", 0, 0.5),
                 Layer("dense", 10)};
  return spec;
}

// One epoch over `rows` rows per iteration, through the trainer the service uses.
void Train(benchmark::State& state, const NetworkSpec& spec, int64_t rows) {
  const Dataset data = Subset(Data(), [&] {
    std::vector<int64_t> r(rows);
    for (int64_t i = 0; i < rows; ++i) r[i] = i;
    return r;
  }());
  Network net(spec);
  TrainOptions o;
  o.epochs = 1;
  o.batch_size = 128;
  o.threads = Threads();
  for (auto _ : state) {
    o.seed++;
    Train(&net, Task::kClassification, LossKind::kCrossEntropy, data, o);
  }
  state.counters["samples_per_second"] = benchmark::Counter(
      static_cast<double>(rows) * state.iterations(), benchmark::Counter::kIsRate);
}

void BM_MlpTrain(benchmark::State& state) { Train(state, MlpSpec(), 12800); }
BENCHMARK(BM_MlpTrain)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(3);

void BM_CnnTrain(benchmark::State& state) { Train(state, CnnSpec(), 1280); }
BENCHMARK(BM_CnnTrain)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(3);

// Eval-mode class probabilities for a batch of state.range(0) rows, as Predict computes them.
void BM_MlpEval(benchmark::State& state) {
  const Network net(MlpSpec());
  const Matrix x = Data().x.topRows(state.range(0));
  const int threads = Threads();
  for (auto _ : state) {
    Matrix p = PredictEval(net, Task::kClassification, LossKind::kCrossEntropy, x, threads);
    benchmark::DoNotOptimize(p.data());
  }
  state.counters["samples_per_second"] = benchmark::Counter(
      static_cast<double>(x.rows()) * state.iterations(), benchmark::Counter::kIsRate);
}
BENCHMARK(BM_MlpEval)->Arg(1)->Arg(256)->UseRealTime()->Unit(benchmark::kMicrosecond)->MinTime(2);

// Monte-Carlo dropout over T = state.range(0) samples for one input: mean, std, entropies, BALD.
void BM_MlpMonteCarlo(benchmark::State& state) {
  const Network net(MlpSpec());
  const Matrix x = Data().x.topRows(1);
  McOptions o;
  o.samples = static_cast<int>(state.range(0));
  o.threads = Threads();
  for (auto _ : state) {
    o.seed++;
    McResult r = MonteCarloPredict(net, Task::kClassification, LossKind::kCrossEntropy, x, o);
    benchmark::DoNotOptimize(r.mean.data());
  }
}
BENCHMARK(BM_MlpMonteCarlo)->Arg(100)->UseRealTime()->Unit(benchmark::kMicrosecond)->MinTime(2);

// Single-threaded C = A * B for the (M, N, K) of the networks above: the engine's kernel (AVX-512
// when the CPU has it), Eigen's own product, and OpenBLAS when its library can be loaded.
using CblasSgemm = void (*)(int, int, int, int, int, int, float, const float*, int, const float*,
                            int, float, float*, int);
struct OpenBlasLib {
  CblasSgemm sgemm = nullptr;
  std::string core;  // the kernel set OpenBLAS chose for this CPU (OPENBLAS_CORETYPE overrides it)
};
const OpenBlasLib& LoadOpenBlas() {
  static const OpenBlasLib lib = [] {
    OpenBlasLib l;
    for (const char* name : {"libopenblas.so.0", "libopenblas.so"}) {
      if (void* h = dlopen(name, RTLD_NOW | RTLD_LOCAL)) {
        if (auto set = reinterpret_cast<void (*)(int)>(dlsym(h, "openblas_set_num_threads")))
          set(1);
        if (auto core = reinterpret_cast<char* (*)()>(dlsym(h, "openblas_get_corename")))
          l.core = core();
        l.sgemm = reinterpret_cast<CblasSgemm>(dlsym(h, "cblas_sgemm"));
        break;
      }
    }
    return l;
  }();
  return lib;
}
CblasSgemm OpenBlas() { return LoadOpenBlas().sgemm; }

void GemmArgs(benchmark::internal::Benchmark* b) {
  b->Args({128, 512, 784})     // MLP layer 1, batch 128
      ->Args({128, 512, 512})  // MLP layer 2
      ->Args({100, 512, 512})  // MLP layer 2 under MC, T = 100
      ->Args({256, 512, 784})  // MLP layer 1, batch 256
      ->Args({256, 512, 512})  // MLP layer 2, batch 256
      ->Args({1, 512, 784})    // batch 1
      ->Args({676, 64, 288});  // CNN conv2 on one image (26x26 outputs, 32x3x3 patch)
}

// kTransB: the backward pass's dX = dY * W^T, W stored k x n as the layer holds it (n x k here:
// op(B) = B^T).
template <int kKernel, bool kTransB = false>
void BM_Gemm(benchmark::State& state) {
  const int64_t m = state.range(0), n = state.range(1), k = state.range(2);
  const int64_t ldb = kTransB ? k : n;
  Matrix a = Matrix::Random(m, k), b = kTransB ? Matrix::Random(n, k) : Matrix::Random(k, n);
  Matrix c(m, n);
  if (kKernel == 0 && !FastGemmAvailable()) return state.SkipWithError("no AVX-512 on this CPU");
  if (kKernel == 2 && !OpenBlas()) return state.SkipWithError("libopenblas not found");
  for (auto _ : state) {
    if (kKernel == 0) {
      Gemm(false, kTransB, m, n, k, 1.0f, a.data(), k, b.data(), ldb, 0.0f, c.data(), n);
    } else if (kKernel == 1) {
      if (kTransB)
        c.noalias() = a * b.transpose();
      else
        c.noalias() = a * b;
    } else {
      OpenBlas()(101, 111, kTransB ? 112 : 111, m, n, k, 1.0f, a.data(), k, b.data(), ldb, 0.0f,
                 c.data(), n);
    }
    benchmark::DoNotOptimize(c.data());
  }
  if (kKernel == 2) state.SetLabel(LoadOpenBlas().core);
  state.counters["GFLOPS"] =
      benchmark::Counter(2.0 * m * n * k * state.iterations() / 1e9, benchmark::Counter::kIsRate);
}
BENCHMARK(BM_Gemm<0>)->Name("BM_Gemm/engine")->Apply(GemmArgs);
BENCHMARK(BM_Gemm<1>)->Name("BM_Gemm/eigen")->Apply(GemmArgs);
BENCHMARK(BM_Gemm<2>)->Name("BM_Gemm/openblas")->Apply(GemmArgs);

// The transposed right factor of the MLP's backward pass: dX of layer 2 and of the 10-class head
// at batch 128.
void GemmTransposedArgs(benchmark::internal::Benchmark* b) {
  b->Args({128, 512, 512})->Args({128, 512, 10});
}
BENCHMARK(BM_Gemm<0, true>)->Name("BM_GemmTransB/engine")->Apply(GemmTransposedArgs);
BENCHMARK(BM_Gemm<2, true>)->Name("BM_GemmTransB/openblas")->Apply(GemmTransposedArgs);

// The core's multiply-add peak, the ceiling of every product above: 24 independent chains of
// 512-bit FMAs on registers (more than the FMA latency times the FMA ports), no memory. With
// ->Threads(2) each thread runs its own loop and GFLOPS is their sum.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
__attribute__((target("avx512f"))) float FmaLoop(int64_t iterations) {
  constexpr int kChains = 24;
  __m512 acc[kChains];
#pragma GCC unroll 24
  for (int i = 0; i < kChains; ++i) acc[i] = _mm512_set1_ps(0.001f * static_cast<float>(i));
  const __m512 x = _mm512_set1_ps(0.999f), y = _mm512_set1_ps(0.0001f);
  for (int64_t it = 0; it < iterations; ++it) {
#pragma GCC unroll 24  // the chains in registers
    for (int i = 0; i < kChains; ++i) acc[i] = _mm512_fmadd_ps(acc[i], x, y);
  }
  __m512 sum = acc[0];
  for (int i = 1; i < kChains; ++i) sum = _mm512_add_ps(sum, acc[i]);
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, sum);
  float total = 0.0f;
  for (float lane : lanes) total += lane;
  return total;
}

void BM_FmaPeak(benchmark::State& state) {
  if (!FastGemmAvailable()) return state.SkipWithError("no AVX-512 on this CPU");
  constexpr int64_t kIterations = 1 << 16;
  for (auto _ : state) {
    int64_t iterations = kIterations;
    benchmark::DoNotOptimize(iterations);  // not hoisted out of the timed loop
    benchmark::DoNotOptimize(FmaLoop(iterations));
  }
  state.counters["GFLOPS"] = benchmark::Counter(
      2.0 * 16 * 24 * kIterations * state.iterations() / 1e9, benchmark::Counter::kIsRate);
}
BENCHMARK(BM_FmaPeak)->Threads(1)->Threads(2)->UseRealTime();
#endif

}  // namespace
}  // namespace dropnet::engine

int main(int argc, char** argv) {
  dropnet::engine::TuneAllocatorForTraining();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}

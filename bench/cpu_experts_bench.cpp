//===- cpu_experts_bench.cpp - moert CPU MoE layer vs OpenBLAS loop -------===//
//
// Times one MoE layer (router + SwiGLU expert group) of the runtime's CPU
// kernels against the CPU peer of shared/PERFORMANCE.md: the per-expert loop
// a C++ user writes by hand (gather the expert's tokens, cblas_sgemm for gate
// and up, activation, cblas_sgemm for down, scatter-add the weighted rows).
// Both run single-threaded, interleaved in one process, on the cpu-small shape
// (d=512 f=1024 E=8 k=2) at T = 1, 64, 512, each with warm caches (the same
// layer called again) and cold ones (a 64 MiB buffer written before each call,
// as in a multi-layer model whose other layers evict this one's weights).
// On a CPU with AVX-512 the runtime's GEMM tiles of several rows use it; the
// same layer with them forced onto 8-lane AVX2 tiles (the same bits) is
// timed too, interleaved with the others ("moert AVX2").
// Prints a Markdown table and writes JSON to --json PATH.
//
// The peer's buffers are allocated outside the timed region; the runtime's
// kernels allocate their scratch on every call, so the comparison favours the
// peer.
//
//===----------------------------------------------------------------------===//

#include "CpuGemm.h"
#include "moert/CpuKernels.h"

#include <cblas.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

struct Options {
  std::string jsonPath;
  std::string commit;
  int reps = 9;
  std::vector<int64_t> tokenCounts = {1, 64, 512};
};

/// One layer's weights in the contract's layout.
struct Layer {
  int64_t d, f, numExperts, topK;
  std::vector<float> router; // [E, d]
  std::vector<float> gate;   // [E, f, d]
  std::vector<float> up;     // [E, f, d]
  std::vector<float> down;   // [E, d, f]
};

std::vector<float> randomVector(size_t n, float scale, std::mt19937 &rng) {
  std::uniform_real_distribution<float> dist(-scale, scale);
  std::vector<float> v(n);
  for (float &value : v)
    value = dist(rng);
  return v;
}

Layer makeLayer(int64_t d, int64_t f, int64_t numExperts, int64_t topK,
                std::mt19937 &rng) {
  float inD = 1.0f / std::sqrt(float(d)), inF = 1.0f / std::sqrt(float(f));
  return {d,
          f,
          numExperts,
          topK,
          randomVector(numExperts * d, inD, rng),
          randomVector(numExperts * f * d, inD, rng),
          randomVector(numExperts * f * d, inD, rng),
          randomVector(numExperts * d * f, inF, rng)};
}

/// The runtime's layer: route, then the expert group.
struct MoertLayer {
  const Layer &layer;
  int64_t numTokens;
  std::vector<int32_t> ids;
  std::vector<float> gates;

  MoertLayer(const Layer &layer, int64_t numTokens)
      : layer(layer), numTokens(numTokens), ids(numTokens * layer.topK),
        gates(numTokens * layer.topK) {}

  void run(const float *x, float *out) {
    moert::cpu::MoEShape shape{numTokens, layer.d, layer.f, layer.numExperts,
                               layer.topK};
    moert::cpu::route(x, layer.router.data(), ids.data(), gates.data(), shape,
                      moert::cpu::Scoring::Softmax, /*normalize=*/false,
                      /*scaling=*/1.0f, /*numThreads=*/1);
    moert::cpu::experts(x, ids.data(), gates.data(), layer.gate.data(),
                        layer.up.data(), layer.down.data(), out, shape,
                        moert::cpu::Activation::Silu, /*numThreads=*/1);
  }
};

/// The peer: a straightforward per-expert loop over cblas_sgemm.
struct BlasLayer {
  const Layer &layer;
  int64_t numTokens;
  std::vector<float> logits, a, g, u, y, gates;
  std::vector<int32_t> ids;
  std::vector<int64_t> tokens, slots;

  BlasLayer(const Layer &layer, int64_t numTokens)
      : layer(layer), numTokens(numTokens),
        logits(numTokens * layer.numExperts), a(numTokens * layer.d),
        g(numTokens * layer.f), u(numTokens * layer.f), y(numTokens * layer.d),
        gates(numTokens * layer.topK), ids(numTokens * layer.topK),
        tokens(numTokens), slots(numTokens) {}

  void route(const float *x) {
    int64_t numExperts = layer.numExperts, k = layer.topK;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, numTokens, numExperts,
                layer.d, 1.0f, x, layer.d, layer.router.data(), layer.d, 0.0f,
                logits.data(), numExperts);
    for (int64_t t = 0; t < numTokens; ++t) {
      float *p = logits.data() + t * numExperts;
      float maxLogit = *std::max_element(p, p + numExperts);
      float sum = 0.0f;
      for (int64_t e = 0; e < numExperts; ++e)
        sum += p[e] = std::exp(p[e] - maxLogit);
      for (int64_t e = 0; e < numExperts; ++e)
        p[e] /= sum;
      std::vector<int64_t> order(numExperts);
      for (int64_t e = 0; e < numExperts; ++e)
        order[e] = e;
      std::partial_sort(order.begin(), order.begin() + k, order.end(),
                        [p](int64_t l, int64_t r) {
                          return p[l] > p[r] || (p[l] == p[r] && l < r);
                        });
      for (int64_t j = 0; j < k; ++j) {
        ids[t * k + j] = int32_t(order[j]);
        gates[t * k + j] = p[order[j]];
      }
    }
  }

  void run(const float *x, float *out) {
    int64_t d = layer.d, f = layer.f, k = layer.topK;
    route(x);
    std::fill(out, out + numTokens * d, 0.0f);
    for (int64_t e = 0; e < layer.numExperts; ++e) {
      int64_t n = 0;
      for (int64_t t = 0; t < numTokens; ++t)
        for (int64_t j = 0; j < k; ++j)
          if (ids[t * k + j] == e) {
            std::memcpy(a.data() + n * d, x + t * d, d * sizeof(float));
            tokens[n] = t;
            slots[n++] = j;
          }
      if (n == 0)
        continue;
      const float *gateW = layer.gate.data() + e * f * d;
      const float *upW = layer.up.data() + e * f * d;
      const float *downW = layer.down.data() + e * d * f;
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, f, d, 1.0f,
                  a.data(), d, gateW, d, 0.0f, g.data(), f);
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, f, d, 1.0f,
                  a.data(), d, upW, d, 0.0f, u.data(), f);
      for (int64_t i = 0; i < n * f; ++i)
        g[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, d, f, 1.0f,
                  g.data(), f, downW, f, 0.0f, y.data(), d);
      for (int64_t r = 0; r < n; ++r)
        cblas_saxpy(d, gates[tokens[r] * k + slots[r]], y.data() + r * d, 1,
                    out + tokens[r] * d, 1);
    }
  }
};

double seconds(Clock::duration duration) {
  return std::chrono::duration<double>(duration).count();
}

template <typename Fn> double timeOnce(Fn fn) {
  Clock::time_point start = Clock::now();
  fn();
  return seconds(Clock::now() - start);
}

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  size_t mid = values.size() / 2;
  return values.size() % 2 ? values[mid]
                           : 0.5 * (values[mid - 1] + values[mid]);
}

struct Result {
  int64_t numTokens;
  bool cold;
  /// moertAvx2Ms is NaN on a CPU without AVX-512 (moertMs is AVX2 there).
  double moertMs, moertAvx2Ms, blasMs, maxAbsDiff;
};

/// Evicts the caches (32 MiB of L3 on the reference machine) by writing a
/// buffer twice their size.
class CacheFlusher {
public:
  void flush() {
    for (size_t i = 0; i < buffer.size(); i += 16)
      buffer[i] += 1.0f;
  }

private:
  std::vector<float> buffer = std::vector<float>(16 << 20);
};

Result measure(const Layer &layer, int64_t numTokens, bool cold, int reps,
               CacheFlusher &flusher, std::mt19937 &rng) {
  std::vector<float> x = randomVector(numTokens * layer.d, 1.0f, rng);
  std::vector<float> outMoert(numTokens * layer.d), outBlas(outMoert.size());
  MoertLayer moert(layer, numTokens);
  BlasLayer blas(layer, numTokens);
  bool avx512 = moert::cpu::detail::avx512Gemm();
  std::vector<float> outAvx2(outMoert.size());
  auto runMoert = [&] { moert.run(x.data(), outMoert.data()); };
  auto runMoertAvx2 = [&] {
    moert::cpu::detail::setAvx512Gemm(false);
    moert.run(x.data(), outAvx2.data());
    moert::cpu::detail::setAvx512Gemm(avx512);
  };
  auto runBlas = [&] { blas.run(x.data(), outBlas.data()); };
  auto timeRun = [&](auto run) {
    if (cold)
      flusher.flush();
    return timeOnce(run);
  };
  runMoert();
  runMoertAvx2();
  runBlas();
  // Interleaved, alternating which goes first, so drift in machine load
  // affects both sides alike.
  std::vector<double> moertTimes, avx2Times, blasTimes;
  for (int rep = 0; rep < reps; ++rep) {
    if (rep % 2) {
      blasTimes.push_back(timeRun(runBlas));
      if (avx512)
        avx2Times.push_back(timeRun(runMoertAvx2));
      moertTimes.push_back(timeRun(runMoert));
    } else {
      moertTimes.push_back(timeRun(runMoert));
      if (avx512)
        avx2Times.push_back(timeRun(runMoertAvx2));
      blasTimes.push_back(timeRun(runBlas));
    }
  }
  if (avx512 && std::memcmp(outAvx2.data(), outMoert.data(),
                            outMoert.size() * sizeof(float)) != 0) {
    std::fprintf(stderr, "the AVX-512 and AVX2 tiles gave different bits\n");
    std::exit(1);
  }
  double maxAbsDiff = 0.0;
  for (size_t i = 0; i < outMoert.size(); ++i)
    maxAbsDiff =
        std::max(maxAbsDiff, double(std::fabs(outMoert[i] - outBlas[i])));
  return {numTokens,
          cold,
          1e3 * median(moertTimes),
          avx512 ? 1e3 * median(avx2Times) : NAN,
          1e3 * median(blasTimes),
          maxAbsDiff};
}

std::string cpuModel() {
  std::ifstream cpuinfo("/proc/cpuinfo");
  std::string line;
  while (std::getline(cpuinfo, line))
    if (line.rfind("model name", 0) == 0)
      return line.substr(line.find(':') + 2);
  return "unknown";
}

std::string gitCommit() {
  std::string command =
      std::string("git -C '") + MOE_SOURCE_DIR + "' rev-parse HEAD 2>/dev/null";
  FILE *pipe = popen(command.c_str(), "r");
  if (!pipe)
    return "unknown";
  char buffer[64] = {};
  bool ok = std::fgets(buffer, sizeof(buffer), pipe) != nullptr;
  pclose(pipe);
  std::string commit = ok ? buffer : "unknown";
  commit.erase(commit.find_last_not_of("\n") + 1);
  return commit;
}

bool parseOptions(int argc, char **argv, Options &options) {
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    bool hasValue = i + 1 < argc;
    if (arg == "--json" && hasValue)
      options.jsonPath = argv[++i];
    else if (arg == "--commit" && hasValue)
      options.commit = argv[++i];
    else if (arg == "--reps" && hasValue)
      options.reps = std::max(1, std::atoi(argv[++i]));
    else {
      std::fprintf(stderr,
                   "usage: moe-cpu-bench [--json PATH] [--reps N>=1] "
                   "[--commit SHA]\nunexpected argument: %s\n",
                   arg.c_str());
      return false;
    }
  }
  return true;
}

void printTable(const Layer &layer, const std::vector<Result> &results) {
  std::printf("cpu-small MoE layer (router + experts), d=%lld f=%lld E=%lld "
              "k=%lld, 1 thread, median ms\n\n",
              (long long)layer.d, (long long)layer.f,
              (long long)layer.numExperts, (long long)layer.topK);
  std::printf("| T | caches | moert (ms) | moert AVX2 (ms) | OpenBLAS loop "
              "(ms) | speedup (OpenBLAS / moert) | AVX2 / moert | max abs "
              "diff |\n"
              "|---|---|---|---|---|---|---|---|\n");
  for (const Result &r : results)
    std::printf("| %lld | %s | %.3f | %.3f | %.3f | %.2fx | %.2fx | %.1e |\n",
                (long long)r.numTokens, r.cold ? "cold" : "warm", r.moertMs,
                r.moertAvx2Ms, r.blasMs, r.blasMs / r.moertMs,
                r.moertAvx2Ms / r.moertMs, r.maxAbsDiff);
}

bool writeJson(const std::string &path, const Options &options,
               const Layer &layer, const std::vector<Result> &results) {
  FILE *file = std::fopen(path.c_str(), "w");
  if (!file)
    return false;
  std::fprintf(file,
               "{\n  \"benchmark\": \"cpu_experts\",\n  \"commit\": \"%s\",\n"
               "  \"machine\": {\"cpu\": \"%s\", \"openblas_core\": \"%s\"},\n"
               "  \"shape\": {\"name\": \"cpu-small\", \"d\": %lld, \"f\": "
               "%lld, \"E\": %lld, \"k\": %lld},\n"
               "  \"threads\": 1,\n  \"reps\": %d,\n  \"statistic\": "
               "\"median\",\n  \"results\": [\n",
               options.commit.c_str(), cpuModel().c_str(),
               openblas_get_corename(), (long long)layer.d, (long long)layer.f,
               (long long)layer.numExperts, (long long)layer.topK,
               options.reps);
  for (size_t i = 0; i < results.size(); ++i) {
    const Result &r = results[i];
    std::fprintf(file,
                 "    {\"T\": %lld, \"caches\": \"%s\", \"moert_ms\": %.6f, "
                 "\"moert_avx2_ms\": %s, "
                 "\"openblas_loop_ms\": %.6f, \"speedup\": %.4f, "
                 "\"max_abs_diff\": %.3e}%s\n",
                 (long long)r.numTokens, r.cold ? "cold" : "warm", r.moertMs,
                 std::isnan(r.moertAvx2Ms)
                     ? "null"
                     : std::to_string(r.moertAvx2Ms).c_str(),
                 r.blasMs, r.blasMs / r.moertMs, r.maxAbsDiff,
                 i + 1 < results.size() ? "," : "");
  }
  std::fprintf(file, "  ]\n}\n");
  return std::fclose(file) == 0;
}

} // namespace

int main(int argc, char **argv) {
  Options options;
  if (!parseOptions(argc, argv, options))
    return 2;
  if (options.commit.empty())
    options.commit = gitCommit();
  openblas_set_num_threads(1);

  std::mt19937 rng(2026);
  Layer layer = makeLayer(/*d=*/512, /*f=*/1024, /*numExperts=*/8,
                          /*topK=*/2, rng);
  CacheFlusher flusher;
  std::vector<Result> results;
  for (int64_t numTokens : options.tokenCounts)
    for (bool cold : {false, true})
      results.push_back(
          measure(layer, numTokens, cold, options.reps, flusher, rng));

  printTable(layer, results);
  if (!options.jsonPath.empty() &&
      !writeJson(options.jsonPath, options, layer, results)) {
    std::fprintf(stderr, "cannot write %s\n", options.jsonPath.c_str());
    return 1;
  }
  return 0;
}

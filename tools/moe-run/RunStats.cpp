//===- RunStats.cpp - path statistics of one run --------------------------===//
#include "RunStats.h"

#include "llvm/Support/Format.h"
#include <cmath>
#include <map>
#include <vector>

using namespace mlir::moe;

namespace {
int32_t topExpert(const RoutingTrace &t, int64_t step, int64_t token) {
  return t.expertIds[(step * t.tokens + token) * t.topK];
}
} // namespace

void mlir::moe::printRunStats(const RoutingTrace &t, double seconds,
                        llvm::raw_ostream &os) {
  int64_t steps = t.passes * t.layers;
  os << "stats: tokens " << t.tokens << ", passes " << t.passes
     << ", layers " << t.layers << ", experts " << t.experts << ", top_k "
     << t.topK << "\n";

  // Expert load per layer, summed over passes: token-slots routed to each.
  for (int64_t l = 0; l < t.layers; ++l) {
    std::vector<int64_t> load(t.experts, 0);
    for (int64_t p = 0; p < t.passes; ++p)
      for (int64_t i = 0; i < t.tokens * t.topK; ++i) {
        int32_t e = t.expertIds[(p * t.layers + l) * t.tokens * t.topK + i];
        if (e >= 0 && e < t.experts)
          ++load[e];
      }
    os << "  layer " << l << " expert load:";
    for (int64_t n : load)
      os << " " << n;
    os << "\n";
  }

  // A token's path: its expert ids at every step it ran (sets in routing
  // order, as the trace records them).
  std::map<std::vector<int32_t>, int64_t> paths;
  for (int64_t tok = 0; tok < t.tokens; ++tok) {
    std::vector<int32_t> path;
    for (int64_t s = 0; s < steps; ++s)
      for (int64_t j = 0; j < t.topK; ++j)
        path.push_back(t.expertIds[(s * t.tokens + tok) * t.topK + j]);
    ++paths[path];
  }
  double entropy = 0.0;
  for (auto &[path, count] : paths) {
    double p = double(count) / double(t.tokens);
    entropy -= p * std::log2(p);
  }
  os << "  distinct expert paths: " << paths.size() << " of " << t.tokens
     << " tokens, path entropy " << llvm::format("%.3f", entropy) << " bits\n";

  // Cross-layer consistency: consecutive steps where the token ran both.
  int64_t same = 0, pairs = 0;
  for (int64_t s = 1; s < steps; ++s)
    for (int64_t tok = 0; tok < t.tokens; ++tok) {
      int32_t prev = topExpert(t, s - 1, tok), cur = topExpert(t, s, tok);
      if (prev < 0 || cur < 0)
        continue;
      ++pairs;
      same += prev == cur;
    }
  os << "  cross-layer top-1 consistency: "
     << llvm::format("%.3f", pairs ? double(same) / double(pairs) : 0.0)
     << " (" << same << " of " << pairs << " consecutive steps)\n";

  std::vector<int64_t> exits(t.passes, 0);
  for (int32_t pass : t.exitLoop)
    if (pass >= 0 && pass < t.passes)
      ++exits[pass];
  os << "  tokens stopping after each pass:";
  for (int64_t n : exits)
    os << " " << n;
  os << "\n  wall time: " << llvm::format("%.3f", seconds * 1e3) << " ms\n";
}

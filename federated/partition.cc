// Compiled with -ffp-contract=off (CMakeLists.txt): every multiply-add below is rounded twice
// unless written as std::fma, so no compiler can change a bit of the Gamma variates.
#include "federated/partition.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <sstream>

#include "absl/strings/str_format.h"
#include "core/file_util.h"
#include "core/philox.h"
#include "core/status.h"
#include "nlohmann/json.hpp"

namespace memtrain::federated {
namespace {

using Json = nlohmann::json;

constexpr double kLn2Hi = 0x1.62e42fee00000p-1;  // ln 2 to 32 bits: k * kLn2Hi is exact
constexpr double kLn2Lo = 0x1.a39ef35793c76p-33;

// Natural log of a positive finite double, from its bits: x = 2^e * m with m in [sqrt(1/2),
// sqrt(2)), log m = 2 atanh(s), s = (m - 1) / (m + 1), |s| < 0.1716, odd series to s^25 (relative
// error under 1e-16 before rounding). IEEE operations only, so every machine gives the same bits.
double PortableLog(double x) {
  int scale = 0;
  if (x < 0x1p-1022) {  // subnormal: make it normal first (exact)
    x *= 0x1p54;
    scale = -54;
  }
  uint64_t bits;
  std::memcpy(&bits, &x, sizeof(bits));
  const uint64_t mant = bits & ((uint64_t{1} << 52) - 1);
  const bool halve = mant > 0x6a09e667f3bcdull;  // 0x3ff6a09e667f3bcd is sqrt(2) rounded down
  const int e = static_cast<int>(bits >> 52) - 1023 + (halve ? 1 : 0) + scale;
  const uint64_t mbits = mant | (halve ? 0x3fe0000000000000ull : 0x3ff0000000000000ull);
  double m;
  std::memcpy(&m, &mbits, sizeof(m));
  const double f = m - 1.0;
  const double s = f / (2.0 + f);
  const double z = s * s;
  double p = 1.0 / 25;
  for (int k = 23; k >= 3; k -= 2) p = std::fma(p, z, 1.0 / k);
  const double s2 = 2.0 * s;
  const double log_m = std::fma(s2 * z, p, s2);  // 2s + 2s^3 p(s^2)
  return std::fma(static_cast<double>(e), kLn2Hi, std::fma(static_cast<double>(e), kLn2Lo, log_m));
}

// e^y: y = k ln 2 + r with |r| <= ln(2) / 2 (Cody-Waite), Taylor series of e^r to r^13, times 2^k
// (ldexp is exact but for the IEEE rounding of a subnormal result).
double PortableExp(double y) {
  if (y < -746.0) return 0.0;
  if (y > 710.0) return std::numeric_limits<double>::infinity();
  const double k = std::round(y * 0x1.71547652b82fep0);  // y / ln 2
  const double r = std::fma(-k, kLn2Lo, std::fma(-k, kLn2Hi, y));
  double p = 1.0 / 6227020800.0;  // 1/13!
  double fact = 6227020800.0;
  for (int n = 12; n >= 1; --n) {
    fact /= n + 1;  // n! exactly (all n! for n <= 13 are exact doubles)
    p = std::fma(p, r, 1.0 / fact);
  }
  return std::ldexp(std::fma(p, r, 1.0), static_cast<int>(k));
}

// A sequential reader of one Philox stream: word i is lane i % 4 of counter block i / 4.
class PhiloxWords {
 public:
  PhiloxWords(uint64_t seed, uint64_t stream) : seed_(seed), stream_(stream) {}

  uint32_t Next() {
    if (next_ % 4 == 0) block_ = core::PhiloxBlock(seed_, stream_, next_ / 4);
    return block_[next_++ % 4];
  }
  uint64_t Next64() {
    const uint64_t hi = Next();
    return (hi << 32) | Next();
  }
  // (0, 1] with 53 random bits, so its log is finite.
  double UniformOpenClosed() { return static_cast<double>((Next64() >> 11) + 1) * 0x1p-53; }
  // A standard normal (Box-Muller, cosine branch; the angle has 24 bits as in core::Philox).
  double Normal() {
    const double r = std::sqrt(-2.0 * PortableLog(UniformOpenClosed()));
    double c, s;
    core::PhiloxCosSin2Pi(Next() >> 8, &c, &s);
    return r * c;
  }
  // Uniform in [0, bound), bound >= 1, unbiased: words below 2^64 mod bound are redrawn.
  uint64_t Below(uint64_t bound) {
    const uint64_t reject_below = (0 - bound) % bound;
    for (;;) {
      const uint64_t x = Next64();
      if (x >= reject_below) return x % bound;
    }
  }

 private:
  uint64_t seed_, stream_;
  uint64_t next_ = 0;
  core::PhiloxCounter block_{};
};

// log of a Gamma(a, 1) variate, a > 0: Marsaglia and Tsang (2000), "A simple method for generating
// gamma variables"; for a < 1, G(a) = G(a + 1) U^(1/a). In logs, so that tiny alpha (whose
// variates underflow a double) still gives a well-defined Dirichlet.
double LogGammaVariate(double a, PhiloxWords& rng) {
  if (a < 1.0) {
    const double lg = LogGammaVariate(a + 1.0, rng);
    return lg + PortableLog(rng.UniformOpenClosed()) / a;
  }
  const double d = a - 1.0 / 3.0;
  const double c = 1.0 / std::sqrt(9.0 * d);
  for (;;) {
    double x, v;
    do {
      x = rng.Normal();
      v = std::fma(c, x, 1.0);
    } while (v <= 0.0);
    const double log_v3 = 3.0 * PortableLog(v);
    const double v3 = v * v * v;
    const double u = rng.UniformOpenClosed();
    const double x2 = x * x;
    if (u < std::fma(-0.0331, x2 * x2, 1.0) ||
        PortableLog(u) < std::fma(0.5 * x, x, d * (1.0 - v3 + log_v3))) {
      return PortableLog(d) + log_v3;
    }
  }
}

absl::Status CheckArgs(absl::Span<const int32_t> labels, int num_classes, int num_clients,
                       double alpha, int min_size) {
  const int64_t n = static_cast<int64_t>(labels.size());
  if (num_clients < 1) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "federated.num_clients = %d: a federated run needs at least 1 client", num_clients));
  }
  if (num_clients > n) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "federated.num_clients = %d exceeds the %d training samples: every client needs at least "
        "one; lower federated.num_clients",
        num_clients, n));
  }
  if (!std::isfinite(alpha) || alpha <= 0.0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "federated.alpha = %g: the Dirichlet concentration must be finite and > 0 (0.1: each "
        "client holds few classes; 100: nearly the class mix of the whole set)",
        alpha));
  }
  if (min_size < 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "federated.min_client_samples = %d: must be >= 0 (the default is 10)", min_size));
  }
  if (static_cast<int64_t>(min_size) * num_clients > n) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "federated.min_client_samples = %d times federated.num_clients = %d is %d samples, more "
        "than the %d training samples: lower either",
        min_size, num_clients, static_cast<int64_t>(min_size) * num_clients, n));
  }
  if (num_classes < 1) {
    return absl::InvalidArgumentError(
        absl::StrFormat("num_classes = %d: a labelled set needs at least 1 class", num_classes));
  }
  for (int64_t i = 0; i < n; ++i) {
    if (labels[i] < 0 || labels[i] >= num_classes) {
      return absl::InvalidArgumentError(
          absl::StrFormat("label %d of sample %d is outside [0, %d): the labels do not belong to "
                          "a %d-class dataset",
                          labels[i], i, num_classes, num_classes));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<Partition> DirichletPartition(absl::Span<const int32_t> labels, int num_classes,
                                             int num_clients, double alpha, uint64_t seed,
                                             int min_size) {
  MT_RETURN_IF_ERROR(CheckArgs(labels, num_classes, num_clients, alpha, min_size));
  const int64_t n = static_cast<int64_t>(labels.size());
  std::vector<std::vector<int64_t>> by_class(num_classes);
  for (int64_t i = 0; i < n; ++i) by_class[labels[i]].push_back(i);

  Partition p;
  p.seed = seed;
  p.alpha = alpha;
  p.num_clients = num_clients;
  p.num_classes = num_classes;
  p.min_size = min_size;
  p.num_samples = n;
  std::vector<double> log_x(num_clients), share(num_clients);
  int64_t best_smallest = 0;
  for (int draw = 0; draw < kMaxPartitionDraws; ++draw) {
    PhiloxWords rng(seed, static_cast<uint64_t>(draw));
    std::vector<std::vector<int64_t>> clients(num_clients);
    for (int k = 0; k < num_classes; ++k) {
      if (by_class[k].empty()) continue;  // nothing to split (and no draws for it)
      std::vector<int64_t> idx = by_class[k];
      for (int64_t i = static_cast<int64_t>(idx.size()) - 1; i > 0; --i) {
        std::swap(idx[i], idx[rng.Below(static_cast<uint64_t>(i) + 1)]);
      }
      for (int j = 0; j < num_clients; ++j) log_x[j] = LogGammaVariate(alpha, rng);
      // Clients already holding >= n / num_clients samples get none of this class. At least one
      // client is below (they hold fewer than n in all), so some share is left.
      double max_log = -std::numeric_limits<double>::infinity();
      for (int j = 0; j < num_clients; ++j) {
        const bool open = static_cast<int64_t>(clients[j].size()) * num_clients < n;
        if (open) max_log = std::max(max_log, log_x[j]);
      }
      double sum = 0.0;
      for (int j = 0; j < num_clients; ++j) {
        const bool open = static_cast<int64_t>(clients[j].size()) * num_clients < n;
        share[j] = open ? PortableExp(log_x[j] - max_log) : 0.0;
        sum += share[j];
      }
      // Client j gets idx[cut(j - 1), cut(j)) with cut(j) = floor(cumsum(share)[j] * n_k).
      const int64_t nk = static_cast<int64_t>(idx.size());
      double cum = 0.0;
      int64_t begin = 0;
      for (int j = 0; j < num_clients; ++j) {
        cum += share[j] / sum;
        int64_t end = nk;
        if (j + 1 < num_clients) {
          end = std::clamp(static_cast<int64_t>(cum * static_cast<double>(nk)), begin, nk);
        }
        clients[j].insert(clients[j].end(), idx.begin() + begin, idx.begin() + end);
        begin = end;
      }
    }
    int64_t smallest = n;
    for (const auto& c : clients) smallest = std::min(smallest, static_cast<int64_t>(c.size()));
    best_smallest = std::max(best_smallest, smallest);
    if (smallest >= min_size) {
      for (auto& c : clients) std::sort(c.begin(), c.end());
      p.draws = draw + 1;
      p.client_indices = std::move(clients);
      return p;
    }
  }
  return absl::InvalidArgumentError(absl::StrFormat(
      "no Dirichlet(federated.alpha = %g) partition of %d samples in %d draws gave each of the "
      "federated.num_clients = %d clients at least federated.min_client_samples = %d samples (the "
      "best draw's smallest client had %d): raise federated.alpha or lower "
      "federated.num_clients or federated.min_client_samples",
      alpha, n, kMaxPartitionDraws, num_clients, min_size, best_smallest));
}

std::vector<std::vector<int64_t>> ClientClassCounts(const Partition& p,
                                                    absl::Span<const int32_t> labels) {
  std::vector<std::vector<int64_t>> counts(p.client_indices.size(),
                                           std::vector<int64_t>(p.num_classes, 0));
  for (size_t c = 0; c < p.client_indices.size(); ++c) {
    for (int64_t i : p.client_indices[c]) {
      MT_CHECK(i >= 0 && i < static_cast<int64_t>(labels.size()))
          << "partition index " << i << " outside the " << labels.size() << " labels";
      MT_CHECK(labels[i] >= 0 && labels[i] < p.num_classes) << "label " << labels[i];
      ++counts[c][labels[i]];
    }
  }
  return counts;
}

absl::Status SavePartition(const Partition& p, const std::string& path) {
  Json j = {{"format", "memtrain-partition/1"},
            {"method", "dirichlet"},
            {"seed", p.seed},
            {"alpha", p.alpha},
            {"num_clients", p.num_clients},
            {"num_classes", p.num_classes},
            {"min_size", p.min_size},
            {"num_samples", p.num_samples},
            {"draws", p.draws},
            {"clients", p.client_indices}};
  const std::string text = j.dump() + "\n";
  return core::WriteFileAtomically(
      path, [&](std::FILE* f) { return core::WriteAll(f, text.data(), text.size(), path); });
}

namespace {

absl::StatusOr<Partition> LoadPartitionUnguarded(const std::string& path, const Json& j) {
  auto bad = [&](const std::string& why) {
    return absl::DataLossError(absl::StrFormat(
        "%s: not a memtrain partition: %s; the file is corrupt: delete it to draw the partition "
        "again from the job's seed",
        path, why));
  };
  if (j.is_discarded() || !j.is_object()) return bad("not JSON");
  if (j.value("format", "") != "memtrain-partition/1") return bad("missing or wrong \"format\"");
  Partition p;
  p.seed = j.at("seed").get<uint64_t>();
  p.alpha = j.at("alpha").get<double>();
  p.num_clients = j.at("num_clients").get<int>();
  p.num_classes = j.at("num_classes").get<int>();
  p.min_size = j.at("min_size").get<int>();
  p.num_samples = j.at("num_samples").get<int64_t>();
  p.draws = j.at("draws").get<int>();
  p.client_indices = j.at("clients").get<std::vector<std::vector<int64_t>>>();
  if (!std::isfinite(p.alpha) || p.alpha <= 0) return bad("alpha is not finite and > 0");
  if (p.num_clients < 1 || p.num_samples < 0) return bad("num_clients < 1 or num_samples < 0");
  if (static_cast<int64_t>(p.client_indices.size()) != p.num_clients) {
    return bad(absl::StrFormat("num_clients is %d but \"clients\" has %d lists", p.num_clients,
                               p.client_indices.size()));
  }
  std::vector<uint8_t> seen(p.num_samples, 0);
  int64_t total = 0;
  for (size_t c = 0; c < p.client_indices.size(); ++c) {
    auto& idx = p.client_indices[c];
    for (int64_t i : idx) {
      if (i < 0 || i >= p.num_samples) {
        return bad(
            absl::StrFormat("client %d holds index %d, outside [0, %d)", c, i, p.num_samples));
      }
      if (seen[i]++) return bad(absl::StrFormat("index %d is given out twice", i));
    }
    std::sort(idx.begin(), idx.end());
    total += static_cast<int64_t>(idx.size());
  }
  if (total != p.num_samples) {
    return bad(absl::StrFormat("the clients hold %d indices, expected num_samples = %d", total,
                               p.num_samples));
  }
  return p;
}

}  // namespace

absl::StatusOr<Partition> LoadPartition(const std::string& path) {
  std::ifstream in(path);
  if (!in) {
    return absl::NotFoundError(absl::StrFormat("cannot read partition %s: %s; check the path", path,
                                               std::strerror(errno)));
  }
  std::stringstream ss;
  ss << in.rdbuf();
  try {
    return LoadPartitionUnguarded(path, Json::parse(ss.str(), nullptr, false));
  } catch (const nlohmann::json::exception& e) {
    return absl::DataLossError(absl::StrFormat(
        "%s: not a memtrain partition: a field is missing or of the wrong type (%s); delete it to "
        "draw the partition again from the job's seed",
        path, e.what()));
  }
}

}  // namespace memtrain::federated

// Non-IID splits of a labelled training set over federated clients: the Dirichlet(alpha)
// partition of FedML (Hsu et al. 2019, "Measuring the effects of non-identical data
// distribution"; FedML's `partition_data(..., "hetero", ...)`), made reproducible bit for bit
// from its seed on every machine, and saved with the run as JSON.
//
//   MT_ASSIGN_OR_RETURN(federated::Partition p, federated::DirichletPartition(
//       labels, /*num_classes=*/10, /*num_clients=*/100, /*alpha=*/0.5, /*seed=*/42));
//   MT_RETURN_IF_ERROR(federated::SavePartition(p, run_dir + "/partition.json"));
//   absl::Span<const int64_t> mine = p.client_indices[client];
//
// The algorithm: for each class k in order, shuffle that class's sample indices (Fisher-Yates),
// draw p ~ Dir(alpha, ..., alpha) over the clients, zero the share of every client that already
// holds >= num_samples / num_clients samples, renormalise, and cut the shuffled indices at
// floor(cumsum(p) * n_k) (client j gets the j-th piece). If some client ends with fewer than
// min_size samples the whole draw is repeated, at most kMaxPartitionDraws times. Small alpha gives
// each client few classes; large alpha tends to the class mix of the whole set.
//
// Randomness: draw d (0-based) reads stream d of core::Philox (key = seed) word by word, so the
// result depends on (labels, num_classes, num_clients, alpha, seed, min_size) only. The Gamma
// variates are Marsaglia-Tsang's method (with U^(1/alpha) for alpha < 1), the shuffle is
// Fisher-Yates with rejection-sampled bounded integers, and the logarithm and exponential they need
// are memtrain's own (IEEE + - * / sqrt and explicit fma only), not libm's, whose last bits
// differ between implementations: no std::gamma_distribution, std::shuffle or
// std::uniform_int_distribution, whose algorithms the C++ standard leaves to the library.
#ifndef MEMTRAIN_FEDERATED_PARTITION_H_
#define MEMTRAIN_FEDERATED_PARTITION_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace memtrain::federated {

// Whole draws tried before DirichletPartition gives up on min_size.
constexpr int kMaxPartitionDraws = 1000;

struct Partition {
  // The parameters that produced it (saved with it).
  uint64_t seed = 0;
  double alpha = 0;
  int num_clients = 0;
  int num_classes = 0;
  int min_size = 0;
  int64_t num_samples = 0;
  int draws = 0;  // whole draws made, 1 if the first one gave every client min_size samples
  // client_indices[c]: the sample indices of client c, ascending. Every index in
  // [0, num_samples) appears in exactly one client.
  std::vector<std::vector<int64_t>> client_indices;
};

// The Dirichlet(alpha) partition of `labels` (each in [0, num_classes)) over num_clients clients.
// InvalidArgument, naming the job-spec field, when num_clients < 1 or exceeds the samples
// ("federated.num_clients"), alpha is not finite and > 0 ("federated.alpha"), min_size < 0 or
// min_size * num_clients exceeds the samples ("federated.min_client_samples"), num_classes < 1, or
// a label is out of range; also InvalidArgument, naming those three fields, when all
// kMaxPartitionDraws draws left some client with fewer than min_size samples.
absl::StatusOr<Partition> DirichletPartition(absl::Span<const int32_t> labels, int num_classes,
                                             int num_clients, double alpha, uint64_t seed,
                                             int min_size = 10);

// counts[c][k]: how many samples of class k client c holds.
std::vector<std::vector<int64_t>> ClientClassCounts(const Partition& p,
                                                    absl::Span<const int32_t> labels);

// JSON ("memtrain-partition/1": the parameters and every client's indices), written atomically
// (core/file_util.h). Load checks that the indices cover [0, num_samples) exactly once and gives
// DataLoss naming the file otherwise, NotFound if it cannot be read.
absl::Status SavePartition(const Partition& p, const std::string& path);
absl::StatusOr<Partition> LoadPartition(const std::string& path);

}  // namespace memtrain::federated

#endif  // MEMTRAIN_FEDERATED_PARTITION_H_

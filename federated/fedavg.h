// Federated averaging (FedAvg) rounds with many simulated clients on one node or over MPI ranks.
//
//   federated::FedAvg fed(model, opt, comm, train_set, partition,
//                         {.clients_per_round = 10, .local_epochs = 5, .batch_size = 64});
//   for (int r = 0; r < rounds; ++r) MT_ASSIGN_OR_RETURN(federated::RoundStats s, fed.Round(r));
//
// A round: the sampled clients (a pure function of (seed, round): every rank derives them without
// a message) are dealt round-robin to the ranks; each rank trains its clients one after another
// in the one model it holds: the global weights copied in, the optimizer reset (clients are
// stateless: memory does not grow with the number of clients), local epochs over the client's
// samples in an order drawn from (seed, round, client). The clients' weights are then gathered
// and averaged weighted by sample count, in double, in the order of the sampled list: the same
// model on any number of ranks, bit for bit. BatchNorm's running statistics live in the blocks
// (not trainable) and are averaged like the weights. Pruning masks (ParamBlock::SetMask) hold
// through local training and averaging.
#ifndef MEMTRAIN_FEDERATED_FEDAVG_H_
#define MEMTRAIN_FEDERATED_FEDAVG_H_

#include <cstdint>
#include <functional>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "core/engine.h"
#include "core/model/cnn.h"
#include "optim/optimizer.h"
#include "parallel/communicator.h"

namespace memtrain::federated {

// Images (n, C, H, W) and their labels, borrowed.
struct ImageSet {
  const float* images = nullptr;
  const int32_t* labels = nullptr;
  int64_t n = 0;
  int C = 1, H = 28, W = 28;
  int64_t image_floats() const { return static_cast<int64_t>(C) * H * W; }
};

struct FedAvgOptions {
  int clients_per_round = 10;
  int local_epochs = 1;
  int batch_size = 64;  // the model must be prepared kTrain with this B (the last batch of an
                        // epoch is dropped when a client's samples are not a multiple of it)
  uint64_t seed = 0;
};

// The clients of round `round`: `k` distinct ids out of `n`, a pure function of the arguments.
std::vector<int> SampleClients(uint64_t seed, int64_t round, int n, int k);

// Per-client work a pruning method (or a custom algorithm) adds to a round. The hooks run on the
// rank that trains the client; Aggregate runs on every rank after the averaging, with every
// client's message in the order of the sampled list.
class ClientPlugin {
 public:
  virtual ~ClientPlugin() = default;
  virtual void BeginClient(int client) {}
  // After each local backward, before the optimizer step (the gradients are in the model).
  virtual void AfterBackward(int client, core::Cnn& model) {}
  // The size of every client's message this round (doubles), and the message.
  virtual int64_t message_doubles() const { return 0; }
  virtual std::vector<double> EndClient(int client) { return {}; }
  // weights: the clients' sample counts.
  virtual absl::Status Aggregate(const std::vector<std::vector<double>>& messages,
                                 const std::vector<int>& clients,
                                 const std::vector<double>& weights) {
    return absl::OkStatus();
  }
};

struct RoundStats {
  std::vector<int> clients;  // sampled, in aggregation order
  double train_loss = 0.0;   // mean over the clients' last local epoch, sample-weighted
  int64_t samples = 0;       // training samples of the sampled clients
  int64_t train_flops = 0;   // forward + backward FLOPs of the round, all clients (dense)
  // The same counting only the kept weights of masked layers (what sparse kernels would do).
  int64_t train_flops_sparse = 0;
  int64_t bytes_up = 0;           // what the clients send (their weights, f32)
  int64_t bytes_down = 0;         // what they receive (the global weights, f32)
  int64_t peak_client_bytes = 0;  // device memory of one client's training (allocator peak)
};

class FedAvg {
 public:
  // `clients`: per client, the indices of its samples in `train`. The model must be prepared
  // kTrain with options.batch_size; `opt` is the local optimizer over it.
  FedAvg(core::Cnn* model, optim::Optimizer* opt, parallel::Communicator* comm, ImageSet train,
         std::vector<std::vector<int64_t>> clients, FedAvgOptions options);

  // One round; the model ends holding the new global weights on every rank.
  absl::StatusOr<RoundStats> Round(int64_t round);

  // Test accuracy and mean loss of the current model (evaluation forwards; every rank computes
  // the same, over all of `test` in batches of the prepared size, the remainder dropped).
  struct Eval {
    double accuracy = 0, loss = 0;
    int64_t images = 0;
  };
  absl::StatusOr<Eval> Evaluate(ImageSet test);

  // Not owned; null for none. Applies to the following rounds.
  void set_plugin(ClientPlugin* plugin) { plugin_ = plugin; }

  // The clients of round `round` (as Round samples them) run `fn` on the current global weights,
  // round-robin over the ranks, forward-only work; each returns `result_doubles` numbers, given
  // back on every rank in the order of the sampled list (with the clients and sample counts).
  using ClientFn = std::function<absl::StatusOr<std::vector<double>>(int client, core::Cnn& model)>;
  struct Mapped {
    std::vector<int> clients;
    std::vector<double> weights;
    std::vector<std::vector<double>> results;
  };
  absl::StatusOr<Mapped> MapClients(int64_t round, int64_t result_doubles, const ClientFn& fn);
  // Calls fn on up to max_batches batches of a client's samples (in an order drawn from
  // (seed, tag, client); all batches when max_batches <= 0), the model's prepared batch size.
  absl::Status ClientBatches(int client, uint64_t tag, int max_batches,
                             const std::function<absl::Status(const core::Batch&)>& fn);
  core::Engine& engine() { return engine_; }
  int num_clients() const { return static_cast<int>(clients_.size()); }
  int64_t client_samples(int client) const { return static_cast<int64_t>(clients_[client].size()); }

  // Called after every local optimizer step of a client (e.g. a custom proximal term, or
  // re-applying masks); may be empty.
  using LocalHook = std::function<void(int client, core::Cnn& model)>;
  void set_local_hook(LocalHook hook) { local_hook_ = std::move(hook); }
  // The global weights at the start of the current round (valid inside the local hook).
  const std::vector<std::vector<float>>& global() const { return global_; }

 private:
  absl::Status TrainClient(int client, int64_t round, double* loss_sum, int64_t* loss_count);

  core::Cnn* model_;
  optim::Optimizer* opt_;
  parallel::Communicator* comm_;
  ImageSet train_;
  std::vector<std::vector<int64_t>> clients_;
  FedAvgOptions options_;
  core::Engine engine_;
  std::vector<std::vector<float>> global_;  // per block
  std::vector<float> images_;               // one batch
  std::vector<int32_t> labels_;
  LocalHook local_hook_;
  ClientPlugin* plugin_ = nullptr;
};

}  // namespace memtrain::federated

#endif  // MEMTRAIN_FEDERATED_FEDAVG_H_

// A custom federated algorithm on memtrain's C++ API: FedProx (Li et al. 2020) is FedAvg whose
// clients minimise loss + mu/2 ||w - w_global||^2. A ClientPlugin adds the proximal gradient
// mu (w - w_global) to every local gradient; everything else is FedAvg's. On Fashion-MNIST
// (Debian's dataset-fashion-mnist), Dirichlet(alpha) non-IID clients; exit 77 without the data.
//
//   fedprox [--clients 20] [--per_round 5] [--rounds 3] [--mu 0.01] [--alpha 0.5]
//           [--train_limit 6000] [-np N under mpirun]
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "core/threads.h"
#include "federated/fashion_mnist.h"
#include "federated/fedavg.h"
#include "federated/partition.h"
#include "optim/sgd.h"
#include "parallel/communicator.h"

using namespace memtrain;

// grad += mu * (w - w_global), for every trainable view of every block.
class Proximal : public federated::ClientPlugin {
 public:
  Proximal(federated::FedAvg* fed, float mu) : fed_(fed), mu_(mu) {}
  void AfterBackward(int, core::Cnn& model) override {
    for (int s = 0; s < model.num_stages(); ++s) {
      core::ParamBlock& b = model.block(s);
      const float* w = b.params().f32();
      const float* g0 = fed_->global()[s].data();
      float* g = b.grads().f32();
      for (const core::ParamView& v : b.views()) {
        if (!v.trainable) continue;
        for (int64_t i = v.offset; i < v.offset + v.numel; ++i) g[i] += mu_ * (w[i] - g0[i]);
      }
    }
  }

 private:
  federated::FedAvg* fed_;
  float mu_;
};

int main(int argc, char** argv) {
  int clients = 20, per_round = 5, rounds = 3;
  int64_t limit = 6000;
  float mu = 0.01f;
  double alpha = 0.5;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string f = argv[i];
    const char* v = argv[i + 1];
    if (f == "--clients")
      clients = std::atoi(v);
    else if (f == "--per_round")
      per_round = std::atoi(v);
    else if (f == "--rounds")
      rounds = std::atoi(v);
    else if (f == "--mu")
      mu = std::strtof(v, nullptr);
    else if (f == "--alpha")
      alpha = std::strtod(v, nullptr);
    else if (f == "--train_limit")
      limit = std::atoll(v);
  }
  core::InitThreads();  // the rank's share of the cores (MEMTRAIN_THREADS overrides)
  auto data = federated::FashionMnist::Load();
  if (!data.ok()) {
    std::fprintf(stderr, "fedprox: %s\n", std::string(data.status().message()).c_str());
    return 77;  // no dataset: skipped
  }
  auto world = parallel::CreateWorldCommunicator().value();
  federated::MnistSplit& train = data->train;
  limit = std::min<int64_t>(limit, train.size());
  train.labels.resize(limit);
  train.images.resize(limit * 28 * 28);
  auto part = federated::DirichletPartition(train.labels, 10, clients, alpha, /*seed=*/1);
  if (!part.ok()) {
    std::fprintf(stderr, "fedprox: %s\n", std::string(part.status().message()).c_str());
    return 2;
  }
  auto model = core::Cnn::Create({.layers = {16, core::kPool, 32, core::kPool}}).value();
  model->InitWeights(1);
  if (!model->Prepare({.B = 32, .T = 1, .mode = core::ModelMode::kTrain}).ok()) return 1;
  auto opt = optim::Sgd::Create(model.get(), {.lr = 0.01f, .momentum = 0.9f}).value();
  const federated::ImageSet train_set{train.images.data(), train.labels.data(), limit};
  const federated::ImageSet test_set{data->test.images.data(), data->test.labels.data(),
                                     data->test.size()};
  federated::FedAvg fed(model.get(), opt.get(), world.get(), train_set, part->client_indices,
                        {.clients_per_round = per_round, .local_epochs = 1, .batch_size = 32});
  Proximal prox(&fed, mu);
  fed.set_plugin(&prox);
  for (int r = 0; r < rounds; ++r) {
    auto st = fed.Round(r);
    auto ev =
        st.ok() ? fed.Evaluate(test_set) : absl::StatusOr<federated::FedAvg::Eval>(st.status());
    if (!ev.ok()) {
      std::fprintf(stderr, "fedprox: %s\n", std::string(ev.status().message()).c_str());
      return 1;
    }
    if (world->rank() == 0) {
      std::printf("round %d: train loss %.4f, test accuracy %.4f\n", r + 1, st->train_loss,
                  ev->accuracy);
      std::fflush(stdout);
    }
  }
  // Finalise MPI on success: a rank that exits without it counts as failed, and mpirun stops
  // the others, maybe before rank 0's last line is out. (On the error paths above, that is
  // what we want: no rank waits for one that has gone.)
  world.reset();
  parallel::ShutdownCommunication();
  return 0;
}

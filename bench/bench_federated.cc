// Simulated federated clients: clients trained per second and the process's peak RSS, for N
// clients (Dirichlet partition of Fashion-MNIST's 60000 training images), in one run: each N in a
// child process of its own, the same rounds otherwise. Stateless clients: memory must not grow
// with N. Exit 77 without Debian's dataset-fashion-mnist.
//
//   bench_federated [--clients 100,1000] [--per_round 20] [--rounds 3] [--batch 32]

#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "bench/bench_util.h"
#include "core/threads.h"
#include "federated/fashion_mnist.h"
#include "federated/fedavg.h"
#include "federated/partition.h"
#include "optim/sgd.h"

using namespace memtrain;
using Clock = std::chrono::steady_clock;

namespace {

struct Result {
  double clients_per_s = 0, images_per_s = 0, accuracy = 0;
  int64_t rss_kib = 0, model_params = 0;
  int ok = 0;
};

Result Run(int clients, int per_round, int rounds, int batch) {
  Result r;
  auto data = federated::FashionMnist::Load();
  if (!data.ok()) return r;
  auto part = federated::DirichletPartition(data->train.labels, 10, clients, 0.5, 1, 10);
  if (!part.ok()) {
    std::fprintf(stderr, "%s\n", std::string(part.status().message()).c_str());
    return r;
  }
  auto model = core::Cnn::Create({}).value();  // 32, pool, 64, pool, 128, pool
  model->InitWeights(1);
  if (!model->Prepare({.B = batch, .T = 1, .mode = core::ModelMode::kTrain}).ok()) return r;
  for (int s = 0; s < model->num_stages(); ++s) r.model_params += model->block(s).numel();
  auto opt = optim::Sgd::Create(model.get(), {.lr = 0.01f, .momentum = 0.9f}).value();
  auto world = parallel::CreateWorldCommunicator().value();
  federated::FedAvg fed(model.get(), opt.get(), world.get(),
                        {data->train.images.data(), data->train.labels.data(), data->train.size()},
                        part->client_indices,
                        {.clients_per_round = per_round, .local_epochs = 1, .batch_size = batch});
  int64_t images = 0, trained = 0;
  const auto t0 = Clock::now();
  for (int round = 0; round < rounds; ++round) {
    auto st = fed.Round(round);
    if (!st.ok()) return r;
    trained += static_cast<int64_t>(st->clients.size());
    for (int c : st->clients) images += fed.client_samples(c) / batch * batch;
  }
  const double s = std::chrono::duration<double>(Clock::now() - t0).count();
  r.clients_per_s = trained / s;
  r.images_per_s = images / s;
  auto ev = fed.Evaluate({data->test.images.data(), data->test.labels.data(), data->test.size()});
  r.accuracy = ev.ok() ? ev->accuracy : 0.0;
  r.rss_kib = bench::PeakRssKib();
  r.ok = 1;
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<int> ns = {100, 1000};
  int per_round = 20, rounds = 3, batch = 32;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string f = argv[i];
    if (f == "--clients") {
      ns.clear();
      for (absl::string_view p : absl::StrSplit(argv[i + 1], ',')) {
        int n = 0;
        if (absl::SimpleAtoi(p, &n)) ns.push_back(n);
      }
    } else if (f == "--per_round") {
      per_round = std::atoi(argv[i + 1]);
    } else if (f == "--rounds") {
      rounds = std::atoi(argv[i + 1]);
    } else if (f == "--batch") {
      batch = std::atoi(argv[i + 1]);
    }
  }
  if (!federated::FashionMnist::Load().ok()) {
    std::fprintf(stderr,
                 "bench_federated: Fashion-MNIST is not installed (dataset-fashion-mnist)\n");
    return 77;
  }
  std::printf(
      "federated simulation: Fashion-MNIST, the default CNN, %d clients per round, %d "
      "rounds, 1 local epoch, batch %d, %d threads, one rank\n",
      per_round, rounds, batch, core::InitThreads());
  std::printf("%10s %14s %14s %14s %10s\n", "clients", "clients/s", "images/s", "peak RSS MiB",
              "accuracy");
  std::vector<Result> rs;
  for (int n : ns) {
    const Result r = bench::RunInChild<Result>([&] { return Run(n, per_round, rounds, batch); });
    if (!r.ok) {
      std::fprintf(stderr, "bench_federated: the run with %d clients failed\n", n);
      return 1;
    }
    std::printf("%10d %14.2f %14.0f %14.1f %10.4f\n", n, r.clients_per_s, r.images_per_s,
                r.rss_kib / 1024.0, r.accuracy);
    rs.push_back(r);
  }
  if (rs.size() >= 2) {
    std::printf("peak RSS with %d clients / with %d: %.3f\n", ns.back(), ns.front(),
                static_cast<double>(rs.back().rss_kib) / rs.front().rss_kib);
  }
  return 0;
}

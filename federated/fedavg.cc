#include "federated/fedavg.h"

#include <algorithm>
#include <cstring>
#include <numeric>

#include "absl/strings/str_format.h"
#include "core/allocator.h"
#include "core/philox.h"

namespace memtrain::federated {
namespace {

// 64 random bits, element `index` of Philox stream `stream` under `seed`.
uint64_t Rand64(uint64_t seed, uint64_t stream, uint64_t index) {
  const core::PhiloxCounter c = core::PhiloxBlock(seed, stream, index / 2);
  const int lane = static_cast<int>(index % 2) * 2;
  return (static_cast<uint64_t>(c[lane]) << 32) | c[lane + 1];
}

constexpr uint64_t kSampleStream = 1ULL << 60;
constexpr uint64_t kShuffleStream = 2ULL << 60;

}  // namespace

std::vector<int> SampleClients(uint64_t seed, int64_t round, int n, int k) {
  std::vector<int> ids(n);
  std::iota(ids.begin(), ids.end(), 0);
  k = std::min(k, n);
  for (int i = 0; i < k; ++i) {  // a partial Fisher-Yates shuffle
    const int j =
        i + static_cast<int>(Rand64(seed, kSampleStream | static_cast<uint64_t>(round), i) %
                             static_cast<uint64_t>(n - i));
    std::swap(ids[i], ids[j]);
  }
  ids.resize(k);
  return ids;
}

FedAvg::FedAvg(core::Cnn* model, optim::Optimizer* opt, parallel::Communicator* comm,
               ImageSet train, std::vector<std::vector<int64_t>> clients, FedAvgOptions options)
    : model_(model),
      opt_(opt),
      comm_(comm),
      train_(train),
      clients_(std::move(clients)),
      options_(options),
      engine_(model) {}

absl::Status FedAvg::TrainClient(int client, int64_t round, double* loss_sum, int64_t* loss_count) {
  for (int s = 0; s < model_->num_stages(); ++s) {
    std::memcpy(model_->block(s).params().raw(), global_[s].data(),
                global_[s].size() * sizeof(float));
  }
  opt_->Reset();
  const int B = options_.batch_size;
  const int64_t img = train_.image_floats();
  images_.resize(static_cast<size_t>(B) * img);
  labels_.resize(B);
  std::vector<int64_t> order = clients_[client];
  const int64_t n = static_cast<int64_t>(order.size());
  const uint64_t stream =
      kShuffleStream | (static_cast<uint64_t>(round) << 24) | static_cast<uint64_t>(client);
  for (int e = 0; e < options_.local_epochs; ++e) {
    for (int64_t i = n - 1; i > 0; --i) {  // Fisher-Yates, drawn from (seed, round, client, e)
      const int64_t j = static_cast<int64_t>(
          Rand64(options_.seed, stream, static_cast<uint64_t>(e) * n + i) % (i + 1));
      std::swap(order[i], order[j]);
    }
    for (int64_t b0 = 0; b0 + B <= n; b0 += B) {
      for (int i = 0; i < B; ++i) {
        const int64_t k = order[b0 + i];
        std::memcpy(images_.data() + i * img, train_.images + k * img, img * sizeof(float));
        labels_[i] = train_.labels[k];
      }
      const core::Batch batch{.targets = labels_.data(), .B = B, .T = 1, .images = images_.data()};
      engine_.ZeroGrad();
      MT_RETURN_IF_ERROR(engine_.Forward(batch));
      if (e == options_.local_epochs - 1) {
        *loss_sum += engine_.Loss() * B;
        *loss_count += B;
      }
      MT_RETURN_IF_ERROR(engine_.Backward(batch));
      opt_->Step();
      if (local_hook_) local_hook_(client, *model_);
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<RoundStats> FedAvg::Round(int64_t round) {
  const int N = static_cast<int>(clients_.size());
  RoundStats st;
  st.clients = SampleClients(options_.seed, round, N, options_.clients_per_round);
  const int k = static_cast<int>(st.clients.size());
  const int P = comm_->size(), me = comm_->rank();
  const int slots = (k + P - 1) / P;
  int64_t total = 0;
  global_.resize(model_->num_stages());
  for (int s = 0; s < model_->num_stages(); ++s) {
    const core::ParamBlock& b = model_->block(s);
    global_[s].assign(b.params().f32(), b.params().f32() + b.numel());
    total += b.numel();
  }
  // Train this rank's clients (j = me, me + P, ...); slot t holds client me + t * P.
  std::vector<float> send(static_cast<size_t>(slots) * total, 0.0f);
  std::vector<double> send_loss(2 * static_cast<size_t>(slots), 0.0);
  core::ResetPeakMemory(core::Device::Cpu());
  const int64_t base = core::GetMemoryStats(core::Device::Cpu()).current;
  for (int t = 0; t < slots; ++t) {
    const int j = me + t * P;
    if (j >= k) break;
    double loss = 0;
    int64_t count = 0;
    MT_RETURN_IF_ERROR(TrainClient(st.clients[j], round, &loss, &count));
    send_loss[2 * t] = loss;
    send_loss[2 * t + 1] = static_cast<double>(count);
    float* out = send.data() + static_cast<size_t>(t) * total;
    for (int s = 0; s < model_->num_stages(); ++s) {
      const core::ParamBlock& b = model_->block(s);
      std::memcpy(out, b.params().raw(), b.numel() * sizeof(float));
      out += b.numel();
    }
  }
  st.peak_client_bytes = core::GetMemoryStats(core::Device::Cpu()).peak;
  (void)base;
  std::vector<float> recv(send.size() * P);
  std::vector<double> recv_loss(send_loss.size() * P);
  MT_RETURN_IF_ERROR(comm_
                         ->AllGather(send.data(), recv.data(), static_cast<int64_t>(send.size()),
                                     core::DType::kF32)
                         .Wait());
  MT_RETURN_IF_ERROR(comm_
                         ->AllGather(send_loss.data(), recv_loss.data(),
                                     static_cast<int64_t>(send_loss.size()), core::DType::kF64)
                         .Wait());
  // Weighted by sample count, in double, in the order of the sampled list.
  std::vector<double> acc(total, 0.0);
  double weight_sum = 0, loss_sum = 0, loss_count = 0;
  for (int j = 0; j < k; ++j) {
    const int p = j % P, t = j / P;
    const double w = static_cast<double>(clients_[st.clients[j]].size());
    const float* x = recv.data() + (static_cast<size_t>(p) * slots + t) * total;
    for (int64_t i = 0; i < total; ++i) acc[i] += w * static_cast<double>(x[i]);
    weight_sum += w;
    loss_sum += recv_loss[(static_cast<size_t>(p) * slots + t) * 2];
    loss_count += recv_loss[(static_cast<size_t>(p) * slots + t) * 2 + 1];
    st.samples += static_cast<int64_t>(w);
  }
  int64_t off = 0;
  for (int s = 0; s < model_->num_stages(); ++s) {
    core::ParamBlock& b = model_->block(s);
    float* p = b.params().f32();
    for (int64_t i = 0; i < b.numel(); ++i) p[i] = static_cast<float>(acc[off + i] / weight_sum);
    off += b.numel();
    if (b.has_mask()) b.ApplyMask();
  }
  st.train_loss = loss_count > 0 ? loss_sum / loss_count : 0.0;
  // Forward + backward ~ 3 forwards per image trained (dense count).
  int64_t trained = 0;
  for (int c : st.clients) {
    const int64_t n = static_cast<int64_t>(clients_[c].size());
    trained += n / options_.batch_size * options_.batch_size * options_.local_epochs;
  }
  st.train_flops = 3 * model_->ForwardFlopsPerImage() * trained;
  st.bytes_up = st.bytes_down = static_cast<int64_t>(k) * total * 4;
  return st;
}

absl::StatusOr<FedAvg::Eval> FedAvg::Evaluate(ImageSet test) {
  const int B = model_->prepared().B;
  const int64_t img = test.image_floats();
  Eval ev;
  double loss = 0;
  int64_t correct = 0;
  for (int64_t b0 = 0; b0 + B <= test.n; b0 += B) {
    const core::Batch batch{
        .targets = test.labels + b0, .B = B, .T = 1, .images = test.images + b0 * img};
    MT_RETURN_IF_ERROR(engine_.Forward(batch, core::Pass::kEvalForward));
    loss += engine_.Loss() * B;
    correct += model_->Correct();
    ev.images += B;
  }
  if (ev.images > 0) {
    ev.accuracy = static_cast<double>(correct) / ev.images;
    ev.loss = loss / ev.images;
  }
  return ev;
}

}  // namespace memtrain::federated

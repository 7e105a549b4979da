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
constexpr uint64_t kBatchStream = 3ULL << 60;

// Fisher-Yates over `order`, drawn from (seed, stream) from element `offset` on.
void Shuffle(std::vector<int64_t>& order, uint64_t seed, uint64_t stream, uint64_t offset) {
  const int64_t n = static_cast<int64_t>(order.size());
  for (int64_t i = n - 1; i > 0; --i) {
    const int64_t j = static_cast<int64_t>(Rand64(seed, stream, offset + i) % (i + 1));
    std::swap(order[i], order[j]);
  }
}

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
  if (plugin_ != nullptr) plugin_->BeginClient(client);
  for (int e = 0; e < options_.local_epochs; ++e) {
    // Drawn from (seed, round, client, epoch).
    Shuffle(order, options_.seed, stream, static_cast<uint64_t>(e) * n);
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
      if (plugin_ != nullptr) plugin_->AfterBackward(client, *model_);
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
  // Train this rank's clients (j = me, me + P, ...); slot t holds client me + t * P. Slot t of
  // `send` holds its weights, of `send_aux` its loss, sample count and plugin message.
  const int64_t msg = plugin_ != nullptr ? plugin_->message_doubles() : 0;
  const int64_t aux = 2 + msg;
  std::vector<float> send(static_cast<size_t>(slots) * total, 0.0f);
  std::vector<double> send_aux(static_cast<size_t>(slots) * aux, 0.0);
  core::ResetPeakMemory(core::Device::Cpu());
  absl::Status status;
  for (int t = 0; t < slots && status.ok(); ++t) {
    const int j = me + t * P;
    if (j >= k) break;
    double loss = 0;
    int64_t count = 0;
    status = TrainClient(st.clients[j], round, &loss, &count);
    if (!status.ok()) break;
    double* a = send_aux.data() + static_cast<size_t>(t) * aux;
    a[0] = loss;
    a[1] = static_cast<double>(count);
    if (plugin_ != nullptr) {
      const std::vector<double> m = plugin_->EndClient(st.clients[j]);
      if (static_cast<int64_t>(m.size()) != msg) {
        status = absl::InternalError(
            absl::StrFormat("a client plugin sent %d numbers; it announced %d", m.size(), msg));
        break;
      }
      std::copy(m.begin(), m.end(), a + 2);
    }
    float* out = send.data() + static_cast<size_t>(t) * total;
    for (int s = 0; s < model_->num_stages(); ++s) {
      const core::ParamBlock& b = model_->block(s);
      std::memcpy(out, b.params().raw(), b.numel() * sizeof(float));
      out += b.numel();
    }
  }
  st.peak_client_bytes = core::GetMemoryStats(core::Device::Cpu()).peak;
  // A failure on one rank must not leave the others waiting in the gathers.
  double failed = status.ok() ? 0.0 : 1.0;
  MT_RETURN_IF_ERROR(
      comm_->AllReduce(&failed, 1, core::DType::kF64, parallel::ReduceOp::kMax).Wait());
  MT_RETURN_IF_ERROR(status);
  if (failed > 0) return absl::AbortedError("a client's training failed on another rank");
  std::vector<float> recv(send.size() * P);
  std::vector<double> recv_aux(send_aux.size() * P);
  MT_RETURN_IF_ERROR(comm_
                         ->AllGather(send.data(), recv.data(), static_cast<int64_t>(send.size()),
                                     core::DType::kF32)
                         .Wait());
  MT_RETURN_IF_ERROR(comm_
                         ->AllGather(send_aux.data(), recv_aux.data(),
                                     static_cast<int64_t>(send_aux.size()), core::DType::kF64)
                         .Wait());
  // Weighted by sample count, in double, in the order of the sampled list.
  std::vector<double> acc(total, 0.0);
  double weight_sum = 0, loss_sum = 0, loss_count = 0;
  std::vector<std::vector<double>> messages;
  std::vector<double> weights;
  for (int j = 0; j < k; ++j) {
    const size_t slot = static_cast<size_t>(j % P) * slots + j / P;
    const double w = static_cast<double>(clients_[st.clients[j]].size());
    const float* x = recv.data() + slot * total;
    for (int64_t i = 0; i < total; ++i) acc[i] += w * static_cast<double>(x[i]);
    weight_sum += w;
    const double* a = recv_aux.data() + slot * aux;
    loss_sum += a[0];
    loss_count += a[1];
    messages.emplace_back(a + 2, a + 2 + msg);
    weights.push_back(w);
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
  // Bytes per client: each block dense, or its kept weights as (index, value) pairs.
  int64_t per_client = 0;
  for (int s = 0; s < model_->num_stages(); ++s) {
    const core::ParamBlock& b = model_->block(s);
    int64_t kept = b.numel();
    if (b.has_mask()) {
      const uint8_t* m = static_cast<const uint8_t*>(b.mask().raw());
      kept = std::count(m, m + b.numel(), uint8_t{1});
    }
    per_client += std::min<int64_t>(4 * b.numel(), 8 * kept);
  }
  if (plugin_ != nullptr) {
    MT_RETURN_IF_ERROR(plugin_->Aggregate(messages, st.clients, weights));
  }
  // Forward + backward ~ 3 forwards per image trained (dense count).
  int64_t trained = 0;
  for (int c : st.clients) {
    const int64_t n = static_cast<int64_t>(clients_[c].size());
    trained += n / options_.batch_size * options_.batch_size * options_.local_epochs;
  }
  st.train_flops = 3 * model_->ForwardFlopsPerImage() * trained;
  const std::vector<int64_t> flops = model_->StageFlopsPerImage();
  double sparse = 0;
  for (int s = 0; s < model_->num_stages(); ++s) {
    const core::ParamBlock& b = model_->block(s);
    double kept = 1.0;
    if (b.has_mask() && b.has_view("w")) {
      const core::ParamView& v = b.view("w");
      const uint8_t* m = static_cast<const uint8_t*>(b.mask().raw()) + v.offset;
      kept = static_cast<double>(std::count(m, m + v.numel, uint8_t{1})) / v.numel;
    }
    sparse += kept * static_cast<double>(flops[s]);
  }
  st.train_flops_sparse = static_cast<int64_t>(3.0 * sparse * static_cast<double>(trained));
  st.bytes_up = st.bytes_down = static_cast<int64_t>(k) * per_client;
  return st;
}

absl::Status FedAvg::ClientBatches(int client, uint64_t tag, int max_batches,
                                   const std::function<absl::Status(const core::Batch&)>& fn) {
  const int B = model_->prepared().B;
  const int64_t img = train_.image_floats();
  images_.resize(static_cast<size_t>(B) * img);
  labels_.resize(B);
  std::vector<int64_t> order = clients_[client];
  Shuffle(order, options_.seed, kBatchStream | (tag << 24) | static_cast<uint64_t>(client), 0);
  const int64_t n = static_cast<int64_t>(order.size());
  int done = 0;
  for (int64_t b0 = 0; b0 + B <= n && (max_batches <= 0 || done < max_batches); b0 += B, ++done) {
    for (int i = 0; i < B; ++i) {
      const int64_t k = order[b0 + i];
      std::memcpy(images_.data() + i * img, train_.images + k * img, img * sizeof(float));
      labels_[i] = train_.labels[k];
    }
    MT_RETURN_IF_ERROR(
        fn(core::Batch{.targets = labels_.data(), .B = B, .T = 1, .images = images_.data()}));
  }
  return absl::OkStatus();
}

absl::StatusOr<FedAvg::Mapped> FedAvg::MapClients(int64_t round, int64_t result_doubles,
                                                  const ClientFn& fn) {
  const int N = static_cast<int>(clients_.size());
  Mapped out;
  out.clients = SampleClients(options_.seed, round, N, options_.clients_per_round);
  const int k = static_cast<int>(out.clients.size());
  const int P = comm_->size(), me = comm_->rank();
  const int slots = (k + P - 1) / P;
  std::vector<std::vector<float>> saved(model_->num_stages());
  for (int s = 0; s < model_->num_stages(); ++s) {
    const core::ParamBlock& b = model_->block(s);
    saved[s].assign(b.params().f32(), b.params().f32() + b.numel());
  }
  std::vector<double> send(static_cast<size_t>(slots) * result_doubles, 0.0);
  absl::Status status;
  for (int t = 0; t < slots && status.ok(); ++t) {
    const int j = me + t * P;
    if (j >= k) break;
    absl::StatusOr<std::vector<double>> r = fn(out.clients[j], *model_);
    // Every client starts from the same weights.
    for (int s = 0; s < model_->num_stages(); ++s) {
      std::memcpy(model_->block(s).params().raw(), saved[s].data(),
                  saved[s].size() * sizeof(float));
    }
    if (!r.ok()) {
      status = r.status();
    } else if (static_cast<int64_t>(r->size()) != result_doubles) {
      status = absl::InternalError("MapClients: a client returned the wrong number of results");
    } else {
      std::copy(r->begin(), r->end(), send.begin() + static_cast<size_t>(t) * result_doubles);
    }
  }
  double failed = status.ok() ? 0.0 : 1.0;
  MT_RETURN_IF_ERROR(
      comm_->AllReduce(&failed, 1, core::DType::kF64, parallel::ReduceOp::kMax).Wait());
  MT_RETURN_IF_ERROR(status);
  if (failed > 0) return absl::AbortedError("MapClients: a client failed on another rank");
  std::vector<double> recv(send.size() * P);
  MT_RETURN_IF_ERROR(comm_
                         ->AllGather(send.data(), recv.data(), static_cast<int64_t>(send.size()),
                                     core::DType::kF64)
                         .Wait());
  for (int j = 0; j < k; ++j) {
    const double* r = recv.data() + (static_cast<size_t>(j % P) * slots + j / P) * result_doubles;
    out.results.emplace_back(r, r + result_doubles);
    out.weights.push_back(static_cast<double>(clients_[out.clients[j]].size()));
  }
  return out;
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

#include "offload/streamer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/allocator.h"
#include "core/status.h"

namespace memtrain::offload {
namespace {

using Clock = std::chrono::steady_clock;

std::string MiB(int64_t bytes) { return absl::StrFormat("%.1f MiB", bytes / 1048576.0); }

absl::Status Wait(const std::shared_future<absl::Status>& f) {
  return f.valid() ? f.get() : absl::OkStatus();
}

bool Ready(const std::shared_future<absl::Status>& f) {
  return !f.valid() || f.wait_for(std::chrono::seconds(0)) == std::future_status::ready;
}

}  // namespace

const char* TierName(Tier tier) { return tier == Tier::kSsd ? "SSD" : "HOST"; }

std::vector<int> ResidentStages(core::Model& model) {
  const int n = model.num_stages();
  std::vector<bool> resident(n, false);
  for (int s = 0; s < n; ++s) {
    const std::vector<int> extra = model.extra_blocks(s);
    for (int b : extra) resident[b] = true;
    if (!extra.empty()) resident[s] = true;
  }
  std::vector<int> out;
  for (int s = 0; s < n; ++s) {
    if (resident[s]) out.push_back(s);
  }
  return out;
}

int64_t WindowBytes(core::Model& model, const StreamerOptions& options) {
  const std::vector<int> resident = ResidentStages(model);
  int64_t largest = 0;
  for (int s = 0; s < model.num_stages(); ++s) {
    if (std::find(resident.begin(), resident.end(), s) == resident.end()) {
      largest = std::max(largest, model.block(s).numel());
    }
  }
  return static_cast<int64_t>(options.resident_blocks) * largest *
         static_cast<int64_t>(sizeof(float)) * (options.gradients ? 2 : 1);
}

// ---- the IO thread ------------------------------------------------------------------------------

LayerStreamer::IoQueue::IoQueue() {
  thread_ = std::thread([this] {
    for (;;) {
      std::function<absl::Status()> fn;
      std::promise<absl::Status> done;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [this] { return stop_ || !tasks_.empty(); });
        if (tasks_.empty()) return;
        fn = std::move(tasks_.front().first);
        done = std::move(tasks_.front().second);
        tasks_.pop_front();
      }
      done.set_value(fn());
    }
  });
}

LayerStreamer::IoQueue::~IoQueue() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();  // runs what was queued first
}

LayerStreamer::Done LayerStreamer::IoQueue::Submit(std::function<absl::Status()> fn) {
  std::promise<absl::Status> p;
  Done f = p.get_future().share();
  {
    std::lock_guard<std::mutex> lock(mu_);
    tasks_.emplace_back(std::move(fn), std::move(p));
  }
  cv_.notify_one();
  return f;
}

// ---- creation -----------------------------------------------------------------------------------

LayerStreamer::LayerStreamer(core::Model* model, optim::Optimizer* opt, StreamerOptions options)
    : model_(model),
      opt_(opt),
      options_(std::move(options)),
      device_(model->block(0).device()),
      ctx_(core::ExecContext::For(model->block(0).device())) {}

absl::StatusOr<std::unique_ptr<LayerStreamer>> LayerStreamer::Create(core::Model* model,
                                                                     optim::Optimizer* opt,
                                                                     StreamerOptions options) {
  if (model == nullptr) return absl::InvalidArgumentError("LayerStreamer: the model is null");
  const StreamerOptions& o = options;
  if (o.resident_blocks < 1 || (o.gradients && o.resident_blocks < 2)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "StreamerOptions::resident_blocks = %d: must be >= %d%s", o.resident_blocks,
        o.gradients ? 2 : 1,
        o.gradients ? " when training with gradients (a block's gradient stays in its slot until "
                      "its reduction, while the next block's backward runs)"
                    : ""));
  }
  if (o.swap_batch < 1 || o.swap_batch > o.resident_blocks) {
    return absl::InvalidArgumentError(
        absl::StrFormat("StreamerOptions::swap_batch = %d: must be in [1, resident_blocks = %d]",
                        o.swap_batch, o.resident_blocks));
  }
  if (o.prefetch_depth < 0 || o.prefetch_depth > o.resident_blocks - 1) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "StreamerOptions::prefetch_depth = %d: must be in [0, resident_blocks - 1 = %d] (a "
        "prefetched block needs a slot of its own)",
        o.prefetch_depth, o.resident_blocks - 1));
  }
  if (o.queue_depth < 1 || o.queue_depth > 4096) {
    return absl::InvalidArgumentError(
        absl::StrFormat("StreamerOptions::queue_depth = %d: must be in [1, 4096]", o.queue_depth));
  }
  if (o.tier == Tier::kSsd && (o.piece_bytes < 4096 || o.piece_bytes % 4096 != 0)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "StreamerOptions::piece_bytes = %d: must be a positive multiple of 4096", o.piece_bytes));
  }
  if (o.tier == Tier::kSsd && o.ssd_path.empty()) {
    return absl::InvalidArgumentError(
        "StreamerOptions::ssd_path is empty: the SSD tier needs a directory for its file");
  }
  std::unique_ptr<LayerStreamer> s(new LayerStreamer(model, opt, std::move(options)));
  MT_RETURN_IF_ERROR(s->Init());
  return s;
}

int64_t LayerStreamer::Elems(int stage) const { return model_->block(stage).numel(); }

int64_t LayerStreamer::KindBytesPerElem(int kind) const {
  return kind >= kState ? static_cast<int64_t>(core::DTypeSize(state_dtype_))
                        : static_cast<int64_t>(sizeof(float));
}

int64_t LayerStreamer::PieceElems(int stage, int kind) const {
  (void)kind;
  return std::min<int64_t>(Elems(stage), piece_elems_);
}

absl::Status LayerStreamer::Init() {
  const int n = model_->num_stages();
  streamed_flag_.assign(n, true);
  for (int s : ResidentStages(*model_)) streamed_flag_[s] = false;
  for (int s = 0; s < n; ++s) {
    if (model_->block(s).numel() == 0) streamed_flag_[s] = false;
    if (streamed_flag_[s]) streamed_.push_back(s);
  }
  slot_index_.assign(n, -1);
  grads_zero_.assign(n, true);
  has_grads_.assign(n, false);
  sqnorm_.assign(n, 0.0);
  pending_.assign(n, false);

  const bool train = options_.gradients && opt_ != nullptr && opt_->needs_grads();
  const bool host_opt = train && options_.optimizer_on_host;
  if (train) {
    n_state_ = static_cast<int>(opt_->state_names().size());
    state_dtype_ = opt_->state_dtype();
  }
  piece_elems_ = options_.tier == Tier::kSsd
                     ? options_.piece_bytes / static_cast<int64_t>(sizeof(float))
                     : std::numeric_limits<int64_t>::max() / 8;

  // The tier's pieces.
  std::vector<int64_t> sizes;
  ids_.assign(n, std::vector<std::vector<int64_t>>(kState + n_state_));
  for (int s = 0; s < n; ++s) {
    const int64_t elems = Elems(s);
    if (elems == 0) continue;
    std::vector<int> kinds;
    if (streamed_flag_[s] || host_opt) kinds.push_back(kParams);
    if (options_.gradients && (streamed_flag_[s] || host_opt)) kinds.push_back(kGrads);
    if (host_opt) {
      for (int j = 0; j < n_state_; ++j) kinds.push_back(kState + j);
    }
    for (int k : kinds) {
      for (int64_t a = 0; a < elems; a += piece_elems_) {
        ids_[s][k].push_back(static_cast<int64_t>(sizes.size()));
        sizes.push_back(std::min(piece_elems_, elems - a) * KindBytesPerElem(k));
      }
    }
  }
  if (options_.tier == Tier::kHost) {
    MT_ASSIGN_OR_RETURN(std::unique_ptr<HostStore> h, HostStore::Create(sizes, /*checksum=*/false));
    host_ = h.get();
    store_ = std::move(h);
  } else {
    MT_ASSIGN_OR_RETURN(store_, SsdStore::Create({.dir = options_.ssd_path,
                                                  .rank = options_.rank,
                                                  .block_bytes = sizes,
                                                  .engine = options_.io_engine,
                                                  .queue_depth = options_.queue_depth,
                                                  .direct_io = options_.direct_io}));
    // Staging for the pieces: the host step holds params, grads and the state of one piece; the
    // IO thread one more piece at a time.
    int64_t largest = 0;
    for (int s = 0; s < n; ++s) largest = std::max(largest, PieceElems(s, kParams));
    slot_elems_ = largest;
    std::vector<SizeClass> classes;
    const int f32_slots = 3 + (state_dtype_ == core::DType::kF32 ? n_state_ : 0);
    classes.push_back({.bytes = largest * 4, .slots = f32_slots});
    if (n_state_ > 0 && state_dtype_ != core::DType::kF32) {
      classes.push_back({.bytes = largest * KindBytesPerElem(kState), .slots = n_state_ + 1});
    }
    MT_ASSIGN_OR_RETURN(pool_, PinnedPool::Create(classes, {}));
  }
  io_ = std::make_unique<IoQueue>();

  // Everything the tier starts with: params, and zeroed optimizer state.
  for (int s = 0; s < n; ++s) {
    if (ids_[s][kParams].empty()) continue;
    MT_RETURN_IF_ERROR(TierWrite(s, kParams, model_->block(s).params().raw(), true));
  }
  if (host_opt && n_state_ > 0) {
    std::vector<char> zeros;
    for (int s = 0; s < n; ++s) {
      const std::vector<std::pair<std::string, core::Tensor>> st = opt_->State(s);
      for (int j = 0; j < n_state_; ++j) {
        if (ids_[s].size() <= static_cast<size_t>(kState + j) || ids_[s][kState + j].empty()) {
          continue;
        }
        if (st[j].second.defined()) {  // state the optimizer already has (restored, or kNow)
          MT_RETURN_IF_ERROR(TierWrite(s, kState + j, st[j].second.raw(), true));
        } else {
          zeros.assign(Elems(s) * KindBytesPerElem(kState + j), 0);
          MT_RETURN_IF_ERROR(TierWrite(s, kState + j, zeros.data(), false));
        }
      }
    }
    opt_->ReleaseState();
  } else if (train && n_state_ > 0) {
    MT_RETURN_IF_ERROR(opt_->AllocateState());
  }
  for (int s : streamed_) model_->block(s).ReleaseStorage();

  // The window.
  int64_t largest = 0;
  for (int s : streamed_) largest = std::max(largest, Elems(s));
  window_bytes_ = WindowBytes(*model_, options_);
  int64_t resident_grads = 0;  // the resident blocks' gradients, allocated below
  if (options_.gradients) {
    for (int s = 0; s < n; ++s) {
      if (!streamed_flag_[s] && !model_->block(s).has_grads()) resident_grads += Elems(s) * 4;
    }
  }
  const core::MemoryStats mem = core::GetMemoryStats(device_);
  if (mem.budget > 0 && mem.current + window_bytes_ + resident_grads > mem.budget) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "offload: the window of resident_blocks = %d needs %s of device memory (%d x %s%s)%s, "
        "and %s is already in use (resident blocks, activations); the device budget is %s. The "
        "smallest budget that works is %s: raise it, or lower resident_blocks or the batch",
        options_.resident_blocks, MiB(window_bytes_), options_.resident_blocks, MiB(largest * 4),
        options_.gradients ? " params + gradients" : " params",
        resident_grads > 0
            ? absl::StrFormat(", the resident blocks' gradients %s", MiB(resident_grads))
            : "",
        MiB(mem.current), MiB(mem.budget), MiB(mem.current + window_bytes_ + resident_grads)));
  }
  if (largest > 0) {
    slots_.resize(options_.resident_blocks);
    for (Slot& sl : slots_) {
      MT_ASSIGN_OR_RETURN(sl.params, core::Tensor::Empty({largest}, core::DType::kF32,
                                                         core::MemoryTag::kParams, device_));
      if (options_.gradients) {
        MT_ASSIGN_OR_RETURN(sl.grads, core::Tensor::Empty({largest}, core::DType::kF32,
                                                          core::MemoryTag::kGrads, device_));
      }
    }
  }
  if (options_.gradients) {
    for (int s = 0; s < n; ++s) {
      if (!streamed_flag_[s]) MT_RETURN_IF_ERROR(model_->block(s).EnsureGrads());
    }
  }
  if (opt_ != nullptr) opt_->set_step_runner(this);
  return absl::OkStatus();
}

LayerStreamer::~LayerStreamer() {
  if (opt_ != nullptr && opt_->step_runner() == this) opt_->set_step_runner(nullptr);
  for (Slot& sl : slots_) {
    (void)Wait(sl.fetch);
    (void)Wait(sl.write);
  }
  for (const Done& w : writes_) (void)Wait(w);
  for (int s : streamed_) {
    core::ParamBlock& b = model_->block(s);
    while (b.params_bound()) b.UnbindParams();
    while (b.grads_bound()) b.UnbindGrads();
  }
  if (host_bound_ && opt_ != nullptr) {
    for (int s = 0; s < model_->num_stages(); ++s) opt_->UnbindState(s);
  }
  io_.reset();
}

int64_t LayerStreamer::tier_bytes() const {
  if (store_ == nullptr) return 0;
  if (host_ == nullptr) return static_cast<SsdStore*>(store_.get())->file_bytes();
  int64_t total = 0;
  for (int64_t i = 0; i < store_->num_blocks(); ++i) total += store_->block_bytes(i);
  return total;
}

std::string LayerStreamer::ssd_file() const {
  return host_ == nullptr ? static_cast<SsdStore*>(store_.get())->path() : std::string();
}

int64_t LayerStreamer::ssd_offset(int stage) const {
  if (host_ != nullptr || ids_[stage][kParams].empty()) return -1;
  return static_cast<SsdStore*>(store_.get())->data_offset(ids_[stage][kParams][0]);
}

std::string LayerStreamer::Describe() const {
  return absl::StrFormat(
      "offload: %s tier (%s), %d of %d blocks streamed through %d slots (%s), swap batch %d, "
      "prefetch %d, optimizer %s",
      TierName(options_.tier), store_->Describe(), streamed_.size(), model_->num_stages(),
      options_.resident_blocks, MiB(window_bytes_), options_.swap_batch, options_.prefetch_depth,
      options_.optimizer_on_host ? "on the host" : "on the device");
}

// ---- the tier -----------------------------------------------------------------------------------

absl::Status LayerStreamer::Named(const absl::Status& s, int stage, int kind) const {
  if (s.ok()) return s;
  const char* what = kind == kParams ? "params" : kind == kGrads ? "gradients" : "optimizer state";
  return absl::Status(s.code(), absl::StrFormat("offload: the %s of block %s: %s", what,
                                                model_->block(stage).name(), s.message()));
}

absl::Status LayerStreamer::TierRead(int stage, int kind, void* dst, bool to_device) {
  char* out = static_cast<char*>(dst);
  core::Backend& be = core::BackendFor(device_);
  const std::vector<int64_t>& ids = ids_[stage][kind];
  for (int64_t id : ids) {
    const int64_t bytes = store_->block_bytes(id);
    if (host_ != nullptr) {
      const void* src = host_->data(id);
      if (to_device) {
        be.CopyFromHost(ctx_, out, src, bytes);
      } else {
        std::memcpy(out, src, bytes);
      }
    } else if (!to_device) {
      MT_RETURN_IF_ERROR(Named(store_->Read(id, out, bytes), stage, kind));
    } else {
      MT_ASSIGN_OR_RETURN(PinnedSlot slot, pool_->Acquire(slot_elems_ * KindBytesPerElem(kind)));
      MT_RETURN_IF_ERROR(Named(store_->Read(id, slot.data(), bytes), stage, kind));
      be.CopyFromHost(ctx_, out, slot.data(), bytes);
    }
    out += bytes;
    bytes_read_ += bytes;
  }
  return absl::OkStatus();
}

absl::Status LayerStreamer::TierWrite(int stage, int kind, const void* src, bool from_device) {
  const char* in = static_cast<const char*>(src);
  core::Backend& be = core::BackendFor(device_);
  for (int64_t id : ids_[stage][kind]) {
    const int64_t bytes = store_->block_bytes(id);
    if (host_ != nullptr) {
      void* dst = host_->data(id);
      if (from_device) {
        be.CopyToHost(ctx_, dst, in, bytes);
      } else {
        std::memcpy(dst, in, bytes);
      }
    } else if (!from_device) {
      MT_RETURN_IF_ERROR(Named(store_->Write(id, in, bytes), stage, kind));
    } else {
      MT_ASSIGN_OR_RETURN(PinnedSlot slot, pool_->Acquire(slot_elems_ * KindBytesPerElem(kind)));
      be.CopyToHost(ctx_, slot.data(), in, bytes);
      MT_RETURN_IF_ERROR(Named(store_->Write(id, slot.data(), bytes), stage, kind));
    }
    in += bytes;
    bytes_written_ += bytes;
  }
  return absl::OkStatus();
}

// ---- the window ---------------------------------------------------------------------------------

int LayerStreamer::FreeSlot(bool evict_upcoming) {
  auto upcoming = [&](int block) {
    if (block < 0) return false;
    const int end = std::min<int>(order_.size(), next_ + options_.prefetch_depth + 1);
    for (int j = next_; j < end; ++j) {
      if (order_[j] == block) return true;
    }
    return false;
  };
  int best = -1;
  for (int i = 0; i < static_cast<int>(slots_.size()); ++i) {
    const Slot& sl = slots_[i];
    if (sl.active || sl.held || sl.dirty) continue;
    if (!evict_upcoming && upcoming(sl.block)) continue;
    if (best < 0 || sl.released < slots_[best].released) best = i;
  }
  return best;
}

void LayerStreamer::Issue(int index, int stage, bool backward) {
  Slot& sl = slots_[index];
  if (sl.block >= 0) slot_index_[sl.block] = -1;
  sl.block = stage;
  sl.pass = pass_;
  slot_index_[stage] = index;
  ++stats_.fetches;
  const bool init = backward;
  const bool read_grads = backward && !grads_zero_[stage];
  sl.grads_ready = init;
  void* params = sl.params.raw();
  void* grads = sl.grads.defined() ? sl.grads.raw() : nullptr;
  const int64_t grad_bytes = Elems(stage) * static_cast<int64_t>(sizeof(float));
  core::Backend* be = &core::BackendFor(device_);
  sl.fetch = io_->Submit([this, stage, params, grads, init, read_grads, grad_bytes, be] {
    MT_RETURN_IF_ERROR(TierRead(stage, kParams, params, true));
    if (init && read_grads) return TierRead(stage, kGrads, grads, true);
    if (init) be->SetZero(ctx_, grads, grad_bytes);
    return absl::OkStatus();
  });
}

void LayerStreamer::Prefetch(bool backward) {
  const int end = std::min<int>(order_.size(), next_ + options_.prefetch_depth);
  for (int j = next_; j < end; ++j) {
    const int stage = order_[j];
    if (slot_index_[stage] >= 0) continue;
    const int i = FreeSlot(/*evict_upcoming=*/false);
    if (i < 0) return;
    Issue(i, stage, backward);
  }
}

absl::Status LayerStreamer::InitGrads(Slot& sl, int stage) {
  MT_RETURN_IF_ERROR(Wait(sl.write));  // a write-back may still be reading these gradients
  if (grads_zero_[stage]) {
    core::BackendFor(device_).SetZero(ctx_, sl.grads.raw(),
                                      Elems(stage) * static_cast<int64_t>(sizeof(float)));
  } else {
    MT_RETURN_IF_ERROR(TierRead(stage, kGrads, sl.grads.raw(), true));
  }
  sl.grads_ready = true;
  return absl::OkStatus();
}

absl::Status LayerStreamer::Use(const core::StageEvent& e, bool backward) {
  const int s = e.stage;
  core::ParamBlock& b = *e.block;
  if (!streamed_flag_[s]) return ApplyPending(b, s);
  if (e.pass == core::Pass::kLaneForward && e.lane > 0) return absl::OkStatus();  // still bound
  int pos = next_;
  while (pos < static_cast<int>(order_.size()) && order_[pos] != s) ++pos;
  if (pos == static_cast<int>(order_.size())) {
    return absl::InternalError(absl::StrFormat(
        "offload: stage %d came out of the pass's order; the streamer expects %s order", s,
        backward ? "reverse stage" : "stage"));
  }
  next_ = pos + 1;
  int i = slot_index_[s];
  if (i >= 0 && slots_[i].pass < pass_) ++stats_.cache_hits;
  if (i < 0) {
    i = FreeSlot(false);
    if (i < 0) {
      ReleaseHeld();
      i = FreeSlot(false);
    }
    if (i < 0) i = FreeSlot(true);
    if (i < 0) {
      return absl::InternalError(absl::StrFormat(
          "offload: no free slot for block %s among the %d (resident_blocks); every slot is in "
          "use",
          b.name(), slots_.size()));
    }
    Issue(i, s, backward);
  }
  Slot& sl = slots_[i];
  if (!Ready(sl.fetch)) {
    const auto t0 = Clock::now();
    ++stats_.waits;
    absl::Status st = Wait(sl.fetch);
    stats_.wait_ms += 1e3 * std::chrono::duration<double>(Clock::now() - t0).count();
    MT_RETURN_IF_ERROR(st);
  } else {
    MT_RETURN_IF_ERROR(Wait(sl.fetch));
  }
  if (backward && !sl.grads_ready) MT_RETURN_IF_ERROR(InitGrads(sl, s));
  if (sl.held) {
    sl.held = false;
    --held_;
  }
  sl.active = true;
  MT_RETURN_IF_ERROR(b.BindParams(sl.params.View(0, {b.numel()})));
  if (backward) MT_RETURN_IF_ERROR(b.BindGrads(sl.grads.View(0, {b.numel()})));
  MT_RETURN_IF_ERROR(ApplyPending(b, s));
  Prefetch(backward);
  return absl::OkStatus();
}

absl::Status LayerStreamer::Finish(int stage, bool backward) {
  const int i = slot_index_[stage];
  if (i < 0 || !slots_[i].active) {
    return absl::InternalError(absl::StrFormat("offload: block %s finished without being resident",
                                               model_->block(stage).name()));
  }
  Slot& sl = slots_[i];
  core::ParamBlock& b = model_->block(stage);
  b.UnbindParams();
  if (backward) {
    b.UnbindGrads();
    const int64_t n = b.numel();
    sqnorm_[stage] = core::BackendFor(device_).SquaredNorm(ctx_, sl.grads.f32(), n);
    has_grads_[stage] = true;
    grads_zero_[stage] = false;
    sl.grads_ready = false;
    const void* grads = sl.grads.raw();
    sl.write = io_->Submit([this, stage, grads] { return TierWrite(stage, kGrads, grads, true); });
    writes_.push_back(sl.write);
  }
  sl.active = false;
  sl.held = true;
  if (++held_ >= options_.swap_batch) ReleaseHeld();
  return absl::OkStatus();
}

void LayerStreamer::ReleaseHeld() {
  for (Slot& sl : slots_) {
    if (!sl.held) continue;
    sl.held = false;
    sl.released = ++tick_;
    if (sl.dirty) {  // a ZO2 update made here: the tier gets it before the slot is reused
      const int stage = sl.block;
      const void* params = sl.params.raw();
      sl.write =
          io_->Submit([this, stage, params] { return TierWrite(stage, kParams, params, true); });
      writes_.push_back(sl.write);
      sl.dirty = false;
    }
  }
  held_ = 0;
}

absl::Status LayerStreamer::WaitWrites() {
  absl::Status first;
  for (const Done& w : writes_) first.Update(Wait(w));
  writes_.clear();
  return first;
}

absl::Status LayerStreamer::DrainAll() {
  ReleaseHeld();
  absl::Status first = WaitWrites();
  for (Slot& sl : slots_) {
    absl::Status f = Wait(sl.fetch);
    if (!f.ok()) {  // a failed fetch leaves nothing usable in the slot
      if (sl.block >= 0) slot_index_[sl.block] = -1;
      sl.block = -1;
      sl.fetch = Done();
    }
    first.Update(f);
    first.Update(Wait(sl.write));
  }
  return first;
}

void LayerStreamer::InvalidateSlots() {
  for (Slot& sl : slots_) {
    if (sl.active) continue;
    if (sl.block >= 0) slot_index_[sl.block] = -1;
    sl.block = -1;
    sl.fetch = Done();
  }
}

// ---- hooks --------------------------------------------------------------------------------------

absl::Status LayerStreamer::BeginPass(const core::PassEvent& e) {
  if (host_bound_) {
    return absl::FailedPreconditionError(
        "offload: a pass started while the host copies are bound; call UnbindHostCopies first");
  }
  ++pass_;
  lanes_ = e.lanes;
  next_ = 0;
  order_ = streamed_;
  const bool backward = e.pass == core::Pass::kBackward;
  if (backward) std::reverse(order_.begin(), order_.end());
  // The first block now, and prefetch_depth more.
  const int end = std::min<int>(order_.size(), options_.prefetch_depth + 1);
  for (int j = 0; j < end; ++j) {
    if (slot_index_[order_[j]] >= 0) continue;
    const int i = FreeSlot(false);
    if (i < 0) break;
    Issue(i, order_[j], backward);
  }
  return absl::OkStatus();
}

absl::Status LayerStreamer::EndPass(const core::PassEvent&) {
  ReleaseHeld();
  absl::Status first;
  std::vector<Done> left;
  for (const Done& w : writes_) {
    if (Ready(w)) {
      first.Update(Wait(w));
    } else {
      left.push_back(w);
    }
  }
  writes_ = std::move(left);
  return first;
}

absl::Status LayerStreamer::BeforeForward(const core::StageEvent& e) { return Use(e, false); }
absl::Status LayerStreamer::BeforeBackward(const core::StageEvent& e) { return Use(e, true); }

absl::Status LayerStreamer::AfterForward(const core::StageEvent& e) {
  if (!streamed_flag_[e.stage]) return absl::OkStatus();
  if (e.pass == core::Pass::kLaneForward && e.lane < lanes_ - 1) return absl::OkStatus();
  return Finish(e.stage, false);
}

absl::Status LayerStreamer::AfterBackward(const core::StageEvent& e) {
  if (!streamed_flag_[e.stage]) return absl::OkStatus();
  return Finish(e.stage, true);
}

void LayerStreamer::OnZeroGrad() { std::fill(grads_zero_.begin(), grads_zero_.end(), true); }

double LayerStreamer::GradNorm() const {
  double sum = 0.0;
  for (int s = 0; s < model_->num_stages(); ++s) {
    if (streamed_flag_[s]) {
      if (has_grads_[s]) sum += sqnorm_[s];
      continue;
    }
    const core::Tensor& g = model_->block(s).grads();
    if (!g.defined()) continue;
    sum += core::BackendFor(g.device()).SquaredNorm(ctx_, g.f32(), g.numel());
  }
  return std::sqrt(sum);
}

// ---- the step -----------------------------------------------------------------------------------

void LayerStreamer::RunStep(optim::Optimizer& opt, float grad_scale) {
  if (!status_.ok()) return;
  if (!opt.needs_grads() || !options_.gradients) {  // ZO2: each block's update on arrival
    std::fill(pending_.begin(), pending_.end(), true);
    pending_scale_ = grad_scale;
    return;
  }
  status_ = DrainAll();
  if (!status_.ok()) return;
  InvalidateSlots();  // the params change on the tier
  for (int s = 0; s < model_->num_stages() && status_.ok(); ++s) {
    status_ = options_.optimizer_on_host ? StepOnHost(opt, s, grad_scale)
                                         : StepOnDevice(opt, s, grad_scale);
  }
}

absl::Status LayerStreamer::StepOnHost(optim::Optimizer& opt, int stage, float grad_scale) {
  core::ParamBlock& b = model_->block(stage);
  const int64_t n = b.numel();
  if (n == 0) return absl::OkStatus();
  const bool streamed = streamed_flag_[stage];
  if (streamed ? !has_grads_[stage] : !b.grads().defined()) return absl::OkStatus();
  core::Backend& be = core::BackendFor(device_);
  if (host_ != nullptr) {  // host memory: in place
    optim::BlockRange r{.stage = stage,
                        .begin = 0,
                        .count = n,
                        .params = static_cast<float*>(host_->data(ids_[stage][kParams][0])),
                        .grads = static_cast<float*>(host_->data(ids_[stage][kGrads][0])),
                        .state = {},
                        .device = core::Device::Cpu()};
    for (int j = 0; j < n_state_; ++j) r.state.push_back(host_->data(ids_[stage][kState + j][0]));
    if (!streamed) {
      be.CopyToHost(ctx_, const_cast<float*>(r.grads), b.grads().raw(), n * sizeof(float));
    }
    opt.StepRange(r, grad_scale);
    if (!streamed) be.CopyFromHost(ctx_, b.params().raw(), r.params, n * sizeof(float));
    return absl::OkStatus();
  }
  // SSD: piece by piece through the pinned pool.
  const size_t pieces = ids_[stage][kParams].size();
  for (size_t k = 0; k < pieces; ++k) {
    const int64_t a = static_cast<int64_t>(k) * piece_elems_;
    const int64_t m = std::min(piece_elems_, n - a);
    MT_ASSIGN_OR_RETURN(PinnedSlot p, pool_->Acquire(slot_elems_ * 4));
    MT_ASSIGN_OR_RETURN(PinnedSlot g, pool_->Acquire(slot_elems_ * 4));
    std::vector<PinnedSlot> st;
    optim::BlockRange r{.stage = stage,
                        .begin = a,
                        .count = m,
                        .params = static_cast<float*>(p.data()),
                        .grads = static_cast<float*>(g.data()),
                        .state = {},
                        .device = core::Device::Cpu()};
    MT_RETURN_IF_ERROR(
        Named(store_->Read(ids_[stage][kParams][k], p.data(), m * 4), stage, kParams));
    if (streamed) {
      MT_RETURN_IF_ERROR(
          Named(store_->Read(ids_[stage][kGrads][k], g.data(), m * 4), stage, kGrads));
    } else {
      be.CopyToHost(ctx_, g.data(), b.grads().f32() + a, m * 4);
    }
    for (int j = 0; j < n_state_; ++j) {
      const int64_t eb = KindBytesPerElem(kState + j);
      MT_ASSIGN_OR_RETURN(PinnedSlot t, pool_->Acquire(slot_elems_ * eb));
      MT_RETURN_IF_ERROR(
          Named(store_->Read(ids_[stage][kState + j][k], t.data(), m * eb), stage, kState + j));
      r.state.push_back(t.data());
      st.push_back(std::move(t));
    }
    bytes_read_ += m * (streamed ? 8 : 4);
    opt.StepRange(r, grad_scale);
    MT_RETURN_IF_ERROR(
        Named(store_->Write(ids_[stage][kParams][k], p.data(), m * 4), stage, kParams));
    for (int j = 0; j < n_state_; ++j) {
      const int64_t eb = KindBytesPerElem(kState + j);
      MT_RETURN_IF_ERROR(Named(store_->Write(ids_[stage][kState + j][k], st[j].data(), m * eb),
                               stage, kState + j));
      bytes_read_ += m * eb;
      bytes_written_ += m * eb;
    }
    bytes_written_ += m * 4;
    if (!streamed) be.CopyFromHost(ctx_, b.params().f32() + a, p.data(), m * 4);
  }
  return absl::OkStatus();
}

absl::Status LayerStreamer::StepOnDevice(optim::Optimizer& opt, int stage, float grad_scale) {
  core::ParamBlock& b = model_->block(stage);
  if (!streamed_flag_[stage]) {
    opt.StepBlock(stage, grad_scale);
    return absl::OkStatus();
  }
  if (!has_grads_[stage]) return absl::OkStatus();
  Slot& sl = slots_[0];  // the window is drained and invalidated
  MT_RETURN_IF_ERROR(TierRead(stage, kParams, sl.params.raw(), true));
  MT_RETURN_IF_ERROR(TierRead(stage, kGrads, sl.grads.raw(), true));
  MT_RETURN_IF_ERROR(b.BindParams(sl.params.View(0, {b.numel()})));
  MT_RETURN_IF_ERROR(b.BindGrads(sl.grads.View(0, {b.numel()})));
  opt.StepBlock(stage, grad_scale);
  b.UnbindGrads();
  b.UnbindParams();
  return TierWrite(stage, kParams, sl.params.raw(), true);
}

absl::Status LayerStreamer::ApplyPending(core::ParamBlock& block, int stage) {
  if (!pending_[stage]) return absl::OkStatus();
  pending_[stage] = false;
  opt_->StepBlock(stage, pending_scale_);
  if (streamed_flag_[stage]) slots_[slot_index_[stage]].dirty = true;
  return absl::OkStatus();
}

absl::Status LayerStreamer::Flush() {
  MT_RETURN_IF_ERROR(DrainAll());
  InvalidateSlots();
  for (int s = 0; s < model_->num_stages(); ++s) {
    if (!pending_[s]) continue;
    core::ParamBlock& b = model_->block(s);
    if (!streamed_flag_[s]) {
      MT_RETURN_IF_ERROR(ApplyPending(b, s));
      continue;
    }
    pending_[s] = false;
    Slot& sl = slots_[0];
    MT_RETURN_IF_ERROR(TierRead(s, kParams, sl.params.raw(), true));
    MT_RETURN_IF_ERROR(b.BindParams(sl.params.View(0, {b.numel()})));
    opt_->StepBlock(s, pending_scale_);
    b.UnbindParams();
    MT_RETURN_IF_ERROR(TierWrite(s, kParams, sl.params.raw(), true));
  }
  return absl::OkStatus();
}

// ---- host copies (checkpoints) ------------------------------------------------------------------

absl::Status LayerStreamer::BindHostCopies() {
  if (host_bound_) return absl::OkStatus();
  MT_RETURN_IF_ERROR(Flush());
  auto host_tensor = [&](int s, int kind, core::DType dtype) -> absl::StatusOr<core::Tensor> {
    const int64_t n = Elems(s);
    if (host_ != nullptr) {
      return core::Tensor::Wrap(host_->data(ids_[s][kind][0]), {n}, dtype);
    }
    host_copies_.emplace_back(new char[n * KindBytesPerElem(kind)]);
    MT_RETURN_IF_ERROR(TierRead(s, kind, host_copies_.back().get(), false));
    return core::Tensor::Wrap(host_copies_.back().get(), {n}, dtype);
  };
  for (int s : streamed_) {
    MT_ASSIGN_OR_RETURN(core::Tensor p, host_tensor(s, kParams, core::DType::kF32));
    MT_RETURN_IF_ERROR(model_->block(s).BindParams(p));
  }
  const bool host_state = options_.gradients && opt_ != nullptr && opt_->needs_grads() &&
                          options_.optimizer_on_host && n_state_ > 0;
  if (host_state) {
    for (int s = 0; s < model_->num_stages(); ++s) {
      if (Elems(s) == 0) continue;
      std::vector<core::Tensor> st;
      for (int j = 0; j < n_state_; ++j) {
        MT_ASSIGN_OR_RETURN(core::Tensor t, host_tensor(s, kState + j, state_dtype_));
        st.push_back(t);
      }
      MT_RETURN_IF_ERROR(opt_->BindState(s, std::move(st)));
    }
  }
  host_bound_ = true;
  return absl::OkStatus();
}

absl::Status LayerStreamer::UnbindHostCopies(bool write_back) {
  if (!host_bound_) return absl::OkStatus();
  absl::Status first;
  const bool host_state = options_.gradients && opt_ != nullptr && opt_->needs_grads() &&
                          options_.optimizer_on_host && n_state_ > 0;
  for (int s = 0; s < model_->num_stages(); ++s) {
    core::ParamBlock& b = model_->block(s);
    if (Elems(s) == 0) continue;
    if (write_back && host_ == nullptr && streamed_flag_[s]) {
      first.Update(TierWrite(s, kParams, b.params().raw(), false));
    }
    if (write_back && !streamed_flag_[s] && !ids_[s][kParams].empty()) {
      first.Update(TierWrite(s, kParams, b.params().raw(), true));  // the host master copy
    }
    if (streamed_flag_[s]) b.UnbindParams();
    if (host_state) {
      if (write_back && host_ == nullptr) {
        const std::vector<std::pair<std::string, core::Tensor>> st = opt_->State(s);
        for (int j = 0; j < n_state_; ++j) {
          first.Update(TierWrite(s, kState + j, st[j].second.raw(), false));
        }
      }
      opt_->UnbindState(s);
    }
  }
  host_copies_.clear();
  host_bound_ = false;
  if (write_back) InvalidateSlots();
  return first;
}

}  // namespace memtrain::offload

// Layer-wise offload: the blocks of a model live on a tier (host memory or an SSD file) and pass
// through a window of k device slots as the engine needs them. A kMemory hook set on
// core::Engine, and the optimizer's step runner.
//
//   MT_ASSIGN_OR_RETURN(auto streamer, offload::LayerStreamer::Create(
//       model, opt, {.tier = offload::Tier::kSsd, .ssd_path = "/nvme/tmp",
//                    .resident_blocks = 3, .prefetch_depth = 1}));
//   engine.AddHooks(streamer.get());          // before any other kMemory hook (ZO's)
//   engine.Forward(batch); engine.Backward(batch);
//   double norm = streamer->GradNorm();       // the global norm, as optim::GlobalGradNorm
//   opt->Step(optim::ClipScale(norm, 1.0));   // runs through the streamer
//   MT_RETURN_IF_ERROR(streamer->status());
//
// Which blocks stream: every stage's block except those another stage also reads and the stages
// that read them (for GPT-2 the embedding, tied to the head, and the head stay resident on the
// device); the transformer layers stream.
//
// The window. A streamed block is fetched into a free slot (params; in a backward also its
// gradient, zeroed or read back when accumulating) up to `prefetch_depth` blocks ahead of the
// one computing, on one IO thread, so transfers overlap compute. At most `resident_blocks` (k)
// are in slots at once; a finished block is held until `swap_batch` (k') are finished, then they
// are released together (their slots keep the bytes, so a block still there when it is needed
// again, e.g. the last blocks of a forward that are the first of the backward, is not read
// again). A backward walks the blocks in reverse; a block's gradient leaves for the tier after
// its data-parallel reduction (the engine runs kMemory hooks after it), with its squared norm.
//
// The step. With optimizer_on_host, every block's optimizer state lives with the block on the
// tier and the optimizer updates it there, on the host (optim::Optimizer::StepRange over host
// buffers: the tier's memory in place, or SSD pieces read into the pinned pool), so optimizer
// state never takes device memory; a resident block's gradient is copied to the host for it and
// its new params copied back. Without it, the state is on the device and a streamed block's
// params and gradient come into the window for the update. For a zeroth-order optimizer
// (gradients = false, ZO2) the update of a step is applied to each block when it next arrives,
// in the next step's forward, so every block is read once per step; Flush applies what is left
// (before checkpoints and at the end).
//
// The arithmetic is the optimizer's and the model's own, on the same values in the same order:
// a run with offload is bit-identical to one without (tests/offload/streamer_test.cc).
#ifndef MEMTRAIN_OFFLOAD_STREAMER_H_
#define MEMTRAIN_OFFLOAD_STREAMER_H_

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "core/engine.h"
#include "offload/pinned_pool.h"
#include "offload/tier_store.h"
#include "optim/optimizer.h"

namespace memtrain::offload {

enum class Tier { kHost, kSsd };
const char* TierName(Tier tier);

struct StreamerOptions {
  Tier tier = Tier::kHost;
  std::string ssd_path;  // kSsd: an existing directory; the rank's file is created there
  int rank = 0;
  IoEngine io_engine = IoEngine::kUring;
  int queue_depth = 8;
  DirectIo direct_io = DirectIo::kAuto;
  int resident_blocks = 2;  // k: streamed blocks in device slots at once (>= 2 with gradients)
  int swap_batch = 1;       // k': finished blocks released together (1..k)
  int prefetch_depth = 1;   // blocks fetched ahead of the one computing (0..k-1)
  bool optimizer_on_host = true;
  bool gradients = true;  // false: forward-only training (zeroth-order), no gradient window
  // SSD: tensors are stored in pieces of at most this many bytes (the unit of IO, checksums and
  // the host step's buffers).
  int64_t piece_bytes = 16 << 20;
};

struct StreamerStats {
  int64_t fetches = 0;     // blocks read from the tier into the window
  int64_t cache_hits = 0;  // blocks found still in a slot
  int64_t bytes_read = 0, bytes_written = 0;
  int64_t waits = 0;     // fetches the compute thread had to wait for
  double wait_ms = 0.0;  // time it waited
};

// The device bytes of a streamer's window for `model` (k slots of the largest streamed block:
// params, and gradients when training), without creating anything.
int64_t WindowBytes(core::Model& model, const StreamerOptions& options);
// The stages whose blocks stay resident (see above).
std::vector<int> ResidentStages(core::Model& model);

class LayerStreamer final : public core::StageHooks, public optim::StepRunner {
 public:
  // Writes every streamed block (and, with optimizer_on_host, every block's params and zeroed
  // state) to the tier, frees the streamed blocks' own storage (core::ParamBlock::ReleaseStorage)
  // and the optimizer's state, allocates the window on the blocks' device, and installs itself
  // as `opt`'s step runner (opt may be null: evaluation only). Errors: InvalidArgument naming the
  // option for a bad k, k', depth; the tier's errors (a missing directory, a full disk);
  // ResourceExhausted when the window does not fit the device's budget, with the smallest
  // budget that works. The model and optimizer must outlive the streamer.
  static absl::StatusOr<std::unique_ptr<LayerStreamer>> Create(core::Model* model,
                                                               optim::Optimizer* opt,
                                                               StreamerOptions options);
  ~LayerStreamer() override;

  core::HookRole role() const override { return core::HookRole::kMemory; }
  absl::Status BeginPass(const core::PassEvent& e) override;
  absl::Status EndPass(const core::PassEvent& e) override;
  absl::Status BeforeForward(const core::StageEvent& e) override;
  absl::Status AfterForward(const core::StageEvent& e) override;
  absl::Status BeforeBackward(const core::StageEvent& e) override;
  absl::Status AfterBackward(const core::StageEvent& e) override;
  void OnZeroGrad() override;

  // optim::StepRunner: the step over every block (see above). Errors are kept in status().
  void RunStep(optim::Optimizer& opt, float grad_scale) override;
  // The first error of a step (OK if none); sticky.
  const absl::Status& status() const { return status_; }

  // sqrt of the sum of the blocks' squared gradient norms, in stage order and in double: the
  // same number as optim::GlobalGradNorm over the same gradients without offload.
  double GradNorm() const;

  // Applies pending (ZO2) updates to every block and waits for every transfer.
  absl::Status Flush();
  // Makes every block's params and optimizer state readable and writable as whole host tensors
  // (checkpoints save and restore through them): bound to the tier's memory (host tier) or to
  // host copies read from the SSD. UnbindHostCopies(write_back) puts changes back on the tier.
  absl::Status BindHostCopies();
  absl::Status UnbindHostCopies(bool write_back);

  const StreamerOptions& options() const { return options_; }
  StreamerStats stats() const {
    StreamerStats s = stats_;
    s.bytes_read = bytes_read_.load();
    s.bytes_written = bytes_written_.load();
    return s;
  }
  const std::vector<int>& streamed() const { return streamed_; }
  int64_t window_bytes() const { return window_bytes_; }
  // Bytes the tier holds (host memory or the SSD file) and the pinned pool's reservation.
  int64_t tier_bytes() const;
  int64_t pool_bytes() const { return pool_ ? pool_->bytes_reserved() : 0; }
  // SSD tier: the rank's file, and the byte offset in it where the params of `stage` start.
  std::string ssd_file() const;
  int64_t ssd_offset(int stage) const;
  std::string Describe() const;

 private:
  using Done = std::shared_future<absl::Status>;
  // One IO thread: tasks run in submission order (so a read queued after a write of the same
  // bytes sees them).
  class IoQueue {
   public:
    IoQueue();
    ~IoQueue();
    Done Submit(std::function<absl::Status()> fn);

   private:
    std::mutex mu_;
    std::condition_variable cv_;
    std::deque<std::pair<std::function<absl::Status()>, std::promise<absl::Status>>> tasks_;
    bool stop_ = false;
    std::thread thread_;
  };
  enum Kind { kParams = 0, kGrads = 1, kState = 2 };  // state j is kind kState + j
  enum class GradInit { kNone, kZero, kRead };
  struct Slot {
    core::Tensor params, grads;  // device, the largest streamed block
    int block = -1;              // whose params the slot holds (or is fetching)
    bool active = false;         // bound to its block for the current stage
    bool held = false;           // finished, waiting for its swap batch
    bool dirty = false;          // params changed here (a ZO2 update), not yet on the tier
    bool grads_ready = false;    // grads hold the block's gradient so far in this backward
    Done fetch;                  // the transfer filling it
    Done write;                  // the last write-back reading it
    int64_t pass = 0;            // the pass its fetch was issued in
    int64_t released = 0;        // when it was last released (least recent is reused first)
  };

  LayerStreamer(core::Model* model, optim::Optimizer* opt, StreamerOptions options);
  absl::Status Init();

  // The tier: tensor (stage, kind) is stored as pieces ids_[stage][kind][0..].
  int64_t Elems(int stage) const;
  int64_t KindBytesPerElem(int kind) const;
  int64_t PieceElems(int stage, int kind) const;
  absl::Status TierRead(int stage, int kind, void* dst_device, bool to_device);
  absl::Status TierWrite(int stage, int kind, const void* src, bool from_device);
  absl::Status Named(const absl::Status& s, int stage, int kind) const;

  // The window.
  int FreeSlot(bool evict_upcoming);  // -1 if none
  void Issue(int slot, int stage, bool backward);
  absl::Status Use(const core::StageEvent& e, bool backward);
  void Prefetch(bool backward);
  absl::Status InitGrads(Slot& slot, int stage);
  absl::Status Finish(int stage, bool backward);
  void ReleaseHeld();
  absl::Status WaitWrites();
  absl::Status DrainAll();
  void InvalidateSlots();

  // The step.
  absl::Status StepOnHost(optim::Optimizer& opt, int stage, float grad_scale);
  absl::Status StepOnDevice(optim::Optimizer& opt, int stage, float grad_scale);
  absl::Status ApplyPending(core::ParamBlock& block, int stage);

  core::Model* model_;
  optim::Optimizer* opt_;
  StreamerOptions options_;
  core::Device device_;
  core::ExecContext ctx_;
  std::vector<int> streamed_;                           // stages in order
  std::vector<bool> streamed_flag_;                     // per stage
  std::vector<int> slot_index_;                         // per stage: the slot holding it, or -1
  std::vector<std::vector<std::vector<int64_t>>> ids_;  // [stage][kind] -> piece ids
  int n_state_ = 0;
  core::DType state_dtype_ = core::DType::kF32;
  std::unique_ptr<TierStore> store_;
  HostStore* host_ = nullptr;  // store_ when the tier is host memory
  std::unique_ptr<PinnedPool> pool_;
  int64_t piece_elems_ = 0;
  int64_t slot_elems_ = 0;  // the largest piece: the pool's slots hold one
  std::vector<Slot> slots_;
  int64_t window_bytes_ = 0;
  std::unique_ptr<IoQueue> io_;
  std::vector<Done> writes_;  // outstanding write-backs

  // The current pass.
  std::vector<int> order_;  // streamed stages in the order the pass uses them
  int next_ = 0;            // position in order_ of the stage after the current one
  int lanes_ = 1;
  int held_ = 0;
  int64_t tick_ = 0;
  int64_t pass_ = 0;

  std::vector<bool> grads_zero_;  // a stage's gradient on the tier is (logically) zero
  std::vector<bool> has_grads_;   // a backward has reached the stage
  std::vector<double> sqnorm_;    // of each streamed stage's last gradient
  std::vector<bool> pending_;     // ZO2: the last step's update not applied yet
  float pending_scale_ = 1.0f;
  std::vector<std::unique_ptr<char[]>> host_copies_;  // BindHostCopies on the SSD tier
  bool host_bound_ = false;
  absl::Status status_;
  StreamerStats stats_;                                    // the compute thread's counters
  std::atomic<int64_t> bytes_read_{0}, bytes_written_{0};  // counted on both threads
};

}  // namespace memtrain::offload

#endif  // MEMTRAIN_OFFLOAD_STREAMER_H_

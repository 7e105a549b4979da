// Job specs: parse errors with file:line:column, --set overrides, defaults made explicit, and
// semantic errors naming the field path.
#include "launcher/spec.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "absl/strings/str_join.h"
#include "launcher/field_names.h"

namespace memtrain::launcher {
namespace {

constexpr char kGood[] = R"(
model { gpt { n_layer: 2 n_head: 2 n_embd: 32 vocab_size: 256 max_seq_len: 64 } }
data { train_tokens: "t.bin" }
train { steps: 20 batch_size: 2 seq_len: 32 }
optimizer { adamw { lr: 1e-3 } }
parallel { data: 2 }
)";

Job Filled(const std::string& text) {
  Job job = ParseJobText(text, "job.pbtxt").value();
  FillDefaults(&job);
  return job;
}

TEST(SpecTest, ParseErrorsGiveFileLineColumn) {
  auto r = ParseJobText("train {\n  steps: 10\n  stepz: 3\n}\n", "job.pbtxt");
  ASSERT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("job.pbtxt:3:8:"), std::string::npos) << r.status();
  EXPECT_NE(r.status().message().find("stepz"), std::string::npos);
  auto wrong_type = ParseJobText("train { steps: \"ten\" }", "j.pbtxt");
  EXPECT_NE(wrong_type.status().message().find("j.pbtxt:1:16:"), std::string::npos)
      << wrong_type.status();
  EXPECT_EQ(ParseJobFile("/nonexistent/job.pbtxt").status().code(), absl::StatusCode::kNotFound);
}

TEST(SpecTest, DefaultsBecomeExplicit) {
  Job job = Filled(kGood);
  EXPECT_TRUE(job.train().has_grad_accum());
  EXPECT_EQ(job.train().grad_accum(), 1);
  EXPECT_TRUE(job.optimizer().adamw().has_beta2());
  EXPECT_FLOAT_EQ(job.optimizer().adamw().beta2(), 0.999f);
  EXPECT_TRUE(job.schedule().has_decay());
  EXPECT_NE(JobToText(job).find("grad_accum: 1"), std::string::npos);
  // No optimizer given: AdamW with its defaults.
  Job bare = Filled("data { train_tokens: \"t.bin\" }");
  EXPECT_TRUE(bare.optimizer().has_adamw());
  EXPECT_TRUE(bare.model().has_gpt());
  EXPECT_TRUE(ValidateJob(bare, 1).ok());
}

TEST(SpecTest, OverridesSetNestedFieldsAndNameUnknownOnes) {
  Job job = ParseJobText(kGood, "job").value();
  ASSERT_TRUE(ApplyOverride(&job, "train.steps=7").ok());
  ASSERT_TRUE(ApplyOverride(&job, "optimizer.adamw.lr=2e-4").ok());
  ASSERT_TRUE(ApplyOverride(&job, "data.val_tokens=v.bin").ok());
  ASSERT_TRUE(ApplyOverride(&job, "schedule.decay=COSINE").ok());
  EXPECT_EQ(job.train().steps(), 7);
  EXPECT_FLOAT_EQ(job.optimizer().adamw().lr(), 2e-4f);
  EXPECT_EQ(job.data().val_tokens(), "v.bin");
  EXPECT_EQ(job.schedule().decay(), Schedule::COSINE);
  absl::Status s = ApplyOverride(&job, "train.stepz=3");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("stepz"), std::string::npos);
  EXPECT_NE(s.message().find("steps"), std::string::npos);  // lists the known fields
  EXPECT_FALSE(ApplyOverride(&job, "train.steps=ten").ok());
  EXPECT_FALSE(ApplyOverride(&job, "train.steps").ok());
}

TEST(SpecTest, SemanticErrorsNameTheFieldAndTheFix) {
  struct Case {
    const char* set;
    int world;
    const char* expect;
  };
  const Case cases[] = {
      {"train.steps=10", 3, "= 2 but the job was started with 3 ranks"},
      {"optimizer.adamw.lr=0", 2, "optimizer.adamw.lr = 0: must be > 0"},
      {"optimizer.adamw.beta1=1", 2, "optimizer.adamw.beta1 = 1: must be in [0, 1)"},
      {"optimizer.adamw.weight_decay=-0.1", 2, "optimizer.adamw.weight_decay"},
      {"train.batch_size=0", 2, "train.batch_size = 0: must be >= 1"},
      {"train.seq_len=65", 2, "train.seq_len = 65: exceeds model.gpt.max_seq_len = 64"},
      {"model.gpt.n_head=3", 2, "model.gpt.n_embd = 32 is not a multiple of model.gpt.n_head"},
      {"parallel.sequence=4", 8,
       "parallel.sequence = 4 is more than the model's 2 attention heads"},
      {"data.train_tokens=", 2, "data.train_tokens"},
      {"schedule.min_lr_ratio=2", 2, "schedule.min_lr_ratio = 2: must be in [0, 1]"},
      {"optimizer.lion.lr=0", 2, "optimizer.lion.lr = 0: must be > 0"},
      {"optimizer.lion.beta2=1", 2, "optimizer.lion.beta2 = 1: must be in [0, 1)"},
      {"optimizer.lion.beta1=-0.1", 2, "optimizer.lion.beta1 = -0.1: must be in [0, 1)"},
      {"optimizer.lion.weight_decay=-1", 2, "optimizer.lion.weight_decay = -1: must be >= 0"},
      {"optimizer.lion.tau=0", 2, "optimizer.lion.tau = 0: must be > 0"},
      {"optimizer.sgd.lr=-1", 2, "optimizer.sgd.lr = -1: must be > 0"},
      {"optimizer.sgd.nesterov=true", 2, "Nesterov momentum needs momentum > 0"},
      {"optimizer.clip_grad_norm=-1", 2, "optimizer.clip_grad_norm = -1: must be >= 0"},
  };
  for (const Case& c : cases) {
    Job job = ParseJobText(kGood, "job").value();
    ASSERT_TRUE(ApplyOverride(&job, c.set).ok()) << c.set;
    FillDefaults(&job);
    absl::Status s = ValidateJob(job, c.world);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << c.set;
    EXPECT_NE(s.message().find(c.expect), std::string::npos) << c.set << " -> " << s;
  }
  EXPECT_TRUE(ValidateJob(Filled(kGood), 2).ok());
  // An unknown Lion-K direction is refused where it is written.
  Job job = ParseJobText(kGood, "job").value();
  absl::Status k = ApplyOverride(&job, "optimizer.lion.k=L2");
  EXPECT_EQ(k.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(k.message().find("optimizer.lion.k"), std::string::npos) << k;
  auto parsed = ParseJobText("optimizer { lion { k: CUBIC } }", "j.pbtxt");
  EXPECT_NE(parsed.status().message().find("j.pbtxt:1:"), std::string::npos) << parsed.status();
  EXPECT_NE(parsed.status().message().find("CUBIC"), std::string::npos);
  // Setting a Lion field switches the optimizer from AdamW to Lion.
  ASSERT_TRUE(ApplyOverride(&job, "optimizer.lion.lr=3e-4").ok());
  EXPECT_TRUE(job.optimizer().has_lion());
  EXPECT_FALSE(job.optimizer().has_adamw());
  ASSERT_TRUE(ApplyOverride(&job, "optimizer.no_decay=wpe").ok());
  EXPECT_EQ(job.optimizer().no_decay(0), "wpe");
  absl::Status files = ValidateFiles(Filled(kGood));
  EXPECT_EQ(files.code(), absl::StatusCode::kNotFound);
  EXPECT_NE(files.message().find("data.train_tokens = \"t.bin\""), std::string::npos);
}

// ---- offload ----

Job WithOffload(const std::vector<std::string>& sets) {
  Job job = ParseJobText(kGood, "job").value();
  for (const std::string& set : sets) EXPECT_TRUE(ApplyOverride(&job, set).ok()) << set;
  FillDefaults(&job);
  return job;
}

TEST(SpecTest, OffloadRulesNameTheFieldAndTheFix) {
  struct Case {
    std::vector<std::string> sets;
    int world;
    const char* expect;
  };
  const Case cases[] = {
      {{"offload.tier=HOST", "offload.resident_blocks=1"},
       2,
       "offload.resident_blocks = 1: must be >= 2 when training with gradients"},
      {{"offload.tier=SSD", "offload.ssd_path=/tmp", "offload.resident_blocks=0"},
       2,
       "offload.resident_blocks = 0: must be >= 2"},
      {{"offload.tier=HOST", "optimizer.zo.lr=1e-6", "offload.resident_blocks=0"},
       2,
       "offload.resident_blocks = 0: must be >= 1"},
      {{"offload.tier=HOST", "offload.swap_batch=0"},
       2,
       "offload.swap_batch = 0: must be in [1, offload.resident_blocks = 2]"},
      {{"offload.tier=HOST", "offload.resident_blocks=3", "offload.swap_batch=4"},
       2,
       "offload.swap_batch = 4: must be in [1, offload.resident_blocks = 3]"},
      {{"offload.tier=HOST", "offload.prefetch_depth=-1"},
       2,
       "offload.prefetch_depth = -1: must be in [0, offload.resident_blocks - 1 = 1]"},
      {{"offload.tier=HOST", "offload.prefetch_depth=2"},
       2,
       "offload.prefetch_depth = 2: must be in [0, offload.resident_blocks - 1 = 1]"},
      {{"offload.tier=SSD", "offload.ssd_path=/tmp", "offload.queue_depth=0"},
       2,
       "offload.queue_depth = 0: must be in [1, 4096]"},
      {{"offload.tier=SSD", "offload.ssd_path=/tmp", "offload.queue_depth=4097"},
       2,
       "offload.queue_depth = 4097: must be in [1, 4096]"},
      {{"offload.tier=HOST", "offload.device_budget_mib=-1"},
       2,
       "offload.device_budget_mib = -1: must be >= 0"},
      {{"offload.tier=SSD", "offload.ssd_path=/tmp", "offload.piece_mib=0"},
       2,
       "offload.piece_mib = 0: must be in [1, 1024]"},
      {{"offload.tier=SSD", "offload.ssd_path=/tmp", "offload.piece_mib=1025"},
       2,
       "offload.piece_mib = 1025: must be in [1, 1024]"},
      {{"offload.tier=SSD"}, 2, "offload.ssd_path = \"\": the SSD tier needs a directory"},
      {{"offload.tier=HOST", "train.device=cuda"},
       2,
       "offload.tier = HOST: offload on CUDA is not built yet; use train.device \"cpu\""},
      {{"offload.tier=SSD", "offload.ssd_path=/tmp", "parallel.data=1", "parallel.sequence=2"},
       2,
       "offload.tier = SSD: offload does not run with sequence parallelism yet "
       "(parallel.sequence = 2)"},
      {{"offload.device_budget_mib=64"},
       2,
       "offload.device_budget_mib = 64: applies only with an offload tier"},
  };
  for (const Case& c : cases) {
    const std::string what = absl::StrJoin(c.sets, " ");
    Job job = WithOffload(c.sets);
    absl::Status s = ValidateJob(job, c.world);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << what << " -> " << s;
    EXPECT_NE(s.message().find(c.expect), std::string::npos) << what << " -> " << s;
  }
  // Valid: the defaults of each tier, the limits of every range, zo with one slot.
  for (const std::vector<std::string>& ok : std::vector<std::vector<std::string>>{
           {"offload.tier=HOST"},
           {"offload.tier=SSD", "offload.ssd_path=/no/such/dir"},  // files: ValidateFiles
           {"offload.tier=HOST", "offload.resident_blocks=4", "offload.swap_batch=4",
            "offload.prefetch_depth=3", "offload.queue_depth=4096", "offload.piece_mib=1024",
            "offload.device_budget_mib=64"},
           {"offload.tier=SSD", "offload.ssd_path=/tmp", "offload.swap_batch=1",
            "offload.prefetch_depth=0", "offload.queue_depth=1", "offload.piece_mib=1"},
           {"offload.tier=HOST", "optimizer.zo.lr=1e-6", "offload.resident_blocks=1",
            "offload.prefetch_depth=0"},
           // Without a tier the other offload fields are not used, so not checked.
           {"offload.resident_blocks=0", "offload.piece_mib=0"},
       }) {
    EXPECT_TRUE(ValidateJob(WithOffload(ok), 2).ok())
        << absl::StrJoin(ok, " ") << " -> " << ValidateJob(WithOffload(ok), 2);
  }
}

TEST(SpecTest, OffloadSsdPathMustBeAnExistingDirectory) {
  namespace fs = std::filesystem;
  const fs::path dir = fs::path(::testing::TempDir()) / "spec_test_offload";
  fs::remove_all(dir);
  fs::create_directories(dir / "ssd");
  const std::string tokens = (dir / "t.bin").string();
  std::ofstream(tokens) << "tokens";
  auto files = [&](const std::string& ssd_path) {
    return ValidateFiles(WithOffload(
        {"data.train_tokens=" + tokens, "offload.tier=SSD", "offload.ssd_path=" + ssd_path}));
  };
  EXPECT_TRUE(files((dir / "ssd").string()).ok()) << files((dir / "ssd").string());
  absl::Status missing = files((dir / "nope").string());
  EXPECT_EQ(missing.code(), absl::StatusCode::kNotFound) << missing;
  EXPECT_NE(missing.message().find("offload.ssd_path = \"" + (dir / "nope").string() +
                                   "\": no such directory"),
            std::string::npos)
      << missing;
  absl::Status file = files(tokens);
  EXPECT_EQ(file.code(), absl::StatusCode::kInvalidArgument) << file;
  EXPECT_NE(file.message().find("offload.ssd_path"), std::string::npos) << file;
  EXPECT_NE(file.message().find("not a directory"), std::string::npos) << file;
  // The path is not looked at without the SSD tier.
  EXPECT_TRUE(ValidateFiles(WithOffload({"data.train_tokens=" + tokens, "offload.tier=HOST",
                                         "offload.ssd_path=" + (dir / "nope").string()}))
                  .ok());
  fs::remove_all(dir);
}

TEST(SpecTest, StreamerOptionNamesBecomeOffloadFields) {
  auto mapped = [](const std::string& m) {
    return std::string(ToJobSpecNames(absl::InvalidArgumentError(m)).message());
  };
  for (const char* f : {"resident_blocks", "swap_batch", "prefetch_depth", "queue_depth"}) {
    EXPECT_EQ(mapped(std::string("StreamerOptions::") + f + " = 0: bad"),
              std::string("offload.") + f + " = 0: bad");
  }
  EXPECT_EQ(mapped("offload::StreamerOptions::ssd_path is empty"), "offload.ssd_path is empty");
  EXPECT_EQ(mapped("StreamerOptions::piece_bytes = 100: must be a positive multiple of 4096"),
            "offload.piece_mib = 100: must be a positive multiple of 4096");
}

TEST(SpecTest, OffloadMovesTheLayersOffTheDeviceInTheMemoryEstimate) {
  const std::vector<std::string> model = {"model.gpt.n_layer=8", "parallel.data=1"};
  auto estimate = [&](std::vector<std::string> sets) {
    sets.insert(sets.begin(), model.begin(), model.end());
    Job job = WithOffload(sets);
    EXPECT_TRUE(ValidateJob(job, 1).ok()) << ValidateJob(job, 1);
    absl::StatusOr<MemoryNeed> need = EstimateJobMemory(job, ToGPT2Config(job.model().gpt()));
    EXPECT_TRUE(need.ok()) << need.status();
    return *need;
  };
  using core::MemoryTag;
  // C = 32, L = 8, Vp = 256, maxT = 64.
  const int64_t C = 32, L = 8, embedding = (256 + 64) * C, layer = 12 * C * C + 13 * C,
                head = 2 * C, all = embedding + L * layer + head;
  const MemoryNeed none = estimate({});
  // Without offload: as before (the model's exact estimate, AdamW's two f32 moments).
  core::GPT2Config config = ToGPT2Config(WithOffload(model).model().gpt());
  const core::GPT2::MemoryEstimate model_only =
      core::GPT2::EstimateMemory(config, {.B = 2, .T = 32, .mode = core::ModelMode::kTrain})
          .value();
  EXPECT_EQ(none.by_tag[MemoryTag::kParams], all * 4);
  EXPECT_EQ(none.by_tag[MemoryTag::kParams], model_only[MemoryTag::kParams]);
  EXPECT_EQ(none.by_tag[MemoryTag::kGrads], model_only[MemoryTag::kGrads]);
  EXPECT_EQ(none.by_tag[MemoryTag::kActivations], model_only[MemoryTag::kActivations]);
  EXPECT_EQ(none.by_tag[MemoryTag::kScratch], model_only[MemoryTag::kScratch]);
  EXPECT_EQ(none.by_tag[MemoryTag::kOptimizer], all * 8);
  EXPECT_EQ(none.offload_bytes, 0);
  // An explicit tier NONE is the same job.
  const MemoryNeed explicit_none = estimate({"offload.tier=NONE"});
  EXPECT_EQ(explicit_none.by_tag.bytes, none.by_tag.bytes);
  EXPECT_EQ(explicit_none.total(), none.total());
  EXPECT_EQ(explicit_none.ToString(), none.ToString());

  // HOST, optimizer on the host: the device holds the embedding, the head and 2 layers, no
  // optimizer state; the tier holds every block's params, gradients and moments.
  const MemoryNeed host = estimate({"offload.tier=HOST"});
  const int64_t device = (embedding + head + 2 * layer) * 4;
  EXPECT_EQ(host.by_tag[MemoryTag::kParams], device);
  EXPECT_EQ(host.by_tag[MemoryTag::kGrads], device);
  EXPECT_EQ(host.by_tag[MemoryTag::kOptimizer], 0);
  EXPECT_LT(host.by_tag[MemoryTag::kParams], none.by_tag[MemoryTag::kParams]);
  EXPECT_LT(host.by_tag[MemoryTag::kGrads], none.by_tag[MemoryTag::kGrads]);
  EXPECT_LT(host.by_tag[MemoryTag::kOptimizer], none.by_tag[MemoryTag::kOptimizer]);
  EXPECT_EQ(host.by_tag[MemoryTag::kActivations], none.by_tag[MemoryTag::kActivations]);
  EXPECT_EQ(host.by_tag[MemoryTag::kScratch], none.by_tag[MemoryTag::kScratch]);
  EXPECT_EQ(host.offload_bytes, all * (4 + 4 + 8));
  EXPECT_EQ(host.total(), none.total() + 2 * device);  // the device part is in host memory too
  EXPECT_NE(host.ToString().find("offload tier (host memory)"), std::string::npos)
      << host.ToString();
  // More slots, more device memory.
  EXPECT_EQ(estimate({"offload.tier=HOST", "offload.resident_blocks=3"}).by_tag[MemoryTag::kParams],
            device + layer * 4);
  // The optimizer state on the device: all of it, as without offload; the tier holds the layers.
  const MemoryNeed on_device = estimate({"offload.tier=HOST", "offload.optimizer_on_host=false"});
  EXPECT_EQ(on_device.by_tag[MemoryTag::kParams], device);
  EXPECT_EQ(on_device.by_tag[MemoryTag::kOptimizer], none.by_tag[MemoryTag::kOptimizer]);
  EXPECT_EQ(on_device.offload_bytes, L * layer * 8);

  // SSD: the same device part; only the pinned pool is host memory: 3 + 2 f32 pieces of the
  // largest block (a layer, under 16 MiB), each rounded up to 4096 bytes.
  const MemoryNeed ssd = estimate({"offload.tier=SSD", "offload.ssd_path=/tmp"});
  EXPECT_EQ(ssd.by_tag.bytes, host.by_tag.bytes);
  const int64_t piece = (layer * 4 + 4095) / 4096 * 4096;
  EXPECT_EQ(ssd.offload_bytes, 5 * piece);
  EXPECT_LT(ssd.total(), none.total());
  EXPECT_NE(ssd.ToString().find("offload pinned pool"), std::string::npos) << ssd.ToString();
  // Lion with bf16 momentum: 3 f32 pieces and 2 bf16 ones; pieces of at most piece_mib.
  const MemoryNeed lion =
      estimate({"offload.tier=SSD", "offload.ssd_path=/tmp", "optimizer.lion.momentum_dtype=BF16"});
  EXPECT_EQ(lion.offload_bytes, 3 * piece + 2 * ((layer * 2 + 4095) / 4096 * 4096));
  const MemoryNeed big = estimate({"model.gpt.n_embd=512", "model.gpt.n_head=8", "offload.tier=SSD",
                                   "offload.ssd_path=/tmp", "offload.piece_mib=1"});
  EXPECT_EQ(big.offload_bytes, 5 * (int64_t{1} << 20));  // a 12.0 MiB layer in 1 MiB pieces

  // Zeroth-order: no gradients, no state; the tier holds the layers' params.
  const MemoryNeed zo_none = estimate({"optimizer.zo.lr=1e-6"});
  const MemoryNeed zo = estimate({"optimizer.zo.lr=1e-6", "offload.tier=HOST",
                                  "offload.resident_blocks=1", "offload.prefetch_depth=0"});
  EXPECT_EQ(zo.by_tag[MemoryTag::kParams], (embedding + head + layer) * 4);
  EXPECT_EQ(zo.by_tag[MemoryTag::kGrads], 0);
  EXPECT_EQ(zo.by_tag[MemoryTag::kOptimizer], 0);
  EXPECT_EQ(zo.by_tag[MemoryTag::kScratch], zo_none.by_tag[MemoryTag::kScratch]);
  EXPECT_EQ(zo.offload_bytes, L * layer * 4);
}

TEST(SpecTest, TheMemoryErrorSuggestsTheSsdTier) {
  Job job = WithOffload({"model.gpt.n_layer=100000000"});
  MemoryNeed need = EstimateJobMemory(job, ToGPT2Config(job.model().gpt())).value();
  absl::Status s = CheckMemory(job, need);
  if (s.ok()) GTEST_SKIP() << "the available memory is unknown";
  EXPECT_NE(s.message().find("offload.tier SSD"), std::string::npos) << s;
}

// ---- federated ----

constexpr char kFederated[] = R"(
model { cnn { layers: [8, -1, 16, -1] } }
train { steps: 3 }
optimizer { sgd { lr: 0.05 momentum: 0.9 } }
federated { num_clients: 20 clients_per_round: 4 batch_size: 32 }
)";

Job FederatedWith(const std::vector<std::string>& sets) {
  Job job = ParseJobText(kFederated, "job").value();
  for (const std::string& set : sets) EXPECT_TRUE(ApplyOverride(&job, set).ok()) << set;
  FillDefaults(&job);
  return job;
}

TEST(SpecTest, FederatedDefaultsBecomeExplicit) {
  // A bare federated section: model.cnn with its default layers, every FedAvg and pruning field.
  Job bare = Filled("federated { }");
  ASSERT_TRUE(bare.has_federated());
  ASSERT_TRUE(bare.model().has_cnn());
  EXPECT_FALSE(bare.model().has_gpt());
  EXPECT_EQ(
      std::vector<int>(bare.model().cnn().layers().begin(), bare.model().cnn().layers().end()),
      (std::vector<int>{32, -1, 64, -1, 128, -1}));
  EXPECT_EQ(bare.model().cnn().height(), 28);
  EXPECT_EQ(bare.federated().num_clients(), 100);
  EXPECT_EQ(bare.federated().clients_per_round(), 10);
  EXPECT_DOUBLE_EQ(bare.federated().alpha(), 0.5);
  EXPECT_EQ(bare.federated().eval_every(), 1);
  EXPECT_TRUE(bare.federated().pruning().has_method());
  EXPECT_EQ(bare.federated().pruning().method(), Pruning::NONE);
  EXPECT_DOUBLE_EQ(bare.federated().pruning().density(), 1.0);
  EXPECT_TRUE(ValidateJob(bare, 1).ok()) << ValidateJob(bare, 1);
  // Without the section no federated section appears (filling the defaults must not create it).
  EXPECT_FALSE(Filled(kGood).has_federated());
  EXPECT_EQ(JobToText(Filled(kGood)).find("federated"), std::string::npos);
  Job job = FederatedWith({});
  EXPECT_TRUE(ValidateJob(job, 1).ok()) << ValidateJob(job, 1);
  EXPECT_TRUE(ValidateJob(FederatedWith({"parallel.data=2"}), 2).ok());
  EXPECT_EQ(ToCnnConfig(job.model().cnn()).layers, (std::vector<int>{8, -1, 16, -1}));
  // --set on a repeated number replaces the list; a bad list names the field.
  ASSERT_TRUE(ApplyOverride(&job, "model.cnn.layers=[4,-1]").ok());
  EXPECT_EQ(ToCnnConfig(job.model().cnn()).layers, (std::vector<int>{4, -1}));
  ASSERT_TRUE(ApplyOverride(&job, "model.cnn.layers=6").ok());
  EXPECT_EQ(ToCnnConfig(job.model().cnn()).layers, (std::vector<int>{6}));
  absl::Status bad = ApplyOverride(&job, "model.cnn.layers=[4,x]");
  EXPECT_EQ(bad.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.message().find("model.cnn.layers"), std::string::npos) << bad;
  EXPECT_EQ(ToCnnConfig(job.model().cnn()).layers, (std::vector<int>{6}));  // unchanged
  // Setting a pruning field creates the section.
  Job gpt = ParseJobText(kGood, "job").value();
  ASSERT_TRUE(ApplyOverride(&gpt, "federated.pruning.method=FEDTINY").ok());
  EXPECT_TRUE(gpt.has_federated());
}

TEST(SpecTest, FederatedRulesNameTheFieldAndTheFix) {
  struct Case {
    std::vector<std::string> sets;
    int world;
    const char* expect;
  };
  const Case cases[] = {
      {{"federated.clients_per_round=30"},
       1,
       "federated.clients_per_round = 30 exceeds federated.num_clients = 20"},
      {{"federated.clients_per_round=0"}, 1, "federated.clients_per_round = 0: must be >= 1"},
      {{"federated.num_clients=0"}, 1, "federated.num_clients = 0: must be >= 1"},
      {{"federated.local_epochs=0"}, 1, "federated.local_epochs = 0: must be >= 1"},
      {{"federated.batch_size=0"}, 1, "federated.batch_size = 0: must be >= 1"},
      {{"federated.alpha=0"}, 1, "federated.alpha = 0: must be > 0 and finite"},
      {{"federated.alpha=inf"}, 1, "federated.alpha = inf: must be > 0 and finite"},
      {{"federated.min_client_samples=-1"}, 1, "federated.min_client_samples = -1: must be >= 0"},
      {{"federated.eval_every=-1"}, 1, "federated.eval_every = -1: must be >= 0"},
      {{"federated.pruning.method=ONE_SHOT", "federated.pruning.density=0"},
       1,
       "federated.pruning.density = 0: must be in (0, 1]"},
      {{"federated.pruning.method=FEDTINY", "federated.pruning.density=1.5"},
       1,
       "federated.pruning.density = 1.5: must be in (0, 1]"},
      {{"federated.pruning.density=0.5"},
       1,
       "federated.pruning.density = 0.5: prunes only with a method"},
      {{"federated.pruning.method=FEDTINY", "federated.pruning.candidates=0"},
       1,
       "federated.pruning.candidates = 0: must be >= 1"},
      {{"federated.pruning.bn_batches=0"}, 1, "federated.pruning.bn_batches = 0: must be >= 1"},
      {{"federated.pruning.adjust_rounds=-1"},
       1,
       "federated.pruning.adjust_rounds = -1: must be >= 0"},
      {{"federated.pruning.initial_rate=1.5"},
       1,
       "federated.pruning.initial_rate = 1.5: must be in [0, 1]"},
      {{"model.gpt.n_layer=2"}, 1, "model.gpt: a federated job trains an image classifier"},
      {{"model.init_from=x.bin"}, 1, "model.init_from = \"x.bin\": a federated job starts"},
      {{"model.cnn.layers=[-1,8]"}, 1, "model.cnn.layers: a pool at position 0"},
      {{"model.cnn.layers=[0]"}, 1, "model.cnn.layers[0] = 0: output channels must be in"},
      {{"model.cnn.height=32"},
       1,
       "model.cnn.height = 32: Fashion-MNIST images are 28 pixels high"},
      {{"model.cnn.num_classes=12"}, 1, "model.cnn.num_classes = 12: Fashion-MNIST has 10 classes"},
      {{"data.train_tokens=t.bin"}, 1, "data.train_tokens = \"t.bin\": a federated job reads"},
      {{"optimizer.zo.lr=1e-3"}, 1, "optimizer.zo: zeroth-order steps do not run in federated"},
      {{"optimizer.clip_grad_norm=1"}, 1, "optimizer.clip_grad_norm = 1: is not applied"},
      {{"train.device=cuda"}, 1, "train.device = \"cuda\": federated jobs run on the CPU only"},
      {{"train.grad_accum=2"}, 1, "train.grad_accum = 2: has no meaning in a federated job"},
      {{"train.recompute=true"}, 1, "train.recompute = true"},
      {{"train.on_nonfinite=SKIP"}, 1, "train.on_nonfinite = SKIP: a federated round cannot be"},
      {{"offload.tier=HOST"}, 1, "offload.tier = HOST: federated jobs do not offload"},
      {{"parallel.sequence=2"}, 2, "parallel.sequence = 2: federated jobs deal their clients"},
      {{"parallel.perturbation=2"},
       2,
       "parallel.perturbation = 2: federated jobs deal their clients"},
      {{"train.steps=0"}, 1, "train.steps = 0: must be >= 1"},
      {{}, 2, "= 1 but the job was started with 2 ranks"},
  };
  for (const Case& c : cases) {
    const std::string what = absl::StrJoin(c.sets, " ");
    Job job = FederatedWith(c.sets);
    absl::Status s = ValidateJob(job, c.world);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << what << " -> " << s;
    EXPECT_NE(s.message().find(c.expect), std::string::npos) << what << " -> " << s;
  }
  // model.cnn belongs to federated jobs only.
  Job cnn = Filled("model { cnn { } } data { train_tokens: \"t.bin\" }");
  absl::Status s = ValidateJob(cnn, 1);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("model.cnn: the image classifier trains only in federated jobs"),
            std::string::npos)
      << s;
  // A federated job needs no token files; a missing dataset folder is named.
  Job missing = FederatedWith({"data.fashion_mnist_dir=/nonexistent/fmnist"});
  absl::Status files = ValidateFiles(missing);
  EXPECT_EQ(files.code(), absl::StatusCode::kNotFound);
  EXPECT_NE(files.message().find("data.fashion_mnist_dir = \"/nonexistent/fmnist\": no such "
                                 "folder"),
            std::string::npos)
      << files;
  Job here = FederatedWith({"data.fashion_mnist_dir=" MEMTRAIN_SOURCE_DIR});
  EXPECT_TRUE(ValidateFiles(here).ok()) << ValidateFiles(here);
}

TEST(SpecTest, CnnAndPruningNamesBecomeJobSpecFields) {
  absl::Status s = ToJobSpecNames(absl::InvalidArgumentError(
      "core::CnnConfig::layers[2] = 0: output channels must be in [1, 4096]"));
  EXPECT_EQ(s.message(), "model.cnn.layers[2] = 0: output channels must be in [1, 4096]");
  s = ToJobSpecNames(absl::InvalidArgumentError("PruneOptions::density = 2: must be in (0, 1]"));
  EXPECT_EQ(s.message(), "federated.pruning.density = 2: must be in (0, 1]");
}

}  // namespace
}  // namespace memtrain::launcher

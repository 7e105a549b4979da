// Checkpoints round-trip exactly, keep the N written last, never hold a NaN, leave no temporary
// behind, and refuse damaged files with DataLoss.
#include "checkpoint/checkpoint.h"

#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <iterator>

#include "core/safetensors.h"
#include "optim/adamw.h"
#include "optim/lion.h"
#include "zlib.h"

namespace memtrain::checkpoint {
namespace {

namespace fs = std::filesystem;

std::string FreshDir(const std::string& name) {
  std::string d = ::testing::TempDir() + "/" + std::to_string(getpid()) + "_" + name;
  fs::remove_all(d);
  return d;
}

struct Trained {
  std::unique_ptr<core::GPT2> model;
  std::unique_ptr<optim::AdamW> opt;
};

Trained MakeTrained() {
  Trained t;
  t.model = core::GPT2::Create(
                {.max_seq_len = 16, .vocab_size = 40, .n_layer = 2, .n_head = 2, .n_embd = 16})
                .value();
  t.model->InitWeights(3);
  EXPECT_TRUE(t.model->Prepare(2, 8).ok());
  t.opt = optim::AdamW::Create(t.model.get(), {.lr = 1e-2f, .weight_decay = 0.1f}).value();
  std::vector<int32_t> in(16), tg(16);
  for (int i = 0; i < 16; ++i) in[i] = i % 40, tg[i] = (i * 3) % 40;
  core::Engine engine(t.model.get());
  for (int s = 0; s < 3; ++s) {
    EXPECT_TRUE(engine.Forward({in.data(), tg.data(), 2, 8}).ok());
    engine.ZeroGrad();
    EXPECT_TRUE(engine.Backward({in.data(), tg.data(), 2, 8}).ok());
    t.opt->Step();
  }
  return t;
}

TEST(CheckpointTest, RoundTripIsExact) {
  Trained t = MakeTrained();
  const std::string dir = FreshDir("ckpt");
  ASSERT_TRUE(
      SaveCheckpoint(dir, 3, {.step = 3, .batches_consumed = 7, .job_text = "x"}, *t.model, *t.opt)
          .ok());
  auto folder = LatestCheckpoint(dir);
  ASSERT_TRUE(folder.ok()) << folder.status();
  EXPECT_EQ(*folder, dir + "/step_00000003");
  auto loaded = LoadCheckpoint(*folder);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->state.step, 3);
  EXPECT_EQ(loaded->state.batches_consumed, 7);
  auto opt2 = optim::AdamW::Create(loaded->model.get(), {}).value();
  ASSERT_TRUE(RestoreOptimizer(*loaded, *loaded->model, opt2.get()).ok());
  EXPECT_EQ(opt2->step(), 3);
  // State of another optimizer kind is refused, naming both.
  auto lion = optim::Lion::Create(loaded->model.get(), {}).value();
  absl::Status other = RestoreOptimizer(*loaded, *loaded->model, lion.get());
  EXPECT_EQ(other.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(other.message().find("adamw"), std::string::npos);
  for (int s = 0; s < t.model->num_stages(); ++s) {
    const core::Tensor& a = t.model->block(s).params();
    const core::Tensor& b = loaded->model->block(s).params();
    ASSERT_EQ(0, std::memcmp(a.raw(), b.raw(), a.nbytes()));
    ASSERT_EQ(0, std::memcmp(t.opt->m(s).raw(), opt2->m(s).raw(), a.nbytes()));
    ASSERT_EQ(0, std::memcmp(t.opt->v(s).raw(), opt2->v(s).raw(), a.nbytes()));
  }
  // Weights are plain safetensors with the block names.
  auto st = core::SafetensorsFile::Read(*folder + "/model.safetensors").value();
  EXPECT_EQ(st.entries().at("h.1.qkvw").shape, (core::Shape{48, 16}));
  EXPECT_EQ(st.entries().count("embedding.wte"), 1u);
}

TEST(CheckpointTest, KeepsTheNewestAndLatestPointsAtACompleteOne) {
  Trained t = MakeTrained();
  const std::string dir = FreshDir("keep");
  for (int step : {1, 2, 3, 4}) {
    ASSERT_TRUE(SaveCheckpoint(dir, 2, {.step = step, .batches_consumed = 0, .job_text = ""},
                               *t.model, *t.opt)
                    .ok());
  }
  EXPECT_FALSE(fs::exists(dir + "/step_00000001"));
  EXPECT_FALSE(fs::exists(dir + "/step_00000002"));
  EXPECT_TRUE(fs::exists(dir + "/step_00000003"));
  EXPECT_EQ(LatestCheckpoint(dir).value(), dir + "/step_00000004");
  EXPECT_EQ(LatestCheckpoint(FreshDir("none")).status().code(), absl::StatusCode::kNotFound);
}

std::vector<std::string> Entries(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

TEST(CheckpointTest, KeepsTheCheckpointsWrittenLastNotTheHighestSteps) {
  Trained t = MakeTrained();
  const std::string dir = FreshDir("order");
  auto save = [&](int step) {
    ASSERT_TRUE(SaveCheckpoint(dir, 2, {.step = step, .batches_consumed = 0, .job_text = ""},
                               *t.model, *t.opt)
                    .ok());
  };
  save(15);
  save(20);
  // A new run of the same job into the same folder, with fewer steps.
  save(5);
  EXPECT_EQ(Entries(dir), (std::vector<std::string>{"latest", "step_00000005", "step_00000020"}));
  save(10);
  EXPECT_EQ(Entries(dir), (std::vector<std::string>{"latest", "step_00000005", "step_00000010"}));
  EXPECT_EQ(LatestCheckpoint(dir).value(), dir + "/step_00000010");
  // keep = 1 after resuming at a lower step: the one just written stays.
  save(30);
  ASSERT_TRUE(
      SaveCheckpoint(dir, 1, {.step = 11, .batches_consumed = 0, .job_text = ""}, *t.model, *t.opt)
          .ok());
  EXPECT_EQ(Entries(dir), (std::vector<std::string>{"latest", "step_00000011"}));
  EXPECT_EQ(ListCheckpoints(dir), std::vector<std::string>{dir + "/step_00000011"});
}

TEST(CheckpointTest, LatestMayEndInANewline) {
  Trained t = MakeTrained();
  const std::string dir = FreshDir("newline");
  ASSERT_TRUE(
      SaveCheckpoint(dir, 3, {.step = 19, .batches_consumed = 0, .job_text = ""}, *t.model, *t.opt)
          .ok());
  std::ofstream(dir + "/latest") << "step_00000019\n";
  auto folder = LatestCheckpoint(dir);
  ASSERT_TRUE(folder.ok()) << folder.status();
  EXPECT_EQ(*folder, dir + "/step_00000019");
  EXPECT_TRUE(LoadModel(dir).ok());
  std::ofstream(dir + "/latest") << "  step_00000019 \r\n";
  EXPECT_EQ(LatestCheckpoint(dir).value(), dir + "/step_00000019");
}

TEST(CheckpointTest, NonFiniteWeightsOrStateAreNeverSaved) {
  Trained t = MakeTrained();
  const std::string dir = FreshDir("nan");
  ASSERT_TRUE(
      SaveCheckpoint(dir, 3, {.step = 1, .batches_consumed = 0, .job_text = ""}, *t.model, *t.opt)
          .ok());
  const float saved = t.model->block(1).params().f32()[5];
  t.model->block(1).params().f32()[5] = std::nanf("");
  absl::Status s =
      SaveCheckpoint(dir, 3, {.step = 2, .batches_consumed = 0, .job_text = ""}, *t.model, *t.opt);
  EXPECT_EQ(s.code(), absl::StatusCode::kAborted) << s;
  EXPECT_NE(s.message().find("non-finite"), std::string::npos) << s;
  t.model->block(1).params().f32()[5] = saved;
  t.opt->m(0).f32()[0] = INFINITY;
  EXPECT_EQ(
      SaveCheckpoint(dir, 3, {.step = 2, .batches_consumed = 0, .job_text = ""}, *t.model, *t.opt)
          .code(),
      absl::StatusCode::kAborted);
  EXPECT_EQ(Entries(dir), (std::vector<std::string>{"latest", "step_00000001"}));
  EXPECT_EQ(LatestCheckpoint(dir).value(), dir + "/step_00000001");
}

TEST(CheckpointTest, AFailedSaveLeavesNoTemporaryAndTheLastCheckpointIntact) {
  Trained t = MakeTrained();
  const std::string dir = FreshDir("full");
  ASSERT_TRUE(
      SaveCheckpoint(dir, 3, {.step = 1, .batches_consumed = 0, .job_text = ""}, *t.model, *t.opt)
          .ok());
  // A disk that fills up: files may not grow past 16 KiB (writes fail with EFBIG).
  struct rlimit old;
  ASSERT_EQ(getrlimit(RLIMIT_FSIZE, &old), 0);
  struct rlimit small = old;
  small.rlim_cur = 16384;
  auto previous = signal(SIGXFSZ, SIG_IGN);
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &small), 0);
  absl::Status s =
      SaveCheckpoint(dir, 3, {.step = 2, .batches_consumed = 0, .job_text = ""}, *t.model, *t.opt);
  setrlimit(RLIMIT_FSIZE, &old);
  signal(SIGXFSZ, previous);
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find(dir + "/step_00000002"), std::string::npos) << s;
  EXPECT_EQ(Entries(dir), (std::vector<std::string>{"latest", "step_00000001"}));
  EXPECT_EQ(LatestCheckpoint(dir).value(), dir + "/step_00000001");
}

TEST(CheckpointTest, TemporariesOfDeadProcessesAreRemoved) {
  Trained t = MakeTrained();
  const std::string dir = FreshDir("stale");
  ASSERT_TRUE(
      SaveCheckpoint(dir, 3, {.step = 3, .batches_consumed = 0, .job_text = ""}, *t.model, *t.opt)
          .ok());
  ASSERT_TRUE(
      SaveCheckpoint(dir, 3, {.step = 4, .batches_consumed = 0, .job_text = ""}, *t.model, *t.opt)
          .ok());
  const pid_t child = fork();
  if (child == 0) _exit(0);
  ASSERT_EQ(waitpid(child, nullptr, 0), child);  // a process that is gone
  const std::string dead = std::to_string(child), alive = std::to_string(getpid());
  fs::create_directories(dir + "/step_00000005.tmp." + dead + "/x");
  std::ofstream(dir + "/latest.tmp." + dead) << "step_00000005";
  fs::create_directories(dir + "/step_00000006.tmp." + alive);  // a save in progress
  // Killed between the renames of a save that replaced step 4 / step 3: the previous copy.
  fs::rename(dir + "/step_00000004", dir + "/step_00000004.old");
  fs::create_directories(dir + "/step_00000003.old");
  EXPECT_EQ(RemoveStaleTemporaries(dir), 4);
  EXPECT_EQ(Entries(dir), (std::vector<std::string>{"latest", "step_00000003", "step_00000004",
                                                    "step_00000006.tmp." + alive}));
  EXPECT_TRUE(LoadCheckpoint(dir + "/step_00000004").ok());
  EXPECT_TRUE(LoadCheckpoint(dir + "/step_00000003").ok());
}

TEST(CheckpointTest, DamagedFilesAreRefusedWithDataLoss) {
  Trained t = MakeTrained();
  const std::string dir = FreshDir("bad");
  ASSERT_TRUE(
      SaveCheckpoint(dir, 3, {.step = 5, .batches_consumed = 0, .job_text = ""}, *t.model, *t.opt)
          .ok());
  const std::string f = dir + "/step_00000005/model.safetensors";
  {
    std::fstream io(f, std::ios::in | std::ios::out | std::ios::binary);
    io.seekp(-3, std::ios::end);
    io.put('\x7f');  // one flipped byte in the data
  }
  auto r = LoadCheckpoint(dir + "/step_00000005");
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(r.status().message().find("CRC-32"), std::string::npos) << r.status();
  fs::resize_file(f, fs::file_size(f) - 10);
  r = LoadCheckpoint(dir + "/step_00000005");
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(r.status().message().find("truncated"), std::string::npos) << r.status();
}

TEST(CheckpointTest, AManifestFieldOfTheWrongTypeIsRefusedNotACrash) {
  Trained t = MakeTrained();
  const std::string dir = FreshDir("typed");
  ASSERT_TRUE(
      SaveCheckpoint(dir, 3, {.step = 6, .batches_consumed = 0, .job_text = ""}, *t.model, *t.opt)
          .ok());
  const std::string manifest = dir + "/step_00000006/state.json";
  std::ifstream in(manifest);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const size_t at = text.find("\"step\": 6");
  ASSERT_NE(at, std::string::npos);
  text.replace(at, 9, "\"step\": \"six\"");
  std::ofstream(manifest) << text;
  auto r = LoadCheckpoint(dir + "/step_00000006");
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(r.status().message().find("wrong type"), std::string::npos) << r.status();
}

TEST(SafetensorsTest, RoundTripAndBadHeaders) {
  const std::string path = FreshDir("st") + ".safetensors";
  auto a = core::Tensor::Zeros({2, 3}, core::DType::kF32, core::MemoryTag::kOther).value();
  auto b = core::Tensor::Zeros({4}, core::DType::kI32, core::MemoryTag::kOther).value();
  for (int i = 0; i < 6; ++i) a.f32()[i] = i * 0.5f;
  for (int i = 0; i < 4; ++i) b.i32()[i] = -i;
  auto written = core::WriteSafetensors(path, {{"a", a}, {"b", b}}, {{"k", "v"}});
  ASSERT_TRUE(written.ok());
  auto f = core::SafetensorsFile::Read(path);
  ASSERT_TRUE(f.ok()) << f.status();
  // The digests computed while writing and while reading are those of the file on disk.
  std::ifstream in(path, std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const uint32_t crc = crc32(crc32(0L, Z_NULL, 0), reinterpret_cast<const Bytef*>(bytes.data()),
                             static_cast<uInt>(bytes.size()));
  EXPECT_EQ(written->bytes, static_cast<int64_t>(bytes.size()));
  EXPECT_EQ(written->crc32, crc);
  EXPECT_EQ(f->digest().bytes, written->bytes);
  EXPECT_EQ(f->digest().crc32, crc);
  EXPECT_EQ(f->metadata().at("k"), "v");
  auto a2 = core::Tensor::Zeros({2, 3}, core::DType::kF32, core::MemoryTag::kOther).value();
  ASSERT_TRUE(f->CopyTo("a", a2).ok());
  EXPECT_EQ(0, std::memcmp(a.raw(), a2.raw(), a.nbytes()));
  auto wrong = core::Tensor::Zeros({3, 2}, core::DType::kF32, core::MemoryTag::kOther).value();
  EXPECT_EQ(f->CopyTo("a", wrong).code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(f->CopyTo("c", a2).code(), absl::StatusCode::kNotFound);
  // The header must describe data that is there.
  fs::resize_file(path, fs::file_size(path) - 4);
  auto bad = core::SafetensorsFile::Read(path);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(bad.status().message().find(path), std::string::npos);
  {  // a header whose offsets are strings, not numbers
    const std::string h = R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": ["0", "4"]}})";
    std::ofstream out(path, std::ios::binary);
    const uint64_t n = h.size();
    out.write(reinterpret_cast<const char*>(&n), 8);
    out << h << "abcd";
  }
  EXPECT_EQ(core::SafetensorsFile::Read(path).status().code(), absl::StatusCode::kDataLoss);
  std::ofstream(path, std::ios::binary) << "garbage!garbage!";
  EXPECT_EQ(core::SafetensorsFile::Read(path).status().code(), absl::StatusCode::kDataLoss);
}

}  // namespace
}  // namespace memtrain::checkpoint

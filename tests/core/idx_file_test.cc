// IDX files (MNIST's format): round trips of hand-written files, plain and gzipped, and every kind
// of bad file refused with a status that names the file and what was wrong.
#include "core/idx_file.h"

#include <gtest/gtest.h>
#include <unistd.h>
#include <zlib.h>

#include <fstream>
#include <string>
#include <vector>

namespace memtrain::core {
namespace {

std::string TempPath(const std::string& name) {
  return ::testing::TempDir() + "/" + std::to_string(getpid()) + "_idx_" + name;
}

// The bytes of an IDX file: magic 00 00 type ndim, big-endian dims, then `data`.
std::string IdxBytes(uint8_t type, const std::vector<int32_t>& dims, const std::string& data) {
  std::string b = {0, 0, static_cast<char>(type), static_cast<char>(dims.size())};
  for (int32_t d : dims) {
    const uint32_t u = static_cast<uint32_t>(d);
    b += {static_cast<char>(u >> 24), static_cast<char>(u >> 16), static_cast<char>(u >> 8),
          static_cast<char>(u)};
  }
  return b + data;
}

void WritePlain(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary);
  f.write(bytes.data(), bytes.size());
}

void WriteGz(const std::string& path, const std::string& bytes) {
  gzFile f = gzopen(path.c_str(), "wb");
  ASSERT_NE(f, nullptr);
  ASSERT_EQ(gzwrite(f, bytes.data(), bytes.size()), static_cast<int>(bytes.size()));
  ASSERT_EQ(gzclose(f), Z_OK);
}

std::string Payload(int n) {
  std::string s(n, 0);
  for (int i = 0; i < n; ++i) s[i] = static_cast<char>((i * 37 + 11) & 0xff);
  return s;
}

class IdxFileTest : public ::testing::TestWithParam<bool> {
 protected:
  // Writes `bytes` gzipped (GetParam()) or plain and returns the path.
  std::string Write(const std::string& name, const std::string& bytes) {
    const std::string path = TempPath(name + (GetParam() ? ".gz" : ""));
    if (GetParam()) {
      WriteGz(path, bytes);
    } else {
      WritePlain(path, bytes);
    }
    return path;
  }
};

TEST_P(IdxFileTest, RoundTrip) {
  const std::string data = Payload(3 * 4 * 5);
  const std::string path = Write("rt", IdxBytes(0x08, {3, 4, 5}, data));
  absl::StatusOr<IdxArray> a = ReadIdxFile(path);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->dims, (std::vector<int64_t>{3, 4, 5}));
  ASSERT_EQ(a->NumElements(), 60);
  EXPECT_EQ(std::string(a->data.begin(), a->data.end()), data);

  // A labels-style file (one dimension) and a large one (several read chunks).
  const std::string big = Payload(3 << 20);
  const std::string path2 = Write("big", IdxBytes(0x08, {3 << 20}, big));
  absl::StatusOr<IdxArray> b = ReadIdxFile(path2);
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(b->dims, (std::vector<int64_t>{3 << 20}));
  EXPECT_TRUE(std::string(b->data.begin(), b->data.end()) == big);

  // An empty array is fine.
  absl::StatusOr<IdxArray> e = ReadIdxFile(Write("empty", IdxBytes(0x08, {0, 28, 28}, "")));
  ASSERT_TRUE(e.ok()) << e.status();
  EXPECT_EQ(e->NumElements(), 0);
}

TEST_P(IdxFileTest, TruncatedPayloadNamesExpectedAndFoundBytes) {
  const std::string path = Write("trunc", IdxBytes(0x08, {10, 28, 28}, Payload(7000)));
  absl::StatusOr<IdxArray> a = ReadIdxFile(path);
  ASSERT_EQ(a.status().code(), absl::StatusCode::kDataLoss) << a.status();
  const std::string msg(a.status().message());
  EXPECT_NE(msg.find(path), std::string::npos) << msg;
  EXPECT_NE(msg.find("7840"), std::string::npos) << msg;
  EXPECT_NE(msg.find("7000"), std::string::npos) << msg;
  EXPECT_NE(msg.find("truncated"), std::string::npos) << msg;
}

TEST_P(IdxFileTest, TruncatedHeader) {
  for (const std::string& bytes :
       {std::string("\0\0", 2), IdxBytes(0x08, {10, 28, 28}, "").substr(0, 9)}) {
    absl::StatusOr<IdxArray> a = ReadIdxFile(Write("trunch", bytes));
    ASSERT_EQ(a.status().code(), absl::StatusCode::kDataLoss) << a.status();
    EXPECT_NE(a.status().message().find("truncated"), std::string::npos) << a.status();
  }
}

TEST_P(IdxFileTest, TrailingGarbage) {
  const std::string path = Write("trail", IdxBytes(0x08, {2, 3}, Payload(6) + "xyz"));
  absl::StatusOr<IdxArray> a = ReadIdxFile(path);
  ASSERT_EQ(a.status().code(), absl::StatusCode::kDataLoss) << a.status();
  EXPECT_NE(a.status().message().find(path), std::string::npos) << a.status();
  EXPECT_NE(a.status().message().find("trailing"), std::string::npos) << a.status();
}

TEST_P(IdxFileTest, WrongMagic) {
  const std::string path = Write("magic", "P5\n28 28\n255\n" + Payload(100));
  absl::StatusOr<IdxArray> a = ReadIdxFile(path);
  ASSERT_EQ(a.status().code(), absl::StatusCode::kDataLoss) << a.status();
  const std::string msg(a.status().message());
  EXPECT_NE(msg.find(path), std::string::npos) << msg;
  EXPECT_NE(msg.find("not an IDX file: magic 50 35 0a 32"), std::string::npos) << msg;
}

TEST_P(IdxFileTest, UnsupportedTypeIsInvalidArgument) {
  const std::string path = Write("float", IdxBytes(0x0D, {2}, std::string(8, 0)));
  absl::StatusOr<IdxArray> a = ReadIdxFile(path);
  ASSERT_EQ(a.status().code(), absl::StatusCode::kInvalidArgument) << a.status();
  const std::string msg(a.status().message());
  EXPECT_NE(msg.find(path), std::string::npos) << msg;
  EXPECT_NE(msg.find("0x0d (float32)"), std::string::npos) << msg;
  EXPECT_EQ(ReadIdxFile(Write("weird", IdxBytes(0x42, {2}, "ab"))).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_P(IdxFileTest, AbsurdDimsAreInvalidArgument) {
  // Negative, too many elements, no dimensions, too many dimensions.
  for (const std::string& bytes :
       {IdxBytes(0x08, {-5, 28}, ""), IdxBytes(0x08, {1 << 30, 1 << 30}, ""),
        IdxBytes(0x08, {}, "x"), IdxBytes(0x08, std::vector<int32_t>(17, 1), "x")}) {
    absl::StatusOr<IdxArray> a = ReadIdxFile(Write("absurd", bytes));
    EXPECT_EQ(a.status().code(), absl::StatusCode::kInvalidArgument) << a.status();
  }
}

INSTANTIATE_TEST_SUITE_P(PlainAndGzip, IdxFileTest, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& p) {
                           return p.param ? "Gzip" : "Plain";
                         });

TEST(IdxFileTest, MissingFileIsNotFound) {
  const std::string path = TempPath("does_not_exist.gz");
  absl::StatusOr<IdxArray> a = ReadIdxFile(path);
  ASSERT_EQ(a.status().code(), absl::StatusCode::kNotFound) << a.status();
  EXPECT_NE(a.status().message().find(path), std::string::npos) << a.status();
}

TEST(IdxFileTest, TruncatedGzipStreamIsDataLoss) {
  const std::string path = TempPath("cut.gz");
  WriteGz(path, IdxBytes(0x08, {4096}, Payload(4096)));
  std::string bytes;
  {
    std::ifstream f(path, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
  }
  // Cut the gzip stream short: the payload is then shorter than promised.
  WritePlain(path, bytes.substr(0, bytes.size() / 2));
  absl::StatusOr<IdxArray> a = ReadIdxFile(path);
  ASSERT_EQ(a.status().code(), absl::StatusCode::kDataLoss) << a.status();
  EXPECT_NE(a.status().message().find(path), std::string::npos) << a.status();
  EXPECT_NE(a.status().message().find("truncated"), std::string::npos) << a.status();
}

TEST(IdxFileTest, CorruptGzipStreamIsDataLoss) {
  const std::string path = TempPath("corrupt.gz");
  std::string payload(4096, 0);
  for (int i = 0; i < 4096; ++i) payload[i] = static_cast<char>(i * i * 7);
  WriteGz(path, IdxBytes(0x08, {4096}, payload));
  std::string bytes;
  {
    std::ifstream f(path, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
  }
  bytes[bytes.size() / 2] ^= 0x55;
  WritePlain(path, bytes);
  absl::StatusOr<IdxArray> a = ReadIdxFile(path);
  ASSERT_EQ(a.status().code(), absl::StatusCode::kDataLoss) << a.status();
  EXPECT_NE(a.status().message().find(path), std::string::npos) << a.status();
  EXPECT_NE(a.status().message().find("corrupt"), std::string::npos) << a.status();
}

}  // namespace
}  // namespace memtrain::core

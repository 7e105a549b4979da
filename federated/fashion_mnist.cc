#include "federated/fashion_mnist.h"

#include <sys/stat.h>

#include <array>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "core/idx_file.h"
#include "core/status.h"

namespace memtrain::federated {
namespace {

bool Exists(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

// dir/name.gz, else dir/name; NotFound naming both and the package when neither exists.
absl::StatusOr<std::string> FindFile(const std::string& dir, const std::string& name) {
  const std::string gz = dir + "/" + name + ".gz";
  if (Exists(gz)) return gz;
  const std::string plain = dir + "/" + name;
  if (Exists(plain)) return plain;
  return absl::NotFoundError(absl::StrFormat(
      "Fashion-MNIST: neither %s nor %s exists; install Debian's dataset-fashion-mnist "
      "(scripts/setup.sh does: it puts the files in %s) or pass the folder that holds the IDX "
      "files",
      gz, plain, DefaultFashionMnistDir()));
}

absl::StatusOr<MnistSplit> LoadSplit(const std::string& dir, const std::string& prefix) {
  MT_ASSIGN_OR_RETURN(const std::string images_path, FindFile(dir, prefix + "-images-idx3-ubyte"));
  MT_ASSIGN_OR_RETURN(const std::string labels_path, FindFile(dir, prefix + "-labels-idx1-ubyte"));
  MT_ASSIGN_OR_RETURN(core::IdxArray images, core::ReadIdxFile(images_path));
  MT_ASSIGN_OR_RETURN(core::IdxArray labels, core::ReadIdxFile(labels_path));
  if (images.dims.size() != 3 || images.dims[1] != FashionMnist::kHeight ||
      images.dims[2] != FashionMnist::kWidth) {
    return absl::DataLossError(absl::StrFormat(
        "%s: Fashion-MNIST images should be N x %d x %d, found %s; is this the right file?",
        images_path, FashionMnist::kHeight, FashionMnist::kWidth,
        absl::StrJoin(images.dims, " x ")));
  }
  if (labels.dims.size() != 1) {
    return absl::DataLossError(
        absl::StrFormat("%s: Fashion-MNIST labels should be a vector of N, found %s; is this the "
                        "right file?",
                        labels_path, absl::StrJoin(labels.dims, " x ")));
  }
  if (images.dims[0] != labels.dims[0]) {
    return absl::DataLossError(absl::StrFormat(
        "Fashion-MNIST: %s holds %d images but %s holds %d labels; the two files should come "
        "from the same split: reinstall dataset-fashion-mnist",
        images_path, images.dims[0], labels_path, labels.dims[0]));
  }
  const int64_t n = labels.dims[0];
  MnistSplit s;
  s.labels.resize(n);
  for (int64_t i = 0; i < n; ++i) {
    if (labels.data[i] >= FashionMnist::kNumClasses) {
      return absl::DataLossError(absl::StrFormat(
          "%s: label %d of sample %d is not a Fashion-MNIST class (0 to %d); the file is corrupt",
          labels_path, labels.data[i], i, FashionMnist::kNumClasses - 1));
    }
    s.labels[i] = labels.data[i];
  }
  std::array<float, 256> lut;
  for (int b = 0; b < 256; ++b) {
    lut[b] = (static_cast<float>(b) / 255.0f - FashionMnist::kMean) / FashionMnist::kStd;
  }
  s.images.resize(images.data.size());
  for (size_t i = 0; i < images.data.size(); ++i) s.images[i] = lut[images.data[i]];
  return s;
}

}  // namespace

std::string DefaultFashionMnistDir() { return "/usr/share/datasets/fashion-mnist"; }

const char* FashionMnist::ClassName(int label) {
  static constexpr const char* kNames[kNumClasses] = {
      "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
      "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot"};
  return label >= 0 && label < kNumClasses ? kNames[label] : "?";
}

absl::StatusOr<FashionMnist> FashionMnist::Load(const std::string& dir) {
  FashionMnist d;
  MT_ASSIGN_OR_RETURN(d.train, LoadSplit(dir, "train"));
  MT_ASSIGN_OR_RETURN(d.test, LoadSplit(dir, "t10k"));
  return d;
}

}  // namespace memtrain::federated

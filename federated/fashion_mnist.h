// Fashion-MNIST (Xiao, Rasul and Vollgraf 2017: 28x28 greyscale images of 10 kinds of clothing,
// 60000 for training and 10000 for testing) from Debian's `dataset-fashion-mnist` package, which
// puts the four gzipped IDX files in /usr/share/datasets/fashion-mnist (scripts/setup.sh installs
// it). Any folder holding the same four files, gzipped or not, serves too.
//
//   MT_ASSIGN_OR_RETURN(federated::FashionMnist data, federated::FashionMnist::Load());
//   // data.train.images: 60000 x 1 x 28 x 28 floats; data.train.labels: 60000 ints in [0, 10)
//
// Pixels: byte b becomes (b / 255 - 0.2860) / 0.3530, i.e. scaled to [0, 1] and then standardised
// with the training set's pixel mean and standard deviation (the values torchvision users
// pass to transforms.Normalize for Fashion-MNIST), so the training pixels have mean ~0 and
// standard deviation ~1. The test set uses the same constants.
#ifndef MEMTRAIN_FEDERATED_FASHION_MNIST_H_
#define MEMTRAIN_FEDERATED_FASHION_MNIST_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace memtrain::federated {

// Where Debian's dataset-fashion-mnist installs the files.
std::string DefaultFashionMnistDir();

// One split: images (size(), 1, 28, 28) row-major, labels (size()) in [0, kNumClasses).
struct MnistSplit {
  std::vector<float> images;
  std::vector<int32_t> labels;

  int64_t size() const { return static_cast<int64_t>(labels.size()); }
};

struct FashionMnist {
  static constexpr int kNumClasses = 10;
  static constexpr int kChannels = 1;
  static constexpr int kHeight = 28;
  static constexpr int kWidth = 28;
  static constexpr int kPixels = kChannels * kHeight * kWidth;
  static constexpr float kMean = 0.2860f;  // training-set pixel mean, after / 255
  static constexpr float kStd = 0.3530f;   // training-set pixel standard deviation, after / 255

  // The class names, by label.
  static const char* ClassName(int label);

  // Reads train-{images,labels}-idx{3,1}-ubyte[.gz] and t10k-... from `dir`. NotFound naming the
  // file and the package when one is absent; DataLoss / InvalidArgument from core::ReadIdxFile
  // for a bad file; DataLoss naming both files when images and labels disagree in count, or an
  // images file is not N x 28 x 28 or a labels file not N; DataLoss naming the file and the
  // sample for a label >= 10.
  static absl::StatusOr<FashionMnist> Load(const std::string& dir = DefaultFashionMnistDir());

  MnistSplit train;
  MnistSplit test;
};

}  // namespace memtrain::federated

#endif  // MEMTRAIN_FEDERATED_FASHION_MNIST_H_

// The IDX reader: the image and label files of LeCun's MNIST and Zalando's Fashion-MNIST (Xiao,
// Rasul & Vollgraf 2017), read plain or gzipped (one gzip member or several).
//
// A file is read only as far as its header says: a small gzipped file cannot inflate into
// gigabytes, and a file longer or shorter than its header says is refused.
#ifndef DROPNET_COMMON_DATAIO_IDX_H_
#define DROPNET_COMMON_DATAIO_IDX_H_

#include <cstdint>
#include <string>
#include <string_view>

#include "common/dataio/error.h"

namespace dropnet::dataio {

// Images with one label each.
struct IdxImages {
  uint32_t count = 0, height = 0, width = 0;
  std::string pixels;   // count x height x width bytes, 0-255, row-major
  std::string labels;   // count bytes
  int num_classes = 0;  // 1 + the largest label

  int Label(uint64_t i) const { return static_cast<unsigned char>(labels[i]); }
};

// Reads an image file and its label file from their bytes; the names only go into error
// messages. Throws DataError.
IdxImages ReadIdx(std::string_view images, std::string_view labels,
                  const std::string& images_name = "images",
                  const std::string& labels_name = "labels");
// The same from the files at these paths.
IdxImages LoadIdx(const std::string& images_path, const std::string& labels_path);

// The first images of `idx` as floats in [0, 1]: rows x (height * width), row-major, into out.
void ScalePixels(const IdxImages& idx, uint64_t rows, float* out);

// The bytes of a file, gunzipped when they start with gzip's magic bytes (one member or several),
// up to max_bytes + 1 of them: inflating stops there, and the caller compares the size it gets.
std::string IdxBytes(std::string_view raw, const std::string& name, uint64_t max_bytes);

}  // namespace dropnet::dataio

#endif  // DROPNET_COMMON_DATAIO_IDX_H_

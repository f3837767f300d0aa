// Tests for the IDX reader: plain and gzipped bytes, several gzip members, files that are longer
// or shorter than their header says, and the scaling of pixels to [0, 1].
#include "common/dataio/idx.h"

#include <gtest/gtest.h>
#include <zlib.h>

#include <cstdint>
#include <string>
#include <vector>

#include "tests/testing/idx_bytes.h"

namespace dropnet::dataio {
namespace {

using testing::Gzip;
using testing::IdxLabels;

// n images of h x w pixels 0, 15, 30, ...
std::string Images(uint32_t n, uint32_t h, uint32_t w) {
  std::vector<uint8_t> pixels(n * h * w);
  for (uint32_t i = 0; i < pixels.size(); ++i) pixels[i] = static_cast<uint8_t>(15 * i);
  return testing::IdxImages(n, h, w, pixels);
}

std::string Labels(const std::vector<uint8_t>& labels) { return IdxLabels(labels); }

void ExpectSmallSet(const IdxImages& idx) {
  EXPECT_EQ(idx.count, 3u);
  EXPECT_EQ(idx.height, 2u);
  EXPECT_EQ(idx.width, 3u);
  ASSERT_EQ(idx.pixels.size(), 18u);
  ASSERT_EQ(idx.labels.size(), 3u);
  EXPECT_EQ(idx.Label(0), 2);
  EXPECT_EQ(idx.Label(1), 0);
  EXPECT_EQ(idx.Label(2), 1);
  EXPECT_EQ(idx.num_classes, 3);
  std::vector<float> x(18, -1.0f);
  ScalePixels(idx, idx.count, x.data());
  for (int i = 0; i < 18; ++i) EXPECT_FLOAT_EQ(x[i], 15.0f * i / 255.0f) << i;
  EXPECT_EQ(x[17], 1.0f);
}

TEST(IdxReaderTest, PlainGzippedAndInSeveralMembers) {
  const std::string images = Images(3, 2, 3), labels = Labels({2, 0, 1});
  ExpectSmallSet(ReadIdx(images, labels));
  ExpectSmallSet(ReadIdx(Gzip(images), Gzip(labels)));
  ExpectSmallSet(ReadIdx(Gzip(images.substr(0, 7)) + Gzip(images.substr(7)), labels));
  EXPECT_THROW(ReadIdx(Gzip(images) + "junk", labels), DataError);
  EXPECT_THROW(ReadIdx(labels, images), DataError);
  EXPECT_THROW(LoadIdx("/nonexistent/images", "/nonexistent/labels"), DataError);
}

TEST(IdxReaderTest, ScalesOnlyTheRowsAskedFor) {
  const IdxImages idx = ReadIdx(Images(3, 2, 3), Labels({2, 0, 1}));
  std::vector<float> x(18, -1.0f);
  ScalePixels(idx, 1, x.data());
  EXPECT_FLOAT_EQ(x[5], 75.0f / 255.0f);
  EXPECT_EQ(x[6], -1.0f);
}

TEST(IdxReaderTest, InflatingStopsPastTheDeclaredSize) {
  // 3 images of 2 x 3 pixels, then 32 MiB of zeros the header does not announce: a small file
  // that would inflate into a large buffer.
  const std::string bomb = Gzip(Images(3, 2, 3) + std::string(32 << 20, '\0'));
  ASSERT_LT(bomb.size(), 64u << 10);
  const std::string head = IdxBytes(bomb, "bomb", 16 + 18);
  EXPECT_GT(head.size(), 16u + 18u);
  EXPECT_LE(head.size(), 16u + 18u + (64u << 10));
  try {
    ReadIdx(bomb, Labels({2, 0, 1}), "bomb");
    ADD_FAILURE() << "a file longer than its header says was read";
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find("more than 18 pixel bytes"), std::string::npos)
        << e.what();
  }
  // Labels are held to the image count the same way.
  EXPECT_THROW(ReadIdx(Images(3, 2, 3), Gzip(Labels({2, 0, 1}) + std::string(1 << 20, '\1'))),
               DataError);
}

}  // namespace
}  // namespace dropnet::dataio

// IDX files made in memory for the readers' tests: image and label files with any header, and
// gzip of any bytes.
#ifndef DROPNET_TESTS_TESTING_IDX_BYTES_H_
#define DROPNET_TESTS_TESTING_IDX_BYTES_H_

#include <gtest/gtest.h>
#include <zlib.h>

#include <cstdint>
#include <string>
#include <vector>

namespace dropnet::testing {

inline void PutBigEndian(std::string* s, uint32_t v) {
  for (int shift = 24; shift >= 0; shift -= 8) s->push_back(static_cast<char>(v >> shift));
}

// An image file: the header (magic, n, h, w), then `pixels` as they are.
inline std::string IdxImages(uint32_t n, uint32_t h, uint32_t w, const std::vector<uint8_t>& pixels,
                             uint32_t magic = 0x00000803) {
  std::string s;
  for (uint32_t v : {magic, n, h, w}) PutBigEndian(&s, v);
  s.append(pixels.begin(), pixels.end());
  return s;
}

// A label file; `count` < 0: the number of labels given.
inline std::string IdxLabels(const std::vector<uint8_t>& labels, uint32_t magic = 0x00000801,
                             int64_t count = -1) {
  std::string s;
  PutBigEndian(&s, magic);
  PutBigEndian(&s, static_cast<uint32_t>(count < 0 ? labels.size() : count));
  s.append(labels.begin(), labels.end());
  return s;
}

// One gzip member holding `bytes`.
inline std::string Gzip(const std::string& bytes) {
  z_stream zs{};
  EXPECT_EQ(
      deflateInit2(&zs, Z_BEST_COMPRESSION, Z_DEFLATED, 16 + MAX_WBITS, 8, Z_DEFAULT_STRATEGY),
      Z_OK);
  std::string out(deflateBound(&zs, bytes.size()), '\0');
  zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(bytes.data()));
  zs.avail_in = static_cast<uInt>(bytes.size());
  zs.next_out = reinterpret_cast<Bytef*>(out.data());
  zs.avail_out = static_cast<uInt>(out.size());
  EXPECT_EQ(deflate(&zs, Z_FINISH), Z_STREAM_END);
  out.resize(zs.total_out);
  deflateEnd(&zs);
  return out;
}

}  // namespace dropnet::testing

#endif  // DROPNET_TESTS_TESTING_IDX_BYTES_H_

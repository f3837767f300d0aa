#include "common/dataio/idx.h"

#include <zlib.h>

#include <algorithm>
#include <fstream>
#include <iterator>
#include <new>

namespace dropnet::dataio {
namespace {

constexpr uint32_t kIdxImages = 0x00000803, kIdxLabels = 0x00000801;

uint32_t BigEndian(std::string_view b, size_t at) {
  const auto u = [&](size_t i) { return uint32_t{static_cast<unsigned char>(b[at + i])}; };
  return (u(0) << 24) | (u(1) << 16) | (u(2) << 8) | u(3);
}

bool IsGzip(std::string_view raw) {
  return raw.size() >= 2 && static_cast<unsigned char>(raw[0]) == 0x1f &&
         static_cast<unsigned char>(raw[1]) == 0x8b;
}

std::string ReadFileBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw DataError("cannot open IDX file '" + path + "'");
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) throw DataError("cannot read IDX file '" + path + "'");
  return bytes;
}

}  // namespace

std::string IdxBytes(std::string_view raw, const std::string& name, uint64_t max_bytes) {
  if (!IsGzip(raw)) {
    return std::string(max_bytes < raw.size() ? raw.substr(0, max_bytes + 1) : raw);
  }
  std::string out;
  z_stream zs{};
  if (inflateInit2(&zs, 16 + MAX_WBITS) != Z_OK) throw std::bad_alloc();
  struct End {
    z_stream* zs;
    ~End() { inflateEnd(zs); }
  } end{&zs};
  const auto* in = reinterpret_cast<const Bytef*>(raw.data());
  auto feed = [&](size_t from) {
    zs.next_in = const_cast<Bytef*>(in + from);
    zs.avail_in = static_cast<uInt>(std::min<size_t>(raw.size() - from, 1u << 30));
  };
  feed(0);
  unsigned char buf[1 << 16];
  while (out.size() <= max_bytes) {
    zs.next_out = buf;
    zs.avail_out = sizeof buf;
    const int rc = inflate(&zs, Z_NO_FLUSH);
    out.append(reinterpret_cast<const char*>(buf), sizeof buf - zs.avail_out);
    const size_t consumed = static_cast<size_t>(zs.next_in - in);
    if (rc == Z_STREAM_END) {
      if (consumed == raw.size()) return out;
      // Another member may follow, as gzip and zlib's gzread allow.
      if (!IsGzip(raw.substr(consumed))) {
        throw DataError("IDX file '" + name + "' has bytes after its gzip stream");
      }
      inflateReset(&zs);
      feed(consumed);
    } else if (rc == Z_OK || rc == Z_BUF_ERROR) {
      const bool starved = zs.avail_in == 0 && zs.avail_out != 0;
      if (rc == Z_OK && !starved) continue;
      if (zs.avail_in == 0 && consumed < raw.size()) {
        feed(consumed);
        continue;
      }
      throw DataError("IDX file '" + name + "' is corrupt (its gzip stream is cut short)");
    } else {
      throw DataError("IDX file '" + name + "' is corrupt (gzip: " +
                      (zs.msg ? zs.msg : "error " + std::to_string(rc)) + ")");
    }
  }
  return out;  // past max_bytes: the caller reports the size
}

IdxImages ReadIdx(std::string_view images_raw, std::string_view labels_raw,
                  const std::string& images_name, const std::string& labels_name) {
  // The header first, then exactly as many bytes as it declares (and one more, to tell a file
  // that is too long).
  const std::string head = IdxBytes(images_raw, images_name, 16);
  if (head.size() < 16 || BigEndian(head, 0) != kIdxImages) {
    throw DataError("'" + images_name + "' is not an IDX image file (magic 0x00000803)");
  }
  const uint64_t n = BigEndian(head, 4), h = BigEndian(head, 8), w = BigEndian(head, 12);
  if (h == 0 || w == 0 || h > 4096 || w > 4096 || n == 0) {
    throw DataError("IDX image header of '" + images_name + "' has implausible sizes");
  }
  const uint64_t pixel_bytes = n * h * w;
  std::string images = IdxBytes(images_raw, images_name, 16 + pixel_bytes);
  if (images.size() != 16 + pixel_bytes) {
    throw DataError("IDX image file '" + images_name + "' has " +
                    (images.size() > 16 + pixel_bytes ? "more than " + std::to_string(pixel_bytes)
                                                      : std::to_string(images.size() - 16)) +
                    " pixel bytes, its header says " + std::to_string(pixel_bytes));
  }
  std::string labels = IdxBytes(labels_raw, labels_name, 8 + n);
  if (labels.size() < 8 || BigEndian(labels, 0) != kIdxLabels) {
    throw DataError("'" + labels_name + "' is not an IDX label file (magic 0x00000801)");
  }
  if (BigEndian(labels, 4) != n || labels.size() != 8 + n) {
    throw DataError("IDX label file '" + labels_name + "' does not hold " + std::to_string(n) +
                    " labels");
  }
  IdxImages idx;
  idx.count = static_cast<uint32_t>(n);
  idx.height = static_cast<uint32_t>(h);
  idx.width = static_cast<uint32_t>(w);
  idx.pixels = std::move(images.erase(0, 16));
  idx.labels = std::move(labels.erase(0, 8));
  for (uint64_t i = 0; i < n; ++i) idx.num_classes = std::max(idx.num_classes, idx.Label(i) + 1);
  return idx;
}

IdxImages LoadIdx(const std::string& images_path, const std::string& labels_path) {
  return ReadIdx(ReadFileBytes(images_path), ReadFileBytes(labels_path), images_path, labels_path);
}

void ScalePixels(const IdxImages& idx, uint64_t rows, float* out) {
  const uint64_t n = std::min<uint64_t>(rows, idx.count) * idx.height * idx.width;
  const auto* p = reinterpret_cast<const unsigned char*>(idx.pixels.data());
  for (uint64_t k = 0; k < n; ++k) out[k] = p[k] / 255.0f;
}

}  // namespace dropnet::dataio

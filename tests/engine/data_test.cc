// Tests for the data readers (CSV, IDX plain and gzipped), splits, permutations and the
// standardizer.
#include "server/engine/data.h"

#include <gtest/gtest.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <numeric>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "tests/engine/test_util.h"
#include "tests/testing/idx_bytes.h"

namespace dropnet::engine {
namespace {

Dataset Csv(const std::string& text, const std::string& target = "",
            Task task = Task::kClassification) {
  std::istringstream in(text);
  CsvOptions options;
  options.target = target;
  options.task = task;
  return ReadCsv(in, options);
}

// The message of the InvalidArgument that `fn` throws, or "" (and a failure) when it does not.
template <typename Fn>
std::string ErrorOf(Fn fn) {
  try {
    fn();
  } catch (const InvalidArgument& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected InvalidArgument";
  return "";
}

bool Contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

TEST(CsvTest, StringLabelsMapToSortedIndices) {
  const Dataset d = Csv("a,b,label\n1,2,zebra\n3.5,-4,apple\n5,6e-1,mango\n7,8,apple\n");
  EXPECT_EQ(d.task, Task::kClassification);
  ASSERT_EQ(d.rows(), 4);
  ASSERT_EQ(d.x.cols(), 2);
  EXPECT_EQ(d.input_shape, Shape{{2}});
  EXPECT_EQ(d.feature_names, (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(d.target_name, "label");
  EXPECT_EQ(d.class_names, (std::vector<std::string>{"apple", "mango", "zebra"}));
  EXPECT_EQ(d.num_classes, 3);
  Matrix x(4, 2), y(4, 1);
  x << 1, 2, 3.5f, -4, 5, 0.6f, 7, 8;
  y << 2, 0, 1, 0;
  EXPECT_EQ(d.x, x);
  EXPECT_EQ(d.y, y);
}

TEST(CsvTest, IntegerLabelsAndTargetByName) {
  // Target in the middle, Windows line endings, a blank line and quoted fields.
  const Dataset d = Csv("x1,cls,\"x2\"\r\n0.5,3,1\r\n\r\n1.5,0,\"2\"\r\n2.5,1,3\r\n", "cls");
  ASSERT_EQ(d.rows(), 3);
  EXPECT_EQ(d.feature_names, (std::vector<std::string>{"x1", "x2"}));
  EXPECT_EQ(d.target_name, "cls");
  EXPECT_TRUE(d.class_names.empty());
  EXPECT_EQ(d.num_classes, 4);  // 1 + the largest label
  Matrix x(3, 2), y(3, 1);
  x << 0.5f, 1, 1.5f, 2, 2.5f, 3;
  y << 3, 0, 1;
  EXPECT_EQ(d.x, x);
  EXPECT_EQ(d.y, y);
}

TEST(CsvTest, RegressionTargets) {
  const Dataset d = Csv("f,price\n1,10.25\n2,-3e2\n3,0\n", "", Task::kRegression);
  EXPECT_EQ(d.task, Task::kRegression);
  ASSERT_EQ(d.rows(), 3);
  EXPECT_EQ(d.target_name, "price");
  Matrix y(3, 1);
  y << 10.25f, -300.0f, 0.0f;
  EXPECT_EQ(d.y, y);
  EXPECT_EQ(d.num_classes, 0);
}

TEST(CsvTest, ErrorsNameLineAndColumn) {
  // A non-numeric feature: line 3 (the header is line 1), column 2.
  std::string e = ErrorOf([] { Csv("a,b,label\n1,2,0\n3,abc,1\n"); });
  EXPECT_TRUE(Contains(e, "line 3")) << e;
  EXPECT_TRUE(Contains(e, "column 2")) << e;
  EXPECT_TRUE(Contains(e, "abc")) << e;
  // An empty feature.
  e = ErrorOf([] { Csv("a,b,label\n1,2,0\n3,4,1\n,5,1\n"); });
  EXPECT_TRUE(Contains(e, "line 4")) << e;
  EXPECT_TRUE(Contains(e, "column 1")) << e;
  // Non-finite values are rejected.
  e = ErrorOf([] { Csv("a,b,label\n1,inf,0\n"); });
  EXPECT_TRUE(Contains(e, "line 2")) << e;
  EXPECT_TRUE(Contains(e, "column 2")) << e;
  // A row with a missing field.
  e = ErrorOf([] { Csv("a,b,label\n1,2,0\n3,1\n"); });
  EXPECT_TRUE(Contains(e, "line 3")) << e;
  // A non-numeric regression target.
  e = ErrorOf([] { Csv("a,b,y\n1,2,0.5\n3,4,abc\n", "", Task::kRegression); });
  EXPECT_TRUE(Contains(e, "line 3")) << e;
  EXPECT_TRUE(Contains(e, "column 3")) << e;
  // A missing classification label must not become a class named "".
  e = ErrorOf([] { Csv("a,b,label\n1,2,cat\n3,4,\n5,6,dog\n"); });
  EXPECT_TRUE(Contains(e, "line 3")) << e;
  EXPECT_TRUE(Contains(e, "column 3")) << e;
}

TEST(CsvTest, EmptyAndDegenerateFiles) {
  EXPECT_THROW(Csv(""), InvalidArgument);
  EXPECT_THROW(Csv("a,b,label\n"), InvalidArgument);  // header only
  EXPECT_THROW(Csv("label\n1\n"), InvalidArgument);   // no feature column
  const std::string e = ErrorOf([] { Csv("a,b\n1,2\n", "missing"); });
  EXPECT_TRUE(Contains(e, "missing")) << e;
  EXPECT_THROW(LoadCsv("/nonexistent/dropnet.csv", CsvOptions{}), InvalidArgument);
}

// IDX files written by the tests into a private temporary directory.
class IdxTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = std::filesystem::path(::testing::TempDir()) /
           ("dropnet_idx_" + std::to_string(getpid()) + "_" + info->name());
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  static std::string Images(uint32_t n, uint32_t h, uint32_t w, const std::vector<uint8_t>& pixels,
                            uint32_t magic = 0x00000803) {
    return testing::IdxImages(n, h, w, pixels, magic);
  }
  static std::string Labels(const std::vector<uint8_t>& labels, uint32_t magic = 0x00000801,
                            int64_t count = -1) {
    return testing::IdxLabels(labels, magic, count);
  }
  std::string Write(const std::string& name, const std::string& bytes) {
    const std::string path = (dir_ / name).string();
    std::ofstream out(path, std::ios::binary);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    return path;
  }
  std::string WriteGz(const std::string& name, const std::string& bytes) {
    const std::string path = (dir_ / name).string();
    gzFile f = gzopen(path.c_str(), "wb");
    EXPECT_NE(f, nullptr);
    EXPECT_EQ(gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size())),
              static_cast<int>(bytes.size()));
    EXPECT_EQ(gzclose(f), Z_OK);
    return path;
  }

  // Three 2 x 3 images with pixels 0, 15, 30, ..., 255, labelled 2, 0, 1.
  static std::vector<uint8_t> Pixels() {
    std::vector<uint8_t> p(18);
    for (int i = 0; i < 18; ++i) p[i] = static_cast<uint8_t>(15 * i);
    return p;
  }
  static void ExpectSmallSet(const Dataset& d) {
    EXPECT_EQ(d.task, Task::kClassification);
    ASSERT_EQ(d.rows(), 3);
    ASSERT_EQ(d.x.cols(), 6);
    EXPECT_EQ(d.input_shape, (Shape{{1, 2, 3}}));
    EXPECT_EQ(d.num_classes, 3);
    for (int i = 0; i < 18; ++i) EXPECT_FLOAT_EQ(d.x(i / 6, i % 6), 15.0f * i / 255.0f) << i;
    EXPECT_EQ(d.x(2, 5), 1.0f);
    EXPECT_EQ(d.y(0, 0), 2.0f);
    EXPECT_EQ(d.y(1, 0), 0.0f);
    EXPECT_EQ(d.y(2, 0), 1.0f);
  }

  std::filesystem::path dir_;
};

TEST_F(IdxTest, ReadsPlainFiles) {
  ExpectSmallSet(
      LoadIdx(Write("images", Images(3, 2, 3, Pixels())), Write("labels", Labels({2, 0, 1}))));
}

TEST_F(IdxTest, ReadsGzippedFiles) {
  const std::string images = WriteGz("images.gz", Images(3, 2, 3, Pixels()));
  const std::string labels = WriteGz("labels.gz", Labels({2, 0, 1}));
  // Really compressed: the gzip magic bytes.
  std::ifstream in(images, std::ios::binary);
  unsigned char magic[2] = {0, 0};
  in.read(reinterpret_cast<char*>(magic), 2);
  EXPECT_EQ(magic[0], 0x1f);
  EXPECT_EQ(magic[1], 0x8b);
  ExpectSmallSet(LoadIdx(images, labels));
  // Mixed: gzipped images, plain labels.
  ExpectSmallSet(LoadIdx(images, Write("labels", Labels({2, 0, 1}))));
}

TEST_F(IdxTest, RejectsWrongMagic) {
  const std::string images = Write("images", Images(3, 2, 3, Pixels()));
  const std::string labels = Write("labels", Labels({2, 0, 1}));
  EXPECT_THROW(LoadIdx(Write("bad_images", Images(3, 2, 3, Pixels(), 0x00000801)), labels),
               InvalidArgument);
  EXPECT_THROW(LoadIdx(images, Write("bad_labels", Labels({2, 0, 1}, 0x00000803))),
               InvalidArgument);
  // Images and labels swapped.
  EXPECT_THROW(LoadIdx(labels, images), InvalidArgument);
  EXPECT_THROW(LoadIdx(WriteGz("bad.gz", Images(3, 2, 3, Pixels(), 0x12345678)), labels),
               InvalidArgument);
}

TEST_F(IdxTest, RejectsTruncatedFiles) {
  const std::string labels = Write("labels", Labels({2, 0, 1}));
  std::vector<uint8_t> short_pixels = Pixels();
  short_pixels.pop_back();
  EXPECT_THROW(LoadIdx(Write("short", Images(3, 2, 3, short_pixels)), labels), InvalidArgument);
  EXPECT_THROW(LoadIdx(WriteGz("short.gz", Images(3, 2, 3, short_pixels)), labels),
               InvalidArgument);
  // A header cut short.
  EXPECT_THROW(LoadIdx(Write("header", Images(3, 2, 3, {}).substr(0, 10)), labels),
               InvalidArgument);
  const std::string images = Write("images", Images(3, 2, 3, Pixels()));
  EXPECT_THROW(LoadIdx(images, Write("few_labels", Labels({2, 0}, 0x00000801, 3))),
               InvalidArgument);
  EXPECT_THROW(LoadIdx(images, Write("label_count", Labels({2, 0}))), InvalidArgument);
  // Sizes must match the header exactly: trailing bytes mean the header is wrong.
  std::vector<uint8_t> long_pixels = Pixels();
  long_pixels.push_back(7);
  EXPECT_THROW(LoadIdx(Write("long", Images(3, 2, 3, long_pixels)), labels), InvalidArgument);
  EXPECT_THROW(LoadIdx(images, Write("long_labels", Labels({2, 0, 1, 1}, 0x00000801, 3))),
               InvalidArgument);
  // A gzip stream cut in the middle.
  std::vector<uint8_t> many(4000);
  for (size_t i = 0; i < many.size(); ++i) many[i] = static_cast<uint8_t>((i * 7919) % 251);
  const std::string full = WriteGz("full.gz", Images(1000, 2, 2, many));
  std::ifstream in(full, std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  ASSERT_GT(bytes.size(), 100u);
  std::vector<uint8_t> labels1000(1000, 1);
  const std::string labels_path = Write("labels1000", Labels(labels1000));
  EXPECT_NO_THROW(LoadIdx(full, labels_path));
  EXPECT_THROW(LoadIdx(Write("cut.gz", bytes.substr(0, bytes.size() / 2)), labels_path),
               InvalidArgument);
  EXPECT_THROW(LoadIdx((dir_ / "missing").string(), labels), InvalidArgument);
}

using testing::Gzip;

TEST_F(IdxTest, ReadsFromMemoryPlainGzippedAndInSeveralMembers) {
  const std::string images = Images(3, 2, 3, Pixels()), labels = Labels({2, 0, 1});
  ExpectSmallSet(ReadIdx(images, labels));
  ExpectSmallSet(ReadIdx(Gzip(images), Gzip(labels)));
  // gzip allows members back to back; so does zlib's gzread.
  ExpectSmallSet(ReadIdx(Gzip(images.substr(0, 7)) + Gzip(images.substr(7)), labels));
  // Anything after the last member is refused, as is a stream cut short.
  EXPECT_THROW(ReadIdx(Gzip(images) + "junk", labels), InvalidArgument);
  const std::string gz = Gzip(images);
  EXPECT_THROW(ReadIdx(gz.substr(0, gz.size() - 9), labels), InvalidArgument);
}

TEST_F(IdxTest, InflatingStopsPastTheDeclaredSize) {
  // 3 images of 2 x 3 pixels, then 32 MiB of zeros the header does not announce: a small file
  // that would inflate into a large buffer (common/dataio's IdxBytes is tested in
  // tests/dataio/idx_test.cc).
  const std::string bomb = Gzip(Images(3, 2, 3, Pixels()) + std::string(32 << 20, '\0'));
  ASSERT_LT(bomb.size(), 64u << 10);
  ExpectInvalidArgumentContaining(
      [&] {
        ReadIdx(bomb, Labels({2, 0, 1}), "bomb");
      },
      {"more than 18 pixel bytes"});
  // Labels are held to the image count the same way.
  EXPECT_THROW(
      ReadIdx(Images(3, 2, 3, Pixels()), Gzip(Labels({2, 0, 1}) + std::string(1 << 20, '\1'))),
      InvalidArgument);
}

TEST(FashionMnistTest, LoadsTheTestSet) {
  const std::string dir = "/usr/share/datasets/fashion-mnist/";
  if (!std::filesystem::exists(dir + "t10k-images-idx3-ubyte.gz")) {
    GTEST_SKIP() << "dataset-fashion-mnist is not installed";
  }
  const Dataset d = LoadIdx(dir + "t10k-images-idx3-ubyte.gz", dir + "t10k-labels-idx1-ubyte.gz");
  ASSERT_EQ(d.rows(), 10000);
  ASSERT_EQ(d.x.cols(), 784);
  EXPECT_EQ(d.input_shape, (Shape{{1, 28, 28}}));
  EXPECT_EQ(d.num_classes, 10);
  EXPECT_GE(d.x.minCoeff(), 0.0f);
  EXPECT_LE(d.x.maxCoeff(), 1.0f);
  EXPECT_EQ(d.x.maxCoeff(), 1.0f);
  std::vector<int> counts(10, 0);
  for (int64_t r = 0; r < d.rows(); ++r) {
    const float label = d.y(r, 0);
    ASSERT_TRUE(label >= 0 && label <= 9 && label == std::floor(label)) << label;
    ++counts[static_cast<int>(label)];
  }
  for (int c = 0; c < 10; ++c) EXPECT_EQ(counts[c], 1000) << c;  // the test set is balanced
}

TEST(StandardizerTest, FitsMeanAndPopulationStd) {
  Matrix x(4, 3);
  x << 1, 2, 5, 3, 2, 5, 5, 4, 5, 7, 8, 5;
  const Standardizer s = Standardizer::Fit(x);
  ASSERT_EQ(s.mean.size(), 3);
  EXPECT_FLOAT_EQ(s.mean[0], 4.0f);
  EXPECT_FLOAT_EQ(s.mean[1], 4.0f);
  EXPECT_FLOAT_EQ(s.mean[2], 5.0f);
  EXPECT_FLOAT_EQ(s.scale[0], std::sqrt(5.0f));  // (9 + 1 + 1 + 9) / 4
  EXPECT_FLOAT_EQ(s.scale[1], std::sqrt(6.0f));  // (4 + 4 + 0 + 16) / 4
  EXPECT_FLOAT_EQ(s.scale[2], 1.0f);             // constant: scale 1
  Matrix z = x;
  s.Apply(&z);
  EXPECT_FLOAT_EQ(z(0, 0), -3.0f / std::sqrt(5.0f));
  for (int c = 0; c < 2; ++c) {
    EXPECT_NEAR(z.col(c).mean(), 0.0f, 1e-6f);
    EXPECT_NEAR(z.col(c).squaredNorm() / 4, 1.0f, 1e-5f);
  }
  EXPECT_EQ(z.col(2).cwiseAbs().maxCoeff(), 0.0f);
  // An empty standardizer leaves data alone.
  Matrix unchanged = x;
  Standardizer().Apply(&unchanged);
  EXPECT_EQ(unchanged, x);
}

Dataset Indexed(int rows) {
  Dataset d;
  d.x.resize(rows, 2);
  d.y.resize(rows, 1);
  for (int i = 0; i < rows; ++i) {
    d.x(i, 0) = static_cast<float>(i);
    d.x(i, 1) = static_cast<float>(-i);
    d.y(i, 0) = static_cast<float>(i % 3);
  }
  d.num_classes = 3;
  d.input_shape = Shape{{2}};
  d.feature_names = {"a", "b"};
  return d;
}

std::vector<int> RowIds(const Dataset& d) {
  std::vector<int> ids;
  for (int64_t r = 0; r < d.rows(); ++r) {
    EXPECT_EQ(d.x(r, 1), -d.x(r, 0));  // rows stay whole
    EXPECT_EQ(d.y(r, 0), static_cast<float>(static_cast<int>(d.x(r, 0)) % 3));
    ids.push_back(static_cast<int>(d.x(r, 0)));
  }
  return ids;
}

TEST(SplitTest, SizesCoverageAndDeterminism) {
  const Dataset data = Indexed(10);
  Dataset a, b;
  SplitDataset(data, 0.3, 42, &a, &b);
  EXPECT_EQ(a.rows(), 7);
  EXPECT_EQ(b.rows(), 3);
  EXPECT_EQ(a.num_classes, 3);
  EXPECT_EQ(b.input_shape, Shape{{2}});
  EXPECT_EQ(a.feature_names, data.feature_names);
  std::vector<int> all = RowIds(a);
  const std::vector<int> second = RowIds(b);
  all.insert(all.end(), second.begin(), second.end());
  std::sort(all.begin(), all.end());
  std::vector<int> expected(10);
  std::iota(expected.begin(), expected.end(), 0);
  EXPECT_EQ(all, expected);

  Dataset a2, b2;
  SplitDataset(data, 0.3, 42, &a2, &b2);
  EXPECT_EQ(RowIds(a2), RowIds(a));
  EXPECT_EQ(RowIds(b2), second);
  // Another seed gives another split (some seed among a few must differ).
  bool differs = false;
  for (uint64_t seed = 43; seed < 48 && !differs; ++seed) {
    SplitDataset(data, 0.3, seed, &a2, &b2);
    differs = RowIds(b2) != second;
  }
  EXPECT_TRUE(differs);

  SplitDataset(Indexed(7), 0.5, 1, &a, &b);  // round(3.5) = 4
  EXPECT_EQ(b.rows(), 4);
  EXPECT_EQ(a.rows(), 3);
  SplitDataset(data, 0.0, 1, &a, &b);
  EXPECT_EQ(a.rows(), 10);
  EXPECT_EQ(b.rows(), 0);
  EXPECT_THROW(SplitDataset(data, 1.0, 1, &a, &b), InvalidArgument);
  EXPECT_THROW(SplitDataset(data, -0.1, 1, &a, &b), InvalidArgument);
}

TEST(SplitTest, SubsetKeepsTheRequestedOrder) {
  const Dataset s = Subset(Indexed(6), {4, 0, 4});
  EXPECT_EQ(RowIds(s), (std::vector<int>{4, 0, 4}));
}

TEST(PermutationTest, IsASeededPermutation) {
  for (int64_t n : {0, 1, 2, 17, 1000}) {
    SCOPED_TRACE(n);
    std::vector<int64_t> p = Permutation(n, 5);
    ASSERT_EQ(static_cast<int64_t>(p.size()), n);
    EXPECT_EQ(Permutation(n, 5), p);
    std::sort(p.begin(), p.end());
    for (int64_t i = 0; i < n; ++i) EXPECT_EQ(p[i], i);
  }
  const auto p = Permutation(1000, 5);
  EXPECT_NE(Permutation(1000, 6), p);
  int fixed_points = 0;
  for (int64_t i = 0; i < 1000; ++i) fixed_points += p[i] == i;
  EXPECT_LT(fixed_points, 10);  // about Poisson(1)
}

TEST(PermutationTest, AllOrdersOfFourAreEquallyLikely) {
  // 24000 seeds: each of the 24 orders about 1000 times (5 standard deviations is about 156).
  std::map<std::vector<int64_t>, int> counts;
  for (uint64_t seed = 0; seed < 24000; ++seed) ++counts[Permutation(4, seed)];
  EXPECT_EQ(counts.size(), 24u);
  for (const auto& [order, count] : counts) EXPECT_NEAR(count, 1000, 156);
}

}  // namespace
}  // namespace dropnet::engine

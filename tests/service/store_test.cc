// Tests for the model store: atomic round trips of checkpoints and data sets, version ordering,
// checksum verification, clean-up of interrupted writes, read-only stores and deletion.
#include "server/service/store.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include <google/protobuf/util/message_differencer.h>

#include "server/service/convert.h"
#include "server/service/status.h"
#include "tests/testing/temp_dir.h"

namespace dropnet::service {
namespace {

namespace fs = std::filesystem;
using google::protobuf::util::MessageDifferencer;
using testing::TempDir;

v1::ModelSpec SmallSpec() {
  v1::ModelSpec spec;
  spec.add_input_shape(4);
  spec.set_seed(7);
  auto* dense = spec.add_layers();
  dense->set_type("dense");
  dense->set_units(8);
  spec.add_layers()->set_type("relu");
  auto* drop = spec.add_layers();
  drop->set_type("dropout");
  drop->set_rate(0.3);
  auto* out = spec.add_layers();
  out->set_type("dense");
  out->set_units(3);
  return spec;
}

v1::Checkpoint MakeCheckpoint(const std::string& model, int64_t version) {
  auto snap = NewSnapshot(model, SmallSpec(), SpecLimits{});
  snap->version = version;
  snap->steps = 10 * version;
  snap->note = "epoch " + std::to_string(version);
  v1::EpochRecord rec;
  rec.set_version(version);
  rec.set_epoch(1);
  rec.set_loss(0.5);
  snap->history.push_back(rec);
  v1::Checkpoint c;
  ToCheckpoint(*snap, &c);
  return c;
}

v1::StoredDataset MakeDataset(const std::string& name) {
  v1::StoredDataset d;
  d.set_name(name);
  d.set_task(v1::TASK_CLASSIFICATION);
  d.add_input_shape(2);
  d.mutable_x()->add_shape(3);
  d.mutable_x()->add_shape(2);
  for (float v : {0.f, 1.f, 2.f, 3.f, 4.f, 5.f}) d.mutable_x()->add_values(v);
  d.mutable_y()->add_shape(3);
  d.mutable_y()->add_shape(1);
  for (float v : {0.f, 1.f, 1.f}) d.mutable_y()->add_values(v);
  d.set_num_classes(2);
  d.set_source("upload");
  return d;
}

// Saves version 1 of the model "m" and the data set "d".
void SaveModelAndDataset(ModelStore* store) {
  store->SaveCheckpoint(MakeCheckpoint("m", 1));
  store->SaveDataset(MakeDataset("d"));
}

// Runs `f` and returns the code of the ServiceError it throws (OK when it throws nothing).
template <typename F>
grpc::StatusCode CodeOf(F&& f) {
  try {
    f();
  } catch (const ServiceError& e) {
    return e.code();
  }
  return grpc::StatusCode::OK;
}

std::string ReadBytes(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

void WriteBytes(const fs::path& p, const std::string& bytes) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out << bytes;
}

TEST(ModelStoreTest, CreatesItsDirectoriesWhenWritable) {
  TempDir dir;
  ModelStore store(dir.path() / "store", true);
  EXPECT_TRUE(fs::is_directory(dir.path() / "store" / "models"));
  EXPECT_TRUE(fs::is_directory(dir.path() / "store" / "datasets"));
  EXPECT_TRUE(store.ModelNames().empty());
  EXPECT_TRUE(store.DatasetNames().empty());
}

TEST(ModelStoreTest, CheckpointRoundTrip) {
  TempDir dir;
  ModelStore store(dir.path(), true);
  const v1::Checkpoint saved = MakeCheckpoint("m", 1);
  store.SaveCheckpoint(saved);
  EXPECT_TRUE(fs::is_regular_file(dir.path() / "models" / "m" / "1" / "checkpoint.pb"));
  const v1::Checkpoint loaded = store.LoadCheckpoint("m", 1);
  std::string diff;
  MessageDifferencer differ;
  differ.ReportDifferencesToString(&diff);
  EXPECT_TRUE(differ.Compare(saved, loaded)) << diff;
  EXPECT_EQ(store.ModelNames(), std::vector<std::string>{"m"});
}

TEST(ModelStoreTest, DatasetRoundTrip) {
  TempDir dir;
  ModelStore store(dir.path(), true);
  const v1::StoredDataset saved = MakeDataset("d");
  store.SaveDataset(saved);
  EXPECT_TRUE(MessageDifferencer::Equals(saved, store.LoadDataset("d")));
  EXPECT_EQ(store.DatasetNames(), std::vector<std::string>{"d"});

  // Replacing a data set keeps exactly one, with the new contents.
  v1::StoredDataset replaced = saved;
  replaced.set_source("second");
  store.SaveDataset(replaced);
  EXPECT_EQ(store.LoadDataset("d").source(), "second");
  EXPECT_EQ(store.DatasetNames(), std::vector<std::string>{"d"});
}

TEST(ModelStoreTest, VersionsAreNumericAndAscending) {
  TempDir dir;
  ModelStore store(dir.path(), true);
  for (int64_t v : {3, 10, 1, 2}) store.SaveCheckpoint(MakeCheckpoint("m", v));
  // A directory without a checkpoint, or with a name that is not a version, is not a version.
  fs::create_directories(dir.path() / "models" / "m" / "11");
  fs::create_directories(dir.path() / "models" / "m" / "abc");
  EXPECT_EQ(store.Versions("m"), (std::vector<int64_t>{1, 2, 3, 10}));
  EXPECT_EQ(store.LoadCheckpoint("m", 10).version(), 10);
  EXPECT_EQ(store.LoadCheckpoint("m", 10).steps(), 100);
  EXPECT_TRUE(store.Versions("unknown").empty());
}

TEST(ModelStoreTest, CorruptPayloadIsDataLoss) {
  TempDir dir;
  ModelStore store(dir.path(), true);
  store.SaveCheckpoint(MakeCheckpoint("m", 1));
  const fs::path file = dir.path() / "models" / "m" / "1" / "checkpoint.pb";
  std::string bytes = ReadBytes(file);
  ASSERT_GT(bytes.size(), 100u);
  // The payload is the last field of the blob: flip a byte near the end.
  bytes[bytes.size() - 5] ^= 0x5a;
  WriteBytes(file, bytes);
  try {
    store.LoadCheckpoint("m", 1);
    FAIL() << "a corrupted checkpoint was loaded";
  } catch (const ServiceError& e) {
    EXPECT_EQ(e.code(), grpc::StatusCode::DATA_LOSS);
    EXPECT_NE(std::string(e.what()).find("checksum"), std::string::npos) << e.what();
  }
}

TEST(ModelStoreTest, CorruptDatasetAndGarbageFilesAreDataLoss) {
  TempDir dir;
  ModelStore store(dir.path(), true);
  store.SaveDataset(MakeDataset("d"));
  const fs::path file = dir.path() / "datasets" / "d" / "dataset.pb";
  std::string bytes = ReadBytes(file);
  bytes[bytes.size() - 3] ^= 0x01;
  WriteBytes(file, bytes);
  EXPECT_EQ(CodeOf([&] { store.LoadDataset("d"); }), grpc::StatusCode::DATA_LOSS);

  WriteBytes(file, "this is not a protobuf \xff\xff\xff");
  EXPECT_EQ(CodeOf([&] { store.LoadDataset("d"); }), grpc::StatusCode::DATA_LOSS);
}

TEST(BlobTest, ParsesFromMemoryAndChecksTheChecksum) {
  const v1::Checkpoint c = MakeCheckpoint("m", 3);
  const std::string file = SerializeBlob(c);
  v1::Checkpoint back;
  ParseBlob(file, "memory", &back);
  EXPECT_TRUE(MessageDifferencer::Equals(c, back));
  // WrapBlob of the serialised payload is the same file.
  EXPECT_EQ(WrapBlob(c.SerializeAsString()), file);

  std::string flipped = file;
  flipped[flipped.size() - 2] ^= 0x10;
  EXPECT_EQ(CodeOf([&] { ParseBlob(flipped, "memory", &back); }), grpc::StatusCode::DATA_LOSS);
  EXPECT_EQ(CodeOf([&] { ParseBlob("", "memory", &back); }), grpc::StatusCode::DATA_LOSS);
  EXPECT_EQ(CodeOf([&] { ParseBlob(file.substr(0, file.size() / 2), "memory", &back); }),
            grpc::StatusCode::DATA_LOSS);
  // A correct checksum around bytes that are not a checkpoint.
  EXPECT_EQ(CodeOf([&] { ParseBlob(WrapBlob("\xff\xff\xff"), "memory", &back); }),
            grpc::StatusCode::DATA_LOSS);
}

TEST(ModelStoreTest, MissingVersionIsNotFound) {
  TempDir dir;
  ModelStore store(dir.path(), true);
  EXPECT_EQ(CodeOf([&] { store.LoadCheckpoint("m", 1); }), grpc::StatusCode::NOT_FOUND);
}

TEST(ModelStoreTest, TemporariesAreNeverListedAndAreCleanedUp) {
  TempDir dir;
  ModelStore store(dir.path(), true);
  SaveModelAndDataset(&store);
  // Leftovers of interrupted writes: a model, a version, a data set, and a stray file.
  fs::create_directories(dir.path() / "models" / ".n.tmp-1-2-3");
  fs::create_directories(dir.path() / "models" / "m" / ".2.tmp-1-2-3");
  WriteBytes(dir.path() / "models" / "m" / ".2.tmp-1-2-3" / "checkpoint.pb", "x");
  fs::create_directories(dir.path() / "datasets" / ".e.tmp-9");
  WriteBytes(dir.path() / "datasets" / ".stray", "x");

  EXPECT_EQ(store.ModelNames(), std::vector<std::string>{"m"});
  EXPECT_EQ(store.Versions("m"), std::vector<int64_t>{1});
  EXPECT_EQ(store.DatasetNames(), std::vector<std::string>{"d"});

  EXPECT_EQ(store.CleanTemporaries(), 4);
  EXPECT_FALSE(fs::exists(dir.path() / "models" / ".n.tmp-1-2-3"));
  EXPECT_FALSE(fs::exists(dir.path() / "models" / "m" / ".2.tmp-1-2-3"));
  EXPECT_FALSE(fs::exists(dir.path() / "datasets" / ".e.tmp-9"));
  EXPECT_FALSE(fs::exists(dir.path() / "datasets" / ".stray"));
  // What was whole stays.
  EXPECT_EQ(store.LoadCheckpoint("m", 1).version(), 1);
  EXPECT_EQ(store.LoadDataset("d").name(), "d");
  EXPECT_EQ(store.CleanTemporaries(), 0);
}

TEST(ModelStoreTest, WritesLeaveNoTemporaries) {
  TempDir dir;
  ModelStore store(dir.path(), true);
  SaveModelAndDataset(&store);
  store.SaveDataset(MakeDataset("d"));  // a replacement
  for (const auto& e : fs::recursive_directory_iterator(dir.path())) {
    EXPECT_NE(e.path().filename().string()[0], '.') << e.path();
  }
}

TEST(ModelStoreTest, ReadOnlyStoreRefusesWrites) {
  TempDir dir;
  {
    ModelStore writer(dir.path(), true);
    SaveModelAndDataset(&writer);
  }
  fs::create_directories(dir.path() / "models" / ".leftover");

  ModelStore store(dir.path(), false);
  EXPECT_FALSE(store.writable());
  EXPECT_EQ(CodeOf([&] { store.SaveCheckpoint(MakeCheckpoint("m", 2)); }),
            grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(CodeOf([&] { store.SaveDataset(MakeDataset("e")); }),
            grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(CodeOf([&] { store.DeleteModel("m"); }), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(CodeOf([&] { store.DeleteDataset("d"); }), grpc::StatusCode::FAILED_PRECONDITION);
  // A read-only store does not clean either: that is the writer's business.
  EXPECT_EQ(store.CleanTemporaries(), 0);
  EXPECT_TRUE(fs::exists(dir.path() / "models" / ".leftover"));
  // Nothing changed, and it still reads.
  EXPECT_EQ(store.Versions("m"), std::vector<int64_t>{1});
  EXPECT_EQ(store.DatasetNames(), std::vector<std::string>{"d"});
  EXPECT_EQ(store.LoadCheckpoint("m", 1).model(), "m");
  EXPECT_FALSE(fs::exists(dir.path() / "models" / "m" / "2"));
}

TEST(ModelStoreTest, ReadOnlyStoreDoesNotCreateItsRoot) {
  TempDir dir;
  ModelStore store(dir.path() / "absent", false);
  EXPECT_FALSE(fs::exists(dir.path() / "absent"));
  EXPECT_TRUE(store.ModelNames().empty());
  EXPECT_TRUE(store.DatasetNames().empty());
}

TEST(ModelStoreTest, DeleteModelRemovesEveryVersion) {
  TempDir dir;
  ModelStore store(dir.path(), true);
  store.SaveCheckpoint(MakeCheckpoint("m", 1));
  store.SaveCheckpoint(MakeCheckpoint("m", 2));
  store.SaveCheckpoint(MakeCheckpoint("keep", 1));
  store.DeleteModel("m");
  EXPECT_FALSE(fs::exists(dir.path() / "models" / "m"));
  EXPECT_EQ(store.ModelNames(), std::vector<std::string>{"keep"});
  EXPECT_TRUE(store.Versions("m").empty());
  EXPECT_EQ(CodeOf([&] { store.LoadCheckpoint("m", 1); }), grpc::StatusCode::NOT_FOUND);
  // No '.…-deleted' leftover stays behind.
  for (const auto& e : fs::directory_iterator(dir.path() / "models")) {
    EXPECT_EQ(e.path().filename(), "keep");
  }
  // Deleting what is not there is harmless.
  store.DeleteModel("m");
}

TEST(ModelStoreTest, DeleteDatasetRemovesIt) {
  TempDir dir;
  ModelStore store(dir.path(), true);
  store.SaveDataset(MakeDataset("d"));
  store.DeleteDataset("d");
  EXPECT_FALSE(fs::exists(dir.path() / "datasets" / "d"));
  EXPECT_TRUE(store.DatasetNames().empty());
  EXPECT_EQ(CodeOf([&] { store.LoadDataset("d"); }), grpc::StatusCode::NOT_FOUND);
}

}  // namespace
}  // namespace dropnet::service

// Tests for the model store: atomic round trips of checkpoints and data sets, version ordering,
// checksum verification, clean-up of interrupted writes, read-only stores and deletion.
#include "server/service/store.h"

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <future>
#include <iterator>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <google/protobuf/util/message_differencer.h>

#include "server/service/convert.h"
#include "server/service/registry.h"
#include "server/service/status.h"
#include "tests/testing/spec_json.h"
#include "tests/testing/temp_dir.h"

namespace dropnet::service {
namespace {

namespace fs = std::filesystem;
using google::protobuf::util::MessageDifferencer;
using testing::TempDir;

v1::ModelSpec SmallSpec() {
  return testing::SpecFromJson(R"({"inputShape": [4], "seed": 7, "layers": [
      {"type": "dense", "units": 8}, {"type": "relu"}, {"type": "dropout", "rate": 0.3},
      {"type": "dense", "units": 3}]})");
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

bool SameMessage(const google::protobuf::Message& a, const google::protobuf::Message& b) {
  return MessageDifferencer::Equals(a, b);
}

// Runs `op` on a store at `root` in a child process that exits at step `crash_at` of the store's
// writes (1-based; 0: never). Returns true when the child crashed there, false when `op` finished
// first.
bool RunAndCrashAt(const fs::path& root, int crash_at, const std::function<void(ModelStore&)>& op) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    int steps = 0;
    SetStoreStepHookForTesting([&](std::string_view, const fs::path&) {
      if (++steps == crash_at) ::_exit(42);
    });
    try {
      ModelStore store(root, true);
      op(store);
    } catch (...) {
      ::_exit(3);
    }
    ::_exit(0);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  EXPECT_TRUE(WIFEXITED(status));
  EXPECT_NE(WEXITSTATUS(status), 3) << "the write failed in the child";
  return WEXITSTATUS(status) == 42;
}

// A crash at any step of any store write leaves the old or the new copy whole, and a restart
// (CleanTemporaries) leaves no leftovers behind.
TEST(ModelStoreCrashTest, EveryStepOfEveryWriteLeavesTheOldOrTheNewCopyWhole) {
  const v1::Checkpoint v1c = MakeCheckpoint("m", 1), v2c = MakeCheckpoint("m", 2);
  v1::StoredDataset d_old = MakeDataset("d"), d_new = MakeDataset("d");
  d_new.set_source("the new one");
  d_new.mutable_x()->set_values(0, 42.f);
  v1::ModelSettings labels_old, labels_new;
  (*labels_old.mutable_labels())["stable"] = 1;
  (*labels_new.mutable_labels())["stable"] = 2;
  labels_new.set_serving_label("stable");
  v1::EpochRecord epoch1, epoch2;
  epoch1.set_epoch(1);
  epoch1.set_version(2);
  epoch2.set_epoch(2);
  epoch2.set_version(3);
  epoch2.set_loss(0.25);
  struct Scenario {
    const char* name;
    std::function<void(ModelStore&)> before, op;
    // true: the old state; false: the new one; fails the test when it is neither.
    std::function<bool(ModelStore&)> is_old;
  };
  auto has_version = [](ModelStore& s, const v1::Checkpoint& c) {
    const auto vs = s.Versions(c.model());
    if (std::find(vs.begin(), vs.end(), c.version()) == vs.end()) return false;
    EXPECT_TRUE(SameMessage(s.LoadCheckpoint(c.model(), c.version()), c)) << c.version();
    return true;
  };
  auto dataset_is = [](ModelStore& s, const v1::StoredDataset& d) {
    const auto names = s.DatasetNames();
    return std::find(names.begin(), names.end(), d.name()) != names.end() &&
           SameMessage(s.LoadDataset(d.name()), d);
  };
  const std::vector<Scenario> scenarios = {
      {"first version", [](ModelStore&) {}, [&](ModelStore& s) { s.SaveCheckpoint(v1c); },
       [&](ModelStore& s) { return !has_version(s, v1c); }},
      {"next version", [&](ModelStore& s) { s.SaveCheckpoint(v1c); },
       [&](ModelStore& s) { s.SaveCheckpoint(v2c); },
       [&](ModelStore& s) {
         EXPECT_TRUE(has_version(s, v1c));
         return !has_version(s, v2c);
       }},
      {"new data set", [](ModelStore&) {}, [&](ModelStore& s) { s.SaveDataset(d_old); },
       [&](ModelStore& s) {
         if (s.DatasetNames().empty()) return true;
         EXPECT_TRUE(dataset_is(s, d_old));
         return false;
       }},
      {"data set overwrite", [&](ModelStore& s) { s.SaveDataset(d_old); },
       [&](ModelStore& s) { s.SaveDataset(d_new); },
       [&](ModelStore& s) {
         if (dataset_is(s, d_old)) return true;
         EXPECT_TRUE(dataset_is(s, d_new)) << "neither the old nor the new data set is whole";
         return false;
       }},
      {"model delete", [&](ModelStore& s) { s.SaveCheckpoint(v1c); },
       [](ModelStore& s) { s.DeleteModel("m"); },
       [&](ModelStore& s) { return !s.ModelNames().empty() && has_version(s, v1c); }},
      {"data set delete", [&](ModelStore& s) { s.SaveDataset(d_old); },
       [](ModelStore& s) { s.DeleteDataset("d"); },
       [&](ModelStore& s) { return !s.DatasetNames().empty() && dataset_is(s, d_old); }},
      {"labels", [&](ModelStore& s) { s.SaveCheckpoint(v1c), s.SaveSettings("m", labels_old); },
       [&](ModelStore& s) { s.SaveSettings("m", labels_new); },
       [&](ModelStore& s) {
         const v1::ModelSettings now = s.LoadSettings("m");
         if (SameMessage(now, labels_old)) return true;
         EXPECT_TRUE(SameMessage(now, labels_new)) << "neither the old nor the new labels";
         return false;
       }},
      {"first labels", [&](ModelStore& s) { s.SaveCheckpoint(v1c); },
       [&](ModelStore& s) { s.SaveSettings("m", labels_new); },
       [&](ModelStore& s) {
         const v1::ModelSettings now = s.LoadSettings("m");
         if (SameMessage(now, v1::ModelSettings())) return true;
         EXPECT_TRUE(SameMessage(now, labels_new)) << "neither no labels nor the new ones";
         return false;
       }},
      {"history append", [&](ModelStore& s) { s.AppendHistory("m", epoch1); },
       [&](ModelStore& s) { s.AppendHistory("m", epoch2); },
       [&](ModelStore& s) {
         const auto h = s.LoadHistory("m");
         EXPECT_TRUE(!h.empty() && SameMessage(h[0], epoch1)) << "the old record was lost";
         if (h.size() == 1) return true;
         EXPECT_EQ(h.size(), 2u);
         EXPECT_TRUE(SameMessage(h.back(), epoch2));
         return false;
       }},
      {"version delete", [&](ModelStore& s) { s.SaveCheckpoint(v1c), s.SaveCheckpoint(v2c); },
       [](ModelStore& s) { s.DeleteVersion("m", 1); },
       [&](ModelStore& s) {
         EXPECT_TRUE(has_version(s, v2c));
         return has_version(s, v1c);
       }},
  };
  int crash_points = 0;
  for (const auto& sc : scenarios) {
    SCOPED_TRACE(sc.name);
    bool finished = false;
    for (int k = 1; !finished && k < 50; ++k) {
      SCOPED_TRACE("crash at step " + std::to_string(k));
      TempDir dir;
      {
        ModelStore store(dir.path(), true);
        sc.before(store);
      }
      finished = !RunAndCrashAt(dir.path(), k, sc.op);
      crash_points += !finished;
      ModelStore store(dir.path(), true);
      store.CleanTemporaries();
      const bool old_state = sc.is_old(store);
      // Once the op finished, its new state must be there.
      if (finished) {
        EXPECT_FALSE(old_state);
      }
      for (const auto& e : fs::recursive_directory_iterator(dir.path())) {
        const std::string f = e.path().filename().string();
        EXPECT_NE(f[0], '.') << "leftover " << e.path();
      }
    }
    EXPECT_TRUE(finished);
  }
  EXPECT_GE(crash_points, 20);
}

// The directory is the truth: a checkpoint copied into another model's folder is refused as
// corrupt, and a registry serves that model from its own older version or not at all.
TEST(ModelStoreTest, CheckpointCopiedIntoAnotherModelsFolderIsRefused) {
  TempDir dir;
  {
    ModelStore store(dir.path(), true);
    store.SaveCheckpoint(MakeCheckpoint("a", 1));
    store.SaveCheckpoint(MakeCheckpoint("b", 1));
  }
  fs::copy(dir.path() / "models" / "a" / "1", dir.path() / "models" / "b" / "2");
  ModelStore store(dir.path(), true);
  EXPECT_EQ(CodeOf([&] { store.LoadCheckpoint("b", 2); }), grpc::StatusCode::DATA_LOSS);
  try {
    store.LoadCheckpoint("b", 2);
  } catch (const ServiceError& e) {
    EXPECT_NE(std::string(e.what()).find("holds model 'a' version 1"), std::string::npos)
        << e.what();
  }
  Registry registry(&store, SpecLimits{});
  registry.LoadAll();
  const SnapshotPtr b = registry.Get("b");
  EXPECT_EQ(b->model, "b");
  EXPECT_EQ(b->version, 1);
  // A data set copied under another name likewise.
  store.SaveDataset(MakeDataset("d"));
  fs::copy(dir.path() / "datasets" / "d", dir.path() / "datasets" / "e");
  EXPECT_EQ(CodeOf([&] { store.LoadDataset("e"); }), grpc::StatusCode::DATA_LOSS);
}

// One writer per store: a second one is refused naming the holder; replicas take no lock.
TEST(ModelStoreTest, SecondWriterIsRefusedNamingTheHolder) {
  TempDir dir;
  auto first = std::make_unique<ModelStore>(dir.path(), true);
  try {
    ModelStore second(dir.path(), true);
    ADD_FAILURE() << "a second writer was allowed";
  } catch (const ServiceError& e) {
    EXPECT_EQ(e.code(), grpc::StatusCode::FAILED_PRECONDITION);
    EXPECT_NE(std::string(e.what()).find("pid " + std::to_string(::getpid())), std::string::npos)
        << e.what();
  }
  ModelStore replica(dir.path(), false);
  EXPECT_TRUE(replica.ModelNames().empty());
  first.reset();
  ModelStore third(dir.path(), true);  // the lock went with the first writer
  EXPECT_TRUE(third.writable());
}

// No reader waits for the disk: while a data set's write is held at its fsync, Get and the
// listings answer at once.
TEST(RegistryTest, ReadersDoNotWaitForAStoreWrite) {
  TempDir dir;
  ModelStore store(dir.path(), true);
  Registry registry(&store, SpecLimits{});
  registry.Create("m", SmallSpec());
  std::promise<void> reached, release;
  std::shared_future<void> released = release.get_future().share();
  bool held = false;
  SetStoreStepHookForTesting([&](std::string_view step, const fs::path& path) {
    if (!held && step == "fsync file" && path.string().find("datasets") != std::string::npos) {
      held = true;
      reached.set_value();
      released.wait();
    }
  });
  engine::Dataset data;
  data.x = engine::Matrix::Zero(4, 4);
  data.y = engine::Matrix::Zero(4, 1);
  data.input_shape = engine::Shape{{4}};
  data.num_classes = 2;
  std::thread writer([&] { registry.PutDataset("d", std::move(data), "upload", false); });
  reached.get_future().wait();
  auto read = std::async(std::launch::async, [&] {
    registry.Get("m");
    registry.ModelNames();
    registry.ListDatasets();
  });
  const bool answered = read.wait_for(std::chrono::seconds(2)) == std::future_status::ready;
  release.set_value();
  writer.join();
  read.wait();
  SetStoreStepHookForTesting(nullptr);
  EXPECT_TRUE(answered) << "Get waited for a data set's fsync";
  EXPECT_EQ(registry.ListDatasets().size(), 1u);
}

}  // namespace
}  // namespace dropnet::service

namespace dropnet::service {
namespace {

// A record torn by a crash in the middle of an append is ignored, and the next append cuts it off
// so that the records after it are read.
TEST(ModelStoreTest, TornHistoryRecordIsDroppedAndOverwritten) {
  TempDir dir;
  ModelStore store(dir.path(), true);
  store.SaveCheckpoint(MakeCheckpoint("m", 1));
  v1::EpochRecord a, b;
  a.set_epoch(1);
  a.set_version(2);
  b.set_epoch(2);
  b.set_version(3);
  store.AppendHistory("m", a);
  const fs::path file = dir.path() / "models" / "m" / "history.log";
  const std::string whole = ReadBytes(file);
  store.AppendHistory("m", b);
  const std::string both = ReadBytes(file);
  WriteBytes(file, both.substr(0, whole.size() + (both.size() - whole.size()) / 2));
  auto h = store.LoadHistory("m");
  ASSERT_EQ(h.size(), 1u);
  EXPECT_TRUE(SameMessage(h[0], a));
  store.AppendHistory("m", b);
  h = store.LoadHistory("m");
  ASSERT_EQ(h.size(), 2u);
  EXPECT_TRUE(SameMessage(h[1], b));
  EXPECT_EQ(ReadBytes(file), both);
}

}  // namespace
}  // namespace dropnet::service

// The models and data sets a server holds, backed by the model store.
//
// Each model has a current snapshot (the newest published version), swapped atomically under a
// short lock; readers take a shared_ptr once. A model is trained by at most one Train at a time
// (a TrainingLease); publishing saves the version to the store before it becomes visible, so
// nothing served is ever missing from disk.
//
// Data sets live in the store. The registry keeps their descriptions; their rows are read from
// the store when a Train or Evaluate asks for them, shared by the calls that use them at the same
// time, and freed when the last one finishes, so that a server holding a large training set does
// not keep it resident between trainings.
#ifndef DROPNET_SERVICE_REGISTRY_H_
#define DROPNET_SERVICE_REGISTRY_H_

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "dropnet/v1/service.pb.h"
#include "server/engine/data.h"
#include "server/service/convert.h"
#include "server/service/snapshot.h"
#include "server/service/store.h"

namespace dropnet::service {

// Throws INVALID_ARGUMENT naming `field` unless name is 1-64 characters of [A-Za-z0-9._-]
// starting with a letter or digit.
void CheckName(const char* field, const std::string& name);

struct StoredDatasetEntry {
  std::shared_ptr<const engine::Dataset> data;
  v1::DatasetInfo info;
};

class Registry {
 public:
  Registry(ModelStore* store, SpecLimits limits);

  // Loads every model's newest loadable version and every data set. Returns a summary line.
  std::string LoadAll();
  // Re-reads the store for versions, models and data sets written by another server (read-only
  // replicas): a new version is loaded fully before it replaces the served one, and one that fails
  // to load leaves the old one. Returns the number of models and data sets that changed.
  int Refresh();

  // ---- Models ----
  SnapshotPtr Create(const std::string& name, const v1::ModelSpec& spec);
  // A model with given weights: `initial`'s spec, parameters, buffers and standardisation
  // (ImportModel), saved as version 1 with `note`.
  SnapshotPtr CreateFrom(const std::string& name, v1::Checkpoint initial, const std::string& note);
  SnapshotPtr Get(const std::string& name) const;  // NOT_FOUND when unknown
  // Version `version` of a model: 0 is the one Get serves; another is read from the store
  // (NOT_FOUND when the model has no such version).
  SnapshotPtr GetVersion(const std::string& name, int64_t version) const;
  std::vector<std::string> ModelNames() const;
  void Delete(const std::string& name);
  void Describe(const Snapshot& s, v1::ModelInfo* info) const;

  // Exclusive right to train one model; released by the destructor.
  class TrainingLease {
   public:
    ~TrainingLease();
    const std::atomic<bool>& cancel() const { return *cancel_; }
    std::atomic<bool>& cancel() { return *cancel_; }
    // Saves `next` as a new version (numbered after the newest) and makes it current. `stamp`,
    // when given, sees the snapshot with its version number set, before it is saved.
    SnapshotPtr Publish(std::shared_ptr<Snapshot> next,
                        const std::function<void(Snapshot&)>& stamp = {});

   private:
    friend class Registry;
    TrainingLease(Registry* r, std::string name, std::shared_ptr<std::atomic<bool>> cancel)
        : registry_(r), name_(std::move(name)), cancel_(std::move(cancel)) {}
    Registry* registry_;
    std::string name_;
    std::shared_ptr<std::atomic<bool>> cancel_;
  };
  // FAILED_PRECONDITION when the model is training; RESOURCE_EXHAUSTED past max_concurrent.
  std::unique_ptr<TrainingLease> BeginTraining(const std::string& name, int max_concurrent);
  // Asks every training to stop (shutdown).
  void CancelAllTraining();
  int ActiveTrainings() const;

  // ---- Data sets ----
  v1::DatasetInfo PutDataset(const std::string& name, engine::Dataset data,
                             const std::string& source, bool overwrite);
  // The data set's rows, read from the store unless a running call already holds them.
  StoredDatasetEntry GetDataset(const std::string& name) const;
  std::vector<v1::DatasetInfo> ListDatasets() const;
  void DeleteDataset(const std::string& name);

  ModelStore* store() const { return store_; }

 private:
  struct Entry {
    SnapshotPtr current;
    std::vector<int64_t> versions;
    bool training = false;
    std::shared_ptr<std::atomic<bool>> cancel;
  };
  // Saves `snap` as the first version of a new model `name`.
  SnapshotPtr Insert(const std::string& name, std::shared_ptr<Snapshot> snap);
  SnapshotPtr PublishVersion(const std::string& name, std::shared_ptr<Snapshot> next,
                             const std::function<void(Snapshot&)>& stamp);
  // Reads a data set from the store to describe it.
  v1::DatasetInfo DescribeStoredDataset(const std::string& name) const;

  ModelStore* store_;
  SpecLimits limits_;
  // Create, Delete, PutDataset and DeleteDataset one at a time; they do their disk work holding
  // write_mu_ only, so that mu_ (taken by every Predict) is never held across a write or fsync.
  std::mutex write_mu_;
  mutable std::mutex mu_;
  std::map<std::string, Entry> models_;
  // A data set: its description, and its rows while `users` calls hold them. `load_mu` guards
  // the rows and makes concurrent first readers wait for one read instead of each reading the
  // store.
  struct DatasetSlot {
    v1::DatasetInfo info;
    std::mutex load_mu;
    std::shared_ptr<const engine::Dataset> rows;
    int users = 0;
  };
  std::map<std::string, std::shared_ptr<DatasetSlot>> datasets_;
};

v1::DatasetInfo DescribeDataset(const engine::Dataset& d, const std::string& name,
                                const std::string& source, int64_t created_unix_ms);

}  // namespace dropnet::service

#endif  // DROPNET_SERVICE_REGISTRY_H_

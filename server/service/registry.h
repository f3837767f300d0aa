// The models and data sets a server holds, backed by the model store.
//
// Each model has its newest snapshot (the newest published version), swapped atomically under a
// short lock; readers take a shared_ptr once. A model is trained by at most one Train at a time
// (a TrainingLease); publishing saves the version to the store before it becomes visible, so
// nothing served is ever missing from disk.
//
// Versions: Resolve turns "a number, a label or nothing" into a snapshot. Older retained
// versions are read from the store on demand and a bounded number of them stay loaded (least
// recently used first out). Labels, the serving label and the retention setting are saved in the
// store (ModelSettings) before they change what is served. After each successful save the model
// keeps its newest keep_versions versions, every labelled version and the one with the best
// validation metric, and deletes the rest. The epoch history is kept once per model (the store's
// history file), not in every version.
//
// Data sets live in the store. The registry keeps their descriptions; their rows are read from
// the store when a Train or Evaluate asks for them, shared by the calls that use them at the same
// time, and freed when the last one finishes, so that a server holding a large training set does
// not keep it resident between trainings.
#ifndef DROPNET_SERVICE_REGISTRY_H_
#define DROPNET_SERVICE_REGISTRY_H_

#include <atomic>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
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
// CheckName, and the name must start with a letter (a label never reads as a version number).
void CheckLabel(const char* field, const std::string& label);

// Per-model settings given at creation (CreateModelRequest).
struct ModelOptions {
  std::string serving_label;  // "": the newest version is served by default
  int32_t keep_versions = 0;  // 0: the registry's default
};

struct StoredDatasetEntry {
  std::shared_ptr<const engine::Dataset> data;
  v1::DatasetInfo info;
};

class Registry {
 public:
  // `keep_versions`: newest versions a model keeps unless it sets its own; `cache_versions`:
  // older versions kept loaded for calls that name them.
  Registry(ModelStore* store, SpecLimits limits, int keep_versions = 5, int cache_versions = 8);

  // Loads every model's newest loadable version and every data set. Returns a summary line.
  std::string LoadAll();
  // Re-reads the store for versions, models and data sets written by another server (read-only
  // replicas): a new version is loaded fully before it replaces the served one, and one that fails
  // to load leaves the old one. Returns the number of models and data sets that changed.
  int Refresh();

  // ---- Models ----
  SnapshotPtr Create(const std::string& name, const v1::ModelSpec& spec,
                     const ModelOptions& options = {});
  // A model with given weights: `initial`'s spec, parameters, buffers and standardisation
  // (ImportModel), saved as version 1 with `note`.
  SnapshotPtr CreateFrom(const std::string& name, v1::Checkpoint initial, const std::string& note);
  // The snapshot a call asking for `version` gets: "" the model's default (its serving label's
  // version, or the newest), a number ("12") that version, anything else a label. NOT_FOUND for
  // an unknown model, version or label, DATA_LOSS for a corrupt version, INVALID_ARGUMENT for a
  // malformed one. The one resolver of every protocol.
  SnapshotPtr Resolve(const std::string& name, const std::string& version) const;
  SnapshotPtr Get(const std::string& name) const { return Resolve(name, ""); }
  // Resolve with a version number: 0 is the model's default.
  SnapshotPtr GetVersion(const std::string& name, int64_t version) const;
  // The newest version (training continues from it).
  SnapshotPtr Newest(const std::string& name) const;
  std::vector<std::string> ModelNames() const;
  void Delete(const std::string& name);
  // Describes the model `s` belongs to; `s` is the version shown as its spec and parameters.
  void Describe(const Snapshot& s, v1::ModelInfo* info) const;
  // The model's epochs so far, oldest first.
  std::vector<v1::EpochRecord> History(const std::string& name) const;

  // Labels. SetLabel: NOT_FOUND unless `version` is stored and loadable. RemoveLabel: NOT_FOUND
  // for an unknown label, FAILED_PRECONDITION for the serving label.
  void SetLabel(const std::string& name, const std::string& label, int64_t version);
  void RemoveLabel(const std::string& name, const std::string& label);
  // Changes the serving label (which must name a version; "" clears it) and/or the retention.
  void UpdateSettings(const std::string& name, const std::optional<std::string>& serving_label,
                      const std::optional<int32_t>& keep_versions);

  // Exclusive right to train one model; released by the destructor.
  class TrainingLease {
   public:
    ~TrainingLease();
    const std::atomic<bool>& cancel() const { return *cancel_; }
    std::atomic<bool>& cancel() { return *cancel_; }
    // Saves `next` as a new version (numbered after the newest) and makes it the newest. `epoch`,
    // when given, is the epoch that produced it: its version is set and it is appended to the
    // model's history. Then applies the model's retention.
    SnapshotPtr Publish(std::shared_ptr<Snapshot> next, v1::EpochRecord* epoch = nullptr);

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
  // PutDataset for rows given in pieces (ModelStore::SaveDatasetStreamed): `meta` holds the name,
  // task, shapes, class count and source, and the values come from the producers.
  v1::DatasetInfo PutDatasetStreamed(v1::StoredDataset meta, const ModelStore::Producer& x_values,
                                     const ModelStore::Producer& y_values, bool overwrite);
  // The data set's rows, read from the store unless a running call already holds them.
  StoredDatasetEntry GetDataset(const std::string& name) const;
  std::vector<v1::DatasetInfo> ListDatasets() const;
  void DeleteDataset(const std::string& name);

  ModelStore* store() const { return store_; }

 private:
  // What is known of one stored version without keeping it loaded.
  struct VersionMeta {
    int64_t created_unix_ms = 0;
    std::string note;
    int64_t size_bytes = 0;
    std::string error;  // non-empty: corrupt, never served
  };
  struct Entry {
    SnapshotPtr newest;
    // The serving label's version when it is not the newest, kept loaded whatever the cache does.
    mutable SnapshotPtr served;
    std::vector<int64_t> versions;
    std::map<int64_t, VersionMeta> meta;
    v1::ModelSettings settings;
    std::vector<v1::EpochRecord> history;
    bool training = false;
    std::shared_ptr<std::atomic<bool>> cancel;
  };
  // Saves `snap` as the first version of a new model `name`.
  SnapshotPtr Insert(const std::string& name, std::shared_ptr<Snapshot> snap,
                     const ModelOptions& options);
  SnapshotPtr PublishVersion(const std::string& name, std::shared_ptr<Snapshot> next,
                             v1::EpochRecord* epoch);
  // Reads a model's versions, settings and history from the store into an entry; false when no
  // version loads.
  bool LoadModel(const std::string& name, Entry* entry) const;
  // Deletes the versions retention no longer keeps (holding write_mu_).
  void ApplyRetention(const std::string& name);
  // The version number `version` names in `e` (mu_ held).
  int64_t VersionNumber(const std::string& name, const Entry& e, const std::string& version) const;
  const Entry& Find(const std::string& name) const;  // mu_ held; NOT_FOUND
  Entry& Find(const std::string& name);
  // The version of `e` with the best validation metric, or 0 (mu_ held).
  static int64_t BestVersion(const Entry& e);
  // Saves `settings` for `name` and installs them (holding write_mu_).
  void StoreSettings(const std::string& name, const v1::ModelSettings& settings);
  // Reads a data set from the store to describe it.
  v1::DatasetInfo DescribeStoredDataset(const std::string& name) const;

  ModelStore* store_;
  SpecLimits limits_;
  int keep_versions_;
  size_t cache_versions_;
  // Older versions loaded for calls that named them, most recently used first (mu_).
  mutable std::list<SnapshotPtr> cache_;
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

#include "server/service/registry.h"

#include <algorithm>
#include <chrono>
#include <sstream>

#include <spdlog/spdlog.h>

#include "server/service/memory.h"
#include "server/service/status.h"

namespace dropnet::service {

namespace {

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::shared_ptr<spdlog::logger> StoreLog() {
  auto l = spdlog::get("store");
  return l ? l : spdlog::default_logger();
}

}  // namespace

void CheckName(const char* field, const std::string& name) {
  auto bad = [&](const std::string& why) {
    Fail(grpc::StatusCode::INVALID_ARGUMENT,
         std::string(field) + " '" + Printable(name) + "' " + why);
  };
  if (name.empty()) Fail(grpc::StatusCode::INVALID_ARGUMENT, std::string(field) + " is required");
  if (name.size() > 64) bad("is longer than 64 characters");
  if (!std::isalnum(static_cast<unsigned char>(name[0]))) bad("must start with a letter or digit");
  for (char c : name) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' && c != '-') {
      bad("may only contain letters, digits, '.', '_' and '-'");
    }
  }
}

v1::DatasetInfo DescribeDataset(const engine::Dataset& d, const std::string& name,
                                const std::string& source, int64_t created_unix_ms) {
  v1::DatasetInfo info;
  info.set_name(name);
  info.set_task(ToProto(d.task));
  info.set_rows(d.rows());
  for (int v : d.input_shape.dims) info.add_input_shape(v);
  info.set_targets(static_cast<int32_t>(d.y.cols()));
  info.set_num_classes(d.num_classes);
  for (const auto& f : d.feature_names) info.add_feature_names(f);
  for (const auto& c : d.class_names) info.add_class_names(c);
  info.set_source(source);
  info.set_created_unix_ms(created_unix_ms);
  return info;
}

Registry::Registry(ModelStore* store, SpecLimits limits) : store_(store), limits_(limits) {}

std::string Registry::LoadAll() {
  int removed = store_->CleanTemporaries();
  int models = 0, datasets = 0;
  for (const auto& name : store_->ModelNames()) {
    auto versions = store_->Versions(name);
    // Newest loadable version; a corrupt one is reported and skipped.
    for (auto it = versions.rbegin(); it != versions.rend(); ++it) {
      try {
        auto snap = FromCheckpoint(store_->LoadCheckpoint(name, *it), limits_);
        std::lock_guard lock(mu_);
        models_[name] = Entry{std::move(snap), versions, false, nullptr};
        ++models;
        break;
      } catch (const std::exception& e) {
        StoreLog()->error("model {} version {} cannot be loaded: {}", name, *it, e.what());
      }
    }
  }
  for (const auto& name : store_->DatasetNames()) {
    try {
      auto slot = std::make_shared<DatasetSlot>();
      slot->info = DescribeStoredDataset(name);
      std::lock_guard lock(mu_);
      datasets_[name] = std::move(slot);
      ++datasets;
    } catch (const std::exception& e) {
      StoreLog()->error("data set {} cannot be loaded: {}", name, e.what());
    }
  }
  ReleaseFreeMemory();
  std::ostringstream s;
  s << models << " models, " << datasets << " data sets";
  if (removed) s << ", removed " << removed << " unfinished writes";
  return s.str();
}

int Registry::Refresh() {
  int changed = 0;
  auto names = store_->ModelNames();
  for (const auto& name : names) {
    auto versions = store_->Versions(name);
    if (versions.empty()) continue;
    {
      std::lock_guard lock(mu_);
      auto it = models_.find(name);
      // Up to date, unless the version served is gone (the model was deleted and created anew).
      if (it != models_.end() && it->second.current->version >= versions.back() &&
          std::binary_search(versions.begin(), versions.end(), it->second.current->version)) {
        continue;
      }
    }
    // Load the new version fully before switching; on failure keep serving the old one.
    try {
      auto snap = FromCheckpoint(store_->LoadCheckpoint(name, versions.back()), limits_);
      std::lock_guard lock(mu_);
      auto& e = models_[name];
      e.current = std::move(snap);
      e.versions = versions;
      ++changed;
    } catch (const std::exception& e) {
      StoreLog()->warn("model {} version {} not loaded, still serving the previous one: {}", name,
                       versions.back(), e.what());
    }
  }
  // Data sets, for Evaluate on a replica: describe the ones that appeared in the store, drop the
  // ones that went (the rows are read when used; the description of one replaced under the same
  // name is renewed by a restart).
  const auto dataset_names = store_->DatasetNames();
  for (const auto& name : dataset_names) {
    {
      std::lock_guard lock(mu_);
      if (datasets_.count(name)) continue;
    }
    try {
      auto slot = std::make_shared<DatasetSlot>();
      slot->info = DescribeStoredDataset(name);
      std::lock_guard lock(mu_);
      datasets_.emplace(name, std::move(slot));
      ++changed;
    } catch (const std::exception& e) {
      StoreLog()->warn("data set {} not loaded: {}", name, e.what());
    }
  }
  std::lock_guard lock(mu_);
  for (auto it = models_.begin(); it != models_.end();) {
    if (!it->second.training && std::find(names.begin(), names.end(), it->first) == names.end()) {
      it = models_.erase(it);
      ++changed;
    } else {
      ++it;
    }
  }
  for (auto it = datasets_.begin(); it != datasets_.end();) {
    if (std::find(dataset_names.begin(), dataset_names.end(), it->first) == dataset_names.end()) {
      it = datasets_.erase(it);
      ++changed;
    } else {
      ++it;
    }
  }
  return changed;
}

SnapshotPtr Registry::Create(const std::string& name, const v1::ModelSpec& spec) {
  CheckName("name", name);
  std::lock_guard write(write_mu_);
  {
    std::lock_guard lock(mu_);
    if (models_.count(name)) Fail(grpc::StatusCode::ALREADY_EXISTS, "model '" + name + "' exists");
  }
  std::shared_ptr<Snapshot> snap = NewSnapshot(name, spec, limits_);
  if (!store_->Versions(name).empty()) {
    Fail(grpc::StatusCode::ALREADY_EXISTS, "model '" + name + "' exists in the store");
  }
  v1::Checkpoint c;
  ToCheckpoint(*snap, &c);
  store_->SaveCheckpoint(c);  // outside mu_: no reader waits for the disk
  std::lock_guard lock(mu_);
  models_[name] = Entry{snap, {snap->version}, false, nullptr};
  return snap;
}

SnapshotPtr Registry::Get(const std::string& name) const {
  std::lock_guard lock(mu_);
  auto it = models_.find(name);
  if (it == models_.end()) Fail(grpc::StatusCode::NOT_FOUND, "no model named '" + name + "'");
  return it->second.current;
}

std::vector<std::string> Registry::ModelNames() const {
  std::lock_guard lock(mu_);
  std::vector<std::string> out;
  for (const auto& [name, e] : models_) out.push_back(name);
  return out;
}

void Registry::Delete(const std::string& name) {
  std::lock_guard write(write_mu_);
  Entry removed;
  {
    std::lock_guard lock(mu_);
    auto it = models_.find(name);
    if (it == models_.end()) Fail(grpc::StatusCode::NOT_FOUND, "no model named '" + name + "'");
    if (it->second.training) {
      Fail(grpc::StatusCode::FAILED_PRECONDITION,
           "model '" + name + "' is training; cancel the Train call first");
    }
    removed = std::move(it->second);
    models_.erase(it);
  }
  // Gone for callers from here; the disk work runs outside mu_, and a failure brings it back.
  try {
    store_->DeleteModel(name);
  } catch (...) {
    std::lock_guard lock(mu_);
    models_[name] = std::move(removed);
    throw;
  }
}

void Registry::Describe(const Snapshot& s, v1::ModelInfo* info) const {
  info->set_name(s.model);
  *info->mutable_spec() = s.spec;
  info->set_parameter_count(s.net.ParameterCount());
  info->set_version(s.version);
  info->set_output_size(s.net.output_shape().Size());
  info->set_steps(s.steps);
  for (const auto& h : s.history) *info->add_history() = h;
  // Learned-rate layers (concrete dropout, sparse VD): the layer's mean learned drop rate.
  for (int i = 0; i < s.net.size(); ++i) {
    const std::vector<double> rates = s.net.layer(i).LearnedRates();
    if (rates.empty()) continue;
    double sum = 0;
    for (double r : rates) sum += r;
    (*info->mutable_learned_rates())[i] = sum / static_cast<double>(rates.size());
    auto* range = info->add_learned_rate_ranges();
    range->set_layer(i);
    range->set_count(static_cast<int64_t>(rates.size()));
    range->set_min(*std::min_element(rates.begin(), rates.end()));
    range->set_mean(sum / static_cast<double>(rates.size()));
    range->set_max(*std::max_element(rates.begin(), rates.end()));
  }
  // Pruning layers (sparse VD): the fraction of weights that prediction drops.
  for (int i = 0; i < s.net.size(); ++i) {
    const double pruned = s.net.layer(i).Sparsity();
    if (pruned >= 0) (*info->mutable_pruned_fraction())[i] = pruned;
  }
  for (const auto& c : s.class_names) info->add_class_names(c);
  info->set_input_scale(s.input_scale);
  ToStandardization(s.standardizer, info->mutable_input_standardization());
  ToStandardization(s.target_standardizer, info->mutable_target_standardization());
  std::lock_guard lock(mu_);
  auto it = models_.find(s.model);
  if (it != models_.end()) {
    for (int64_t v : it->second.versions) info->add_versions(v);
    info->set_training(it->second.training);
    // The creation time of the model is that of its first version.
    info->set_created_unix_ms(s.created_unix_ms);
  }
}

std::unique_ptr<Registry::TrainingLease> Registry::BeginTraining(const std::string& name,
                                                                 int max_concurrent) {
  std::lock_guard lock(mu_);
  auto it = models_.find(name);
  if (it == models_.end()) Fail(grpc::StatusCode::NOT_FOUND, "no model named '" + name + "'");
  if (it->second.training) {
    Fail(grpc::StatusCode::FAILED_PRECONDITION, "model '" + name + "' is already training");
  }
  int active = 0;
  for (const auto& [n, e] : models_) active += e.training;
  if (active >= max_concurrent) {
    Fail(grpc::StatusCode::RESOURCE_EXHAUSTED, "the server already runs " + std::to_string(active) +
                                                   " trainings (limit " +
                                                   std::to_string(max_concurrent) + ")");
  }
  it->second.training = true;
  it->second.cancel = std::make_shared<std::atomic<bool>>(false);
  return std::unique_ptr<TrainingLease>(new TrainingLease(this, name, it->second.cancel));
}

Registry::TrainingLease::~TrainingLease() {
  std::lock_guard lock(registry_->mu_);
  auto it = registry_->models_.find(name_);
  if (it != registry_->models_.end()) {
    it->second.training = false;
    it->second.cancel.reset();
  }
}

SnapshotPtr Registry::TrainingLease::Publish(std::shared_ptr<Snapshot> next,
                                             const std::function<void(Snapshot&)>& stamp) {
  return registry_->PublishVersion(name_, std::move(next), stamp);
}

SnapshotPtr Registry::PublishVersion(const std::string& name, std::shared_ptr<Snapshot> next,
                                     const std::function<void(Snapshot&)>& stamp) {
  // Only the lease holder publishes a model, so the version number cannot race; the store write
  // happens outside the lock so that readers never wait for the disk.
  int64_t newest = 0;
  {
    std::lock_guard lock(mu_);
    auto it = models_.find(name);
    if (it == models_.end()) Fail(grpc::StatusCode::NOT_FOUND, "model '" + name + "' was deleted");
    if (!it->second.versions.empty()) newest = it->second.versions.back();
  }
  for (int64_t v : store_->Versions(name)) newest = std::max(newest, v);
  next->version = newest + 1;
  next->created_unix_ms = NowMs();
  if (stamp) stamp(*next);
  v1::Checkpoint c;
  ToCheckpoint(*next, &c);
  store_->SaveCheckpoint(c);  // on failure the old version stays current
  std::lock_guard lock(mu_);
  auto it = models_.find(name);
  if (it == models_.end()) Fail(grpc::StatusCode::NOT_FOUND, "model '" + name + "' was deleted");
  it->second.versions.push_back(next->version);
  it->second.current = std::move(next);
  return it->second.current;
}

void Registry::CancelAllTraining() {
  std::lock_guard lock(mu_);
  for (auto& [name, e] : models_)
    if (e.cancel) e.cancel->store(true);
}

int Registry::ActiveTrainings() const {
  std::lock_guard lock(mu_);
  int n = 0;
  for (const auto& [name, e] : models_) n += e.training;
  return n;
}

v1::DatasetInfo Registry::PutDataset(const std::string& name, engine::Dataset data,
                                     const std::string& source, bool overwrite) {
  CheckName("name", name);
  {
    std::lock_guard lock(mu_);
    if (!overwrite && datasets_.count(name)) {
      Fail(grpc::StatusCode::ALREADY_EXISTS,
           "data set '" + name + "' exists; set overwrite to replace it");
    }
  }
  v1::StoredDataset stored;
  ToStored(data, name, &stored);
  stored.set_source(source);
  stored.set_created_unix_ms(NowMs());
  auto slot = std::make_shared<DatasetSlot>();
  slot->info = DescribeDataset(data, name, source, stored.created_unix_ms());
  data = engine::Dataset();  // the stored copy is enough from here on
  std::lock_guard write(write_mu_);
  {
    std::lock_guard lock(mu_);
    if (!overwrite && datasets_.count(name)) {
      Fail(grpc::StatusCode::ALREADY_EXISTS,
           "data set '" + name + "' exists; set overwrite to replace it");
    }
  }
  store_->SaveDataset(stored);  // outside mu_: no reader waits for the disk
  std::lock_guard lock(mu_);
  datasets_[name] = slot;
  return slot->info;
}

v1::DatasetInfo Registry::DescribeStoredDataset(const std::string& name) const {
  const auto stored = store_->LoadDataset(name);
  return DescribeDataset(FromStored(stored), name, stored.source(), stored.created_unix_ms());
}

StoredDatasetEntry Registry::GetDataset(const std::string& name) const {
  std::shared_ptr<DatasetSlot> slot;
  {
    std::lock_guard lock(mu_);
    auto it = datasets_.find(name);
    if (it == datasets_.end())
      Fail(grpc::StatusCode::NOT_FOUND, "no data set named '" + name + "'");
    slot = it->second;
  }
  std::lock_guard load(slot->load_mu);
  if (!slot->rows) {
    try {
      slot->rows = std::make_shared<const engine::Dataset>(FromStored(store_->LoadDataset(name)));
    } catch (const ServiceError&) {
      throw;
    } catch (const std::exception& e) {
      Fail(grpc::StatusCode::DATA_LOSS, "data set '" + name + "' cannot be read: " + e.what());
    }
  }
  ++slot->users;
  // A handle on the slot's rows; the last one to go frees them.
  std::shared_ptr<const engine::Dataset> handle(slot->rows.get(), [slot](const engine::Dataset*) {
    std::shared_ptr<const engine::Dataset> last;
    {
      std::lock_guard lock(slot->load_mu);
      if (--slot->users == 0) last = std::move(slot->rows);
    }
    // `last` frees the rows here, outside the lock.
  });
  return StoredDatasetEntry{std::move(handle), slot->info};
}

std::vector<v1::DatasetInfo> Registry::ListDatasets() const {
  std::lock_guard lock(mu_);
  std::vector<v1::DatasetInfo> out;
  for (const auto& [name, slot] : datasets_) out.push_back(slot->info);
  return out;
}

void Registry::DeleteDataset(const std::string& name) {
  std::lock_guard write(write_mu_);
  std::shared_ptr<DatasetSlot> removed;
  {
    std::lock_guard lock(mu_);
    auto it = datasets_.find(name);
    if (it == datasets_.end()) {
      Fail(grpc::StatusCode::NOT_FOUND, "no data set named '" + name + "'");
    }
    removed = std::move(it->second);
    datasets_.erase(it);
  }
  try {
    store_->DeleteDataset(name);
  } catch (...) {
    std::lock_guard lock(mu_);
    datasets_[name] = std::move(removed);
    throw;
  }
}

}  // namespace dropnet::service

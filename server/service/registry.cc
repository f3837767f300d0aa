#include "server/service/registry.h"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <sstream>

#include <spdlog/spdlog.h>

#include "server/service/memory.h"
#include "server/service/status.h"

namespace dropnet::service {

namespace {

constexpr size_t kMaxDescriptionBytes = 4096;

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

void CheckLabel(const char* field, const std::string& label) {
  CheckName(field, label);
  if (!std::isalpha(static_cast<unsigned char>(label[0]))) {
    Fail(grpc::StatusCode::INVALID_ARGUMENT,
         std::string(field) + " '" + Printable(label) + "' must start with a letter");
  }
}

Registry::Registry(ModelStore* store, SpecLimits limits, int keep_versions, int cache_versions)
    : store_(store),
      limits_(limits),
      keep_versions_(std::max(1, keep_versions)),
      cache_versions_(static_cast<size_t>(std::max(0, cache_versions))) {}

bool Registry::LoadModel(const std::string& name, Entry* entry) const {
  entry->versions = store_->Versions(name);
  entry->settings = store_->LoadSettings(name);
  std::vector<v1::EpochRecord> embedded;
  // Every version is checked (a corrupt one is reported by GetModel); the newest that loads is
  // kept loaded.
  for (auto it = entry->versions.rbegin(); it != entry->versions.rend(); ++it) {
    VersionMeta& meta = entry->meta[*it];
    meta.size_bytes = store_->VersionSize(name, *it);
    try {
      v1::Checkpoint c = store_->LoadCheckpoint(name, *it);
      meta.created_unix_ms = c.created_unix_ms();
      meta.note = c.note();
      // Checkpoints written before the history file embed the history so far: the newest such
      // one holds all of it.
      if (embedded.empty()) embedded.assign(c.history().begin(), c.history().end());
      if (entry->newest) continue;
      auto snap = FromCheckpoint(c, limits_);
      snap->history.clear();
      entry->newest = std::move(snap);
    } catch (const std::exception& e) {
      meta.error = e.what();
      StoreLog()->error("model {} version {} cannot be loaded: {}", name, *it, e.what());
    }
  }
  if (!entry->newest) return false;
  // The history: the embedded one, then the history file's records (a later record of the same
  // epoch, written after a crash lost its version, replaces the earlier).
  std::map<int32_t, v1::EpochRecord> by_epoch;
  for (auto& r : store_->LoadHistory(name)) {
    const int32_t epoch = r.epoch();
    by_epoch[epoch] = std::move(r);
  }
  for (auto& r : embedded) {
    const int32_t epoch = r.epoch();
    if (by_epoch.count(epoch)) continue;
    // Moved into the history file once (a writable store), so that retention may delete the
    // checkpoints that held it.
    if (store_->writable()) store_->AppendHistory(name, r);
    by_epoch[epoch] = std::move(r);
  }
  entry->history.clear();
  for (auto& [epoch, r] : by_epoch) entry->history.push_back(std::move(r));
  return true;
}

std::string Registry::LoadAll() {
  int removed = store_->CleanTemporaries();
  int models = 0, datasets = 0;
  for (const auto& name : store_->ModelNames()) {
    Entry entry;
    try {
      if (!LoadModel(name, &entry)) continue;
    } catch (const std::exception& e) {
      StoreLog()->error("model {} cannot be loaded: {}", name, e.what());
      continue;
    }
    std::lock_guard lock(mu_);
    models_[name] = std::move(entry);
    ++models;
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
    v1::ModelSettings settings;
    try {
      settings = store_->LoadSettings(name);
    } catch (const std::exception& e) {
      StoreLog()->warn("model {} labels not read: {}", name, e.what());
      continue;
    }
    {
      std::lock_guard lock(mu_);
      auto it = models_.find(name);
      // Up to date, unless the newest is gone (the model was deleted and created anew), the
      // versions or the labels changed.
      if (it != models_.end() && it->second.versions == versions &&
          it->second.settings.SerializeAsString() == settings.SerializeAsString()) {
        continue;
      }
    }
    // Load the model fully before switching; on failure keep serving the old one.
    Entry entry;
    try {
      if (!LoadModel(name, &entry)) continue;
    } catch (const std::exception& e) {
      StoreLog()->warn("model {} not reloaded, still serving the previous state: {}", name,
                       e.what());
      continue;
    }
    if (const auto& m = entry.meta[entry.versions.back()]; !m.error.empty()) {
      StoreLog()->warn(
          "model {} version {} not loaded, still serving the previous one (version {}): {}", name,
          entry.versions.back(), entry.newest->version, m.error);
    }
    std::lock_guard lock(mu_);
    auto& e = models_[name];
    entry.training = e.training;
    entry.cancel = e.cancel;
    e = std::move(entry);
    cache_.remove_if([&](const SnapshotPtr& c) { return c->model == name; });
    ++changed;
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

SnapshotPtr Registry::Create(const std::string& name, const v1::ModelSpec& spec,
                             const ModelOptions& options) {
  CheckName("name", name);
  if (spec.description().size() > kMaxDescriptionBytes) {
    Fail(grpc::StatusCode::INVALID_ARGUMENT,
         "spec.description has " + std::to_string(spec.description().size()) +
             " bytes, the limit is " + std::to_string(kMaxDescriptionBytes));
  }
  if (!options.serving_label.empty()) CheckLabel("serving_label", options.serving_label);
  if (options.keep_versions < 0) {
    Fail(grpc::StatusCode::INVALID_ARGUMENT,
         "keep_versions must be >= 0, got " + std::to_string(options.keep_versions));
  }
  return Insert(name, NewSnapshot(name, spec, limits_), options);
}

SnapshotPtr Registry::CreateFrom(const std::string& name, v1::Checkpoint initial,
                                 const std::string& note) {
  CheckName("name", name);
  initial.set_model(name);
  initial.set_version(1);
  std::shared_ptr<Snapshot> snap = FromCheckpoint(initial, limits_);
  snap->note = note;
  return Insert(name, std::move(snap), ModelOptions{});
}

SnapshotPtr Registry::GetVersion(const std::string& name, int64_t version) const {
  return Resolve(name, version == 0 ? "" : std::to_string(version));
}

SnapshotPtr Registry::Insert(const std::string& name, std::shared_ptr<Snapshot> snap,
                             const ModelOptions& options) {
  std::lock_guard write(write_mu_);
  {
    std::lock_guard lock(mu_);
    if (models_.count(name)) Fail(grpc::StatusCode::ALREADY_EXISTS, "model '" + name + "' exists");
  }
  if (!store_->Versions(name).empty()) {
    Fail(grpc::StatusCode::ALREADY_EXISTS, "model '" + name + "' exists in the store");
  }
  Entry entry;
  entry.settings.set_serving_label(options.serving_label);
  entry.settings.set_keep_versions(options.keep_versions);
  if (!options.serving_label.empty()) {
    (*entry.settings.mutable_labels())[options.serving_label] = snap->version;
  }
  // The settings first: a crash before the version leaves a directory without versions, which
  // is no model and is overwritten by the next Create.
  store_->SaveSettings(name, entry.settings);  // outside mu_: no reader waits for the disk
  v1::Checkpoint c;
  ToCheckpoint(*snap, &c);
  store_->SaveCheckpoint(c);
  entry.versions = {snap->version};
  entry.meta[snap->version] =
      VersionMeta{snap->created_unix_ms, snap->note, store_->VersionSize(name, snap->version), ""};
  entry.newest = snap;
  std::lock_guard lock(mu_);
  models_[name] = std::move(entry);
  return snap;
}

const Registry::Entry& Registry::Find(const std::string& name) const {
  auto it = models_.find(name);
  if (it == models_.end())
    Fail(grpc::StatusCode::NOT_FOUND, "no model named '" + Printable(name) + "'");
  return it->second;
}

Registry::Entry& Registry::Find(const std::string& name) {
  auto it = models_.find(name);
  if (it == models_.end())
    Fail(grpc::StatusCode::NOT_FOUND, "no model named '" + Printable(name) + "'");
  return it->second;
}

int64_t Registry::VersionNumber(const std::string& name, const Entry& e,
                                const std::string& version) const {
  if (version.empty()) {
    const std::string& label = e.settings.serving_label();
    if (label.empty()) return e.newest->version;
    auto it = e.settings.labels().find(label);
    if (it == e.settings.labels().end()) {
      Fail(grpc::StatusCode::FAILED_PRECONDITION,
           "model '" + name + "' serves label '" + label + "', which names no version");
    }
    return it->second;
  }
  if (std::all_of(version.begin(), version.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    errno = 0;
    const long long v = std::strtoll(version.c_str(), nullptr, 10);
    if (errno == ERANGE || v <= 0 || version.size() > 18) {
      Fail(grpc::StatusCode::INVALID_ARGUMENT,
           "version '" + version + "' is not a valid version number");
    }
    return v;
  }
  auto it = e.settings.labels().find(version);
  if (it == e.settings.labels().end()) {
    std::string known;
    for (const auto& [l, v] : e.settings.labels()) known += (known.empty() ? "" : ", ") + l;
    Fail(grpc::StatusCode::NOT_FOUND, "model '" + name + "' has no version label '" +
                                          Printable(version) +
                                          "' (labels: " + (known.empty() ? "none" : known) + ")");
  }
  return it->second;
}

SnapshotPtr Registry::Resolve(const std::string& name, const std::string& version) const {
  int64_t number = 0;
  {
    std::lock_guard lock(mu_);
    const Entry& e = Find(name);
    number = VersionNumber(name, e, version);
    if (number == e.newest->version) return e.newest;
    if (e.served && e.served->version == number) return e.served;
    if (!std::binary_search(e.versions.begin(), e.versions.end(), number)) {
      Fail(grpc::StatusCode::NOT_FOUND, "model '" + name + "' has no version " +
                                            std::to_string(number) + " (it keeps versions " +
                                            std::to_string(e.versions.front()) + " to " +
                                            std::to_string(e.versions.back()) + ", see GetModel)");
    }
    auto meta = e.meta.find(number);
    if (meta != e.meta.end() && !meta->second.error.empty()) {
      Fail(grpc::StatusCode::DATA_LOSS, "model '" + name + "' version " + std::to_string(number) +
                                            " is corrupt: " + meta->second.error);
    }
    for (auto it = cache_.begin(); it != cache_.end(); ++it) {
      if ((*it)->model == name && (*it)->version == number) {
        SnapshotPtr hit = *it;
        cache_.splice(cache_.begin(), cache_, it);  // most recently used first
        return hit;
      }
    }
  }
  // Read from the store outside the lock; two calls for the same version may both read it.
  std::shared_ptr<Snapshot> loaded;
  try {
    loaded = FromCheckpoint(store_->LoadCheckpoint(name, number), limits_);
  } catch (const std::exception& e) {
    Fail(grpc::StatusCode::DATA_LOSS, "model '" + name + "' version " + std::to_string(number) +
                                          " cannot be loaded: " + e.what());
  }
  loaded->history.clear();
  std::lock_guard lock(mu_);
  if (version.empty()) {
    auto it = models_.find(name);
    if (it != models_.end()) it->second.served = loaded;
  }
  for (const auto& c : cache_) {
    if (c->model == name && c->version == number) return c;
  }
  if (cache_versions_ == 0) return loaded;
  cache_.push_front(loaded);
  if (cache_.size() > cache_versions_) cache_.pop_back();
  return loaded;
}

SnapshotPtr Registry::Newest(const std::string& name) const {
  std::lock_guard lock(mu_);
  return Find(name).newest;
}

std::vector<v1::EpochRecord> Registry::History(const std::string& name) const {
  std::lock_guard lock(mu_);
  return Find(name).history;
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
    if (it == models_.end())
      Fail(grpc::StatusCode::NOT_FOUND, "no model named '" + Printable(name) + "'");
    if (it->second.training) {
      Fail(grpc::StatusCode::FAILED_PRECONDITION,
           "model '" + name + "' is training; cancel the Train call first");
    }
    removed = std::move(it->second);
    models_.erase(it);
    cache_.remove_if([&](const SnapshotPtr& c) { return c->model == name; });
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

int64_t Registry::BestVersion(const Entry& e) {
  const bool higher_better = e.newest->task == engine::Task::kClassification;
  int64_t best = 0;
  double best_metric = 0;
  for (const auto& r : e.history) {
    if (!std::isfinite(r.val_metric()) || r.version() == 0 ||
        !std::binary_search(e.versions.begin(), e.versions.end(), r.version())) {
      continue;
    }
    const bool better = higher_better ? r.val_metric() > best_metric : r.val_metric() < best_metric;
    if (best == 0 || better) {
      best = r.version();
      best_metric = r.val_metric();
    }
  }
  return best;
}

void Registry::Describe(const Snapshot& s, v1::ModelInfo* info) const {
  info->set_name(s.model);
  *info->mutable_spec() = s.spec;
  info->set_parameter_count(s.net.ParameterCount());
  info->set_version(s.version);
  info->set_output_size(s.net.output_shape().Size());
  info->set_stochastic(s.net.FirstStochasticLayer() < s.net.size());
  info->set_steps(s.steps);
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
  if (it == models_.end()) return;
  const Entry& e = it->second;
  for (const auto& h : e.history) *info->add_history() = h;
  for (int64_t v : e.versions) info->add_versions(v);
  info->set_training(e.training);
  info->set_created_unix_ms(s.created_unix_ms);
  info->set_newest_version(e.newest->version);
  try {
    info->set_version(VersionNumber(s.model, e, ""));
  } catch (const ServiceError&) {
    // A serving label without a version: `s` is described.
  }
  info->set_serving_label(e.settings.serving_label());
  info->set_keep_versions(e.settings.keep_versions() > 0 ? e.settings.keep_versions()
                                                         : keep_versions_);
  for (const auto& [label, v] : e.settings.labels()) (*info->mutable_labels())[label] = v;
  const int64_t best = BestVersion(e);
  std::map<int64_t, const v1::EpochRecord*> epochs;
  for (const auto& h : e.history) epochs[h.version()] = &h;
  for (int64_t v : e.versions) {
    auto* d = info->add_version_details();
    d->set_version(v);
    auto m = e.meta.find(v);
    if (m != e.meta.end()) {
      d->set_status(m->second.error.empty() ? v1::VersionInfo::STATUS_OK
                                            : v1::VersionInfo::STATUS_CORRUPT);
      d->set_error(m->second.error);
      d->set_size_bytes(m->second.size_bytes);
      d->set_created_unix_ms(m->second.created_unix_ms);
      d->set_note(m->second.note);
    } else {
      d->set_status(v1::VersionInfo::STATUS_OK);
    }
    for (const auto& [label, lv] : e.settings.labels())
      if (lv == v) d->add_labels(label);
    auto ep = epochs.find(v);
    if (ep != epochs.end()) {
      *d->mutable_epoch() = *ep->second;
    }
    d->set_best(v == best);
  }
}

std::unique_ptr<Registry::TrainingLease> Registry::BeginTraining(const std::string& name,
                                                                 int max_concurrent) {
  std::lock_guard lock(mu_);
  auto it = models_.find(name);
  if (it == models_.end())
    Fail(grpc::StatusCode::NOT_FOUND, "no model named '" + Printable(name) + "'");
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
                                             v1::EpochRecord* epoch) {
  return registry_->PublishVersion(name_, std::move(next), epoch);
}

SnapshotPtr Registry::PublishVersion(const std::string& name, std::shared_ptr<Snapshot> next,
                                     v1::EpochRecord* epoch) {
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
  next->created_unix_ms = UnixMillisNow();
  next->history.clear();  // kept once, in the model's history file
  v1::Checkpoint c;
  ToCheckpoint(*next, &c);
  store_->SaveCheckpoint(c);  // on failure the old version stays current
  if (epoch) {
    epoch->set_version(next->version);
    store_->AppendHistory(name, *epoch);
  }
  const VersionMeta meta{next->created_unix_ms, next->note,
                         store_->VersionSize(name, next->version), ""};
  SnapshotPtr published;
  {
    std::lock_guard lock(mu_);
    auto it = models_.find(name);
    if (it == models_.end()) Fail(grpc::StatusCode::NOT_FOUND, "model '" + name + "' was deleted");
    it->second.versions.push_back(next->version);
    it->second.meta[next->version] = meta;
    if (epoch) it->second.history.push_back(*epoch);
    it->second.newest = std::move(next);
    published = it->second.newest;
  }
  ApplyRetention(name);
  return published;
}

void Registry::ApplyRetention(const std::string& name) {
  std::lock_guard write(write_mu_);
  std::vector<int64_t> doomed;
  {
    std::lock_guard lock(mu_);
    auto it = models_.find(name);
    if (it == models_.end()) return;
    Entry& e = it->second;
    const size_t keep = static_cast<size_t>(
        e.settings.keep_versions() > 0 ? e.settings.keep_versions() : keep_versions_);
    const int64_t best = BestVersion(e);
    std::vector<int64_t> kept;
    for (size_t i = 0; i < e.versions.size(); ++i) {
      const int64_t v = e.versions[i];
      bool labelled = false;
      for (const auto& [label, lv] : e.settings.labels()) labelled |= lv == v;
      if (i + keep >= e.versions.size() || labelled || v == best || v == e.newest->version) {
        kept.push_back(v);
      } else {
        doomed.push_back(v);
        e.meta.erase(v);
      }
    }
    if (doomed.empty()) return;
    e.versions = std::move(kept);
    if (e.served && !std::binary_search(e.versions.begin(), e.versions.end(), e.served->version)) {
      e.served.reset();
    }
    cache_.remove_if([&](const SnapshotPtr& c) {
      return c->model == name &&
             !std::binary_search(e.versions.begin(), e.versions.end(), c->version);
    });
  }
  // A call already holding one of them keeps its snapshot; the files go.
  for (int64_t v : doomed) {
    try {
      store_->DeleteVersion(name, v);
    } catch (const std::exception& ex) {
      StoreLog()->warn("model {} version {} not deleted: {}", name, v, ex.what());
    }
  }
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

}  // namespace dropnet::service

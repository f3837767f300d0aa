// The registry's data sets: stored uploads and imports, their descriptions, reading and deleting.
#include "server/service/registry.h"

#include <algorithm>
#include <string>
#include <vector>

#include "server/service/convert.h"
#include "server/service/status.h"

namespace dropnet::service {

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
  stored.set_created_unix_ms(UnixMillisNow());
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

v1::DatasetInfo Registry::PutDatasetStreamed(v1::StoredDataset meta,
                                             const ModelStore::Producer& x_values,
                                             const ModelStore::Producer& y_values, bool overwrite) {
  const std::string name = meta.name();
  CheckName("name", name);
  meta.set_created_unix_ms(UnixMillisNow());
  auto slot = std::make_shared<DatasetSlot>();
  v1::DatasetInfo& info = slot->info;
  info.set_name(name);
  info.set_task(meta.task());
  info.set_rows(meta.x().shape(0));
  info.mutable_input_shape()->CopyFrom(meta.input_shape());
  info.set_targets(static_cast<int32_t>(meta.y().shape(1)));
  info.set_num_classes(meta.num_classes());
  info.mutable_feature_names()->CopyFrom(meta.feature_names());
  info.mutable_class_names()->CopyFrom(meta.class_names());
  info.set_source(meta.source());
  info.set_created_unix_ms(meta.created_unix_ms());
  std::lock_guard write(write_mu_);
  {
    std::lock_guard lock(mu_);
    if (!overwrite && datasets_.count(name)) {
      Fail(grpc::StatusCode::ALREADY_EXISTS,
           "data set '" + name + "' exists; set overwrite to replace it");
    }
  }
  store_->SaveDatasetStreamed(meta, x_values, y_values);  // outside mu_
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
      Fail(grpc::StatusCode::NOT_FOUND, "no data set named '" + Printable(name) + "'");
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
      Fail(grpc::StatusCode::NOT_FOUND, "no data set named '" + Printable(name) + "'");
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

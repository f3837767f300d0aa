#include "server/interop/onnx/onnx_tensors.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>

namespace dropnet::interop {

namespace {

using onnx::TensorProto;

[[noreturn]] void Bad(const std::string& why) { throw std::invalid_argument(why); }

template <typename T>
std::vector<T> FromRaw(const std::string& raw) {
  if (raw.size() % sizeof(T)) Bad("raw_data size is not a multiple of the element size");
  std::vector<T> out(raw.size() / sizeof(T));
  if (!out.empty()) std::memcpy(out.data(), raw.data(), raw.size());
  return out;
}

// Normalises a (possibly negative) axis for a rank.
int64_t Axis(int64_t axis, int64_t rank) {
  if (axis < 0) axis += rank;
  if (axis < 0 || axis >= rank) Bad("axis " + std::to_string(axis) + " out of range");
  return axis;
}

std::vector<int64_t> Ints(const ConstTensor& t) {
  std::vector<int64_t> out;
  for (int64_t k = 0; k < t.Size(); ++k) out.push_back(static_cast<int64_t>(t.At(k)));
  return out;
}

std::vector<int64_t> IntsAttribute(const onnx::NodeProto& node, const std::string& name) {
  const auto* a = FindAttribute(node, name);
  if (!a) return {};
  return {a->ints().begin(), a->ints().end()};
}

// Copies the elements of `in` at the given flat indices.
ConstTensor Gather(const ConstTensor& in, const std::vector<int64_t>& dims,
                   const std::vector<int64_t>& index) {
  ConstTensor out;
  out.dims = dims;
  out.is_float = in.is_float;
  for (int64_t k : index) {
    if (in.is_float)
      out.f.push_back(in.f[k]);
    else
      out.i.push_back(in.i[k]);
  }
  return out;
}

std::vector<int64_t> Strides(const std::vector<int64_t>& dims) {
  std::vector<int64_t> s(dims.size(), 1);
  for (int64_t d = static_cast<int64_t>(dims.size()) - 2; d >= 0; --d)
    s[d] = s[d + 1] * dims[d + 1];
  return s;
}

ConstTensor Slice(const onnx::NodeProto& node, const std::vector<const ConstTensor*>& in,
                  int opset) {
  const ConstTensor& x = *in[0];
  std::vector<int64_t> starts, ends, axes, steps;
  if (opset < 10) {
    starts = IntsAttribute(node, "starts");
    ends = IntsAttribute(node, "ends");
    axes = IntsAttribute(node, "axes");
  } else {
    if (in.size() < 3 || !in[1] || !in[2]) Bad("Slice needs starts and ends");
    starts = Ints(*in[1]);
    ends = Ints(*in[2]);
    if (in.size() > 3 && in[3]) axes = Ints(*in[3]);
    if (in.size() > 4 && in[4]) steps = Ints(*in[4]);
  }
  const int64_t rank = static_cast<int64_t>(x.dims.size());
  if (axes.empty())
    for (size_t k = 0; k < starts.size(); ++k) axes.push_back(static_cast<int64_t>(k));
  std::vector<int64_t> lo(rank, 0), hi = x.dims;
  for (size_t k = 0; k < axes.size(); ++k) {
    if (!steps.empty() && steps[k] != 1) Bad("Slice with a step other than 1");
    const int64_t a = Axis(axes[k], rank), n = x.dims[a];
    int64_t s = starts[k] < 0 ? starts[k] + n : starts[k];
    int64_t e = ends[k] < 0 ? ends[k] + n : ends[k];
    lo[a] = std::clamp<int64_t>(s, 0, n);
    hi[a] = std::clamp<int64_t>(e, lo[a], n);
  }
  std::vector<int64_t> dims(rank), index;
  for (int64_t d = 0; d < rank; ++d) dims[d] = hi[d] - lo[d];
  const auto stride = Strides(x.dims);
  ConstTensor shape_only;
  shape_only.dims = dims;
  for (int64_t k = 0; k < shape_only.Size(); ++k) {
    int64_t rest = k, flat = 0;
    for (int64_t d = rank - 1; d >= 0; --d) {
      flat += (lo[d] + rest % dims[d]) * stride[d];
      rest /= dims[d];
    }
    index.push_back(flat);
  }
  return Gather(x, dims, index);
}

ConstTensor Concat(const onnx::NodeProto& node, const std::vector<const ConstTensor*>& in) {
  const auto* axis_attr = FindAttribute(node, "axis");
  if (!axis_attr || in.empty() || !in[0]) Bad("Concat needs an axis and inputs");
  const int64_t rank = static_cast<int64_t>(in[0]->dims.size());
  const int64_t axis = Axis(axis_attr->i(), rank);
  int64_t outer = 1;
  for (int64_t d = 0; d < axis; ++d) outer *= in[0]->dims[d];
  ConstTensor out;
  out.dims = in[0]->dims;
  out.dims[axis] = 0;
  out.is_float = in[0]->is_float;
  for (const auto* t : in) {
    if (!t || t->dims.size() != static_cast<size_t>(rank) || t->is_float != out.is_float)
      Bad("Concat of tensors of different ranks or types");
    out.dims[axis] += t->dims[axis];
  }
  for (int64_t o = 0; o < outer; ++o) {
    for (const auto* t : in) {
      const int64_t block = t->Size() / outer;
      if (t->is_float)
        out.f.insert(out.f.end(), t->f.begin() + o * block, t->f.begin() + (o + 1) * block);
      else
        out.i.insert(out.i.end(), t->i.begin() + o * block, t->i.begin() + (o + 1) * block);
    }
  }
  return out;
}

ConstTensor Reshaped(const ConstTensor& x, std::vector<int64_t> dims) {
  ConstTensor out = x;
  out.dims = std::move(dims);
  if (out.Size() != x.Size()) Bad("Reshape changes the element count");
  return out;
}

std::vector<int64_t> AxesOf(const onnx::NodeProto& node, const std::vector<const ConstTensor*>& in,
                            int opset) {
  if (opset >= 13) return in.size() > 1 && in[1] ? Ints(*in[1]) : std::vector<int64_t>{};
  return IntsAttribute(node, "axes");
}

}  // namespace

int64_t ConstTensor::Size() const {
  int64_t n = 1;
  for (int64_t d : dims) n *= d;
  return n;
}

double ConstTensor::At(int64_t k) const {
  return is_float ? static_cast<double>(f[k]) : static_cast<double>(i[k]);
}

ConstTensor ReadTensor(const TensorProto& t) {
  if (t.data_location() == TensorProto::EXTERNAL || t.external_data_size() > 0) {
    Bad("tensor '" + t.name() + "' keeps its data in an external file, which is not accepted");
  }
  ConstTensor out;
  for (int64_t d : t.dims()) {
    if (d < 0) Bad("tensor '" + t.name() + "' has a negative dimension");
    out.dims.push_back(d);
  }
  const bool raw = t.has_raw_data();
  switch (t.data_type()) {
    case TensorProto::FLOAT:
      out.f = raw ? FromRaw<float>(t.raw_data())
                  : std::vector<float>(t.float_data().begin(), t.float_data().end());
      break;
    case TensorProto::DOUBLE: {
      std::vector<double> d =
          raw ? FromRaw<double>(t.raw_data())
              : std::vector<double>(t.double_data().begin(), t.double_data().end());
      out.f.assign(d.begin(), d.end());
      break;
    }
    case TensorProto::INT64:
      out.is_float = false;
      out.i = raw ? FromRaw<int64_t>(t.raw_data())
                  : std::vector<int64_t>(t.int64_data().begin(), t.int64_data().end());
      break;
    case TensorProto::INT32:
    case TensorProto::BOOL: {
      out.is_float = false;
      if (raw && t.data_type() == TensorProto::INT32) {
        for (int32_t v : FromRaw<int32_t>(t.raw_data())) out.i.push_back(v);
      } else if (raw) {
        for (uint8_t v : FromRaw<uint8_t>(t.raw_data())) out.i.push_back(v);
      } else {
        out.i.assign(t.int32_data().begin(), t.int32_data().end());
      }
      break;
    }
    default:
      Bad("tensor '" + t.name() + "' has element type " + std::to_string(t.data_type()) +
          " (only float, double, int64, int32 and bool are read)");
  }
  const int64_t count =
      out.is_float ? static_cast<int64_t>(out.f.size()) : static_cast<int64_t>(out.i.size());
  if (count != out.Size()) {
    Bad("tensor '" + t.name() + "' has " + std::to_string(count) + " values for " +
        std::to_string(out.Size()) + " elements");
  }
  return out;
}

ConstTensor FoldConstant(const onnx::NodeProto& node, const std::vector<const ConstTensor*>& in,
                         int opset) {
  const std::string& op = node.op_type();
  for (const auto* t : in) {
    if (t == in[0] && !t) Bad(op + " without its data input");
  }
  if (op == "Identity") return *in[0];
  if (op == "Cast") {
    const auto* to = FindAttribute(node, "to");
    ConstTensor out = *in[0];
    const bool to_float = to && (to->i() == TensorProto::FLOAT || to->i() == TensorProto::DOUBLE);
    if (to_float && !out.is_float) {
      for (int64_t v : out.i) out.f.push_back(static_cast<float>(v));
      out.i.clear();
    } else if (!to_float && out.is_float) {
      for (float v : out.f) out.i.push_back(static_cast<int64_t>(v));
      out.f.clear();
    }
    out.is_float = to_float;
    return out;
  }
  if (op == "Slice") return Slice(node, in, opset);
  if (op == "Concat") return Concat(node, in);
  if (op == "Unsqueeze") {
    std::vector<int64_t> dims = in[0]->dims;
    auto axes = AxesOf(node, in, opset);
    const int64_t rank = static_cast<int64_t>(dims.size() + axes.size());
    for (auto& a : axes) a = Axis(a, rank);
    std::sort(axes.begin(), axes.end());
    for (int64_t a : axes) dims.insert(dims.begin() + a, 1);
    return Reshaped(*in[0], dims);
  }
  if (op == "Squeeze") {
    std::vector<int64_t> dims = in[0]->dims, kept;
    auto axes = AxesOf(node, in, opset);
    for (auto& a : axes) a = Axis(a, static_cast<int64_t>(dims.size()));
    for (size_t d = 0; d < dims.size(); ++d) {
      const bool listed =
          std::find(axes.begin(), axes.end(), static_cast<int64_t>(d)) != axes.end();
      if ((axes.empty() && dims[d] == 1) || listed) continue;
      kept.push_back(dims[d]);
    }
    return Reshaped(*in[0], kept);
  }
  if (op == "Reshape") {
    if (in.size() < 2 || !in[1]) Bad("Reshape needs a shape");
    std::vector<int64_t> dims = Ints(*in[1]);
    int64_t known = 1, unknown = -1;
    for (size_t d = 0; d < dims.size(); ++d) {
      if (dims[d] == 0 && d < in[0]->dims.size()) dims[d] = in[0]->dims[d];
      if (dims[d] == -1)
        unknown = static_cast<int64_t>(d);
      else
        known *= dims[d];
    }
    if (unknown >= 0 && known > 0) dims[unknown] = in[0]->Size() / known;
    return Reshaped(*in[0], dims);
  }
  Bad("cannot evaluate a constant " + op);
}

double FloatToDecimal(float v) {
  char buf[64];
  auto r = std::to_chars(buf, buf + sizeof(buf), v);
  *r.ptr = '\0';
  return std::strtod(buf, nullptr);
}

double Tidy(double v) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.12g", v);
  return std::strtod(buf, nullptr);
}

const onnx::AttributeProto* FindAttribute(const onnx::NodeProto& node, const std::string& name) {
  for (const auto& a : node.attribute())
    if (a.name() == name) return &a;
  return nullptr;
}

void SetTensor(const std::string& name, const std::vector<int64_t>& dims, const float* values,
               onnx::TensorProto* out) {
  out->set_name(name);
  out->set_data_type(TensorProto::FLOAT);
  int64_t n = 1;
  for (int64_t d : dims) {
    out->add_dims(d);
    n *= d;
  }
  out->set_raw_data(reinterpret_cast<const char*>(values), static_cast<size_t>(n) * sizeof(float));
}

void SetIntTensor(const std::string& name, const std::vector<int64_t>& dims,
                  const std::vector<int64_t>& values, onnx::TensorProto* out) {
  out->set_name(name);
  out->set_data_type(TensorProto::INT64);
  for (int64_t d : dims) out->add_dims(d);
  out->set_raw_data(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(int64_t));
}

}  // namespace dropnet::interop

// Parsing and checking of the engine manifest (runtime/manifest.py writes it).
#include "retina/manifest.hpp"

#include <openssl/evp.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>
#include <sstream>

#include "retina/types.hpp"

namespace retina {
namespace {

using nlohmann::json;

constexpr const char* kFormat = "retina-deploy/engine-manifest";
constexpr int kFormatVersion = 1;
constexpr std::uintmax_t kMaxEngineBytes = std::uintmax_t{8} << 30;

[[noreturn]] void fail(const std::string& what, const std::string& message) {
  throw Error(ErrorCode::kModelFile, what + ": " + message);
}

const json& field(const json& obj, const char* key, const std::string& what) {
  auto it = obj.find(key);
  if (it == obj.end()) fail(what, std::string("missing field '") + key + "'");
  return *it;
}

std::string get_string(const json& obj, const char* key, const std::string& what) {
  const json& v = field(obj, key, what);
  if (!v.is_string()) fail(what, std::string("field '") + key + "' must be a string, got " + v.type_name());
  return v.get<std::string>();
}

std::int64_t get_int(const json& v, const std::string& name, const std::string& what) {
  if (!v.is_number_integer()) fail(what, "field '" + name + "' must be an integer, got " + v.type_name());
  return v.get<std::int64_t>();
}

double get_number(const json& v, const std::string& name, const std::string& what) {
  if (!v.is_number()) fail(what, "field '" + name + "' must be a number, got " + v.type_name());
  return v.get<double>();
}

const json& get_array(const json& obj, const char* key, std::size_t size, const std::string& what) {
  const json& v = field(obj, key, what);
  if (!v.is_array()) fail(what, std::string("field '") + key + "' must be an array, got " + v.type_name());
  if (size && v.size() != size) {
    fail(what, std::string("field '") + key + "' must have " + std::to_string(size) + " values, got " +
                   std::to_string(v.size()));
  }
  return v;
}

const json& get_object(const json& obj, const char* key, const std::string& what) {
  const json& v = field(obj, key, what);
  if (!v.is_object()) fail(what, std::string("field '") + key + "' must be an object, got " + v.type_name());
  return v;
}

void check_sha(const std::string& value, const char* key, const std::string& what) {
  static const std::regex hex("[0-9a-f]{64}");
  if (!std::regex_match(value, hex)) fail(what, std::string("field '") + key + "' must be 64 lowercase hex digits");
}

PreprocessConfig parse_preprocess(const json& obj, const std::string& what) {
  PreprocessConfig cfg;
  const json& size = get_array(obj, "size", 2, what);
  for (int i = 0; i < 2; ++i) {
    std::int64_t v = get_int(size[i], "preprocess.size", what);
    if (v < 128 || v % 128 || v > 8192) fail(what, "preprocess.size values must be multiples of 128 up to 8192");
    cfg.size[i] = static_cast<int>(v);
  }
  // mean, std and channel_order may be absent, as in runtime/preprocess.py (ImageNet statistics, RGB).
  if (obj.contains("mean")) {
    const json& mean = get_array(obj, "mean", 3, what);
    for (int i = 0; i < 3; ++i) cfg.mean[i] = static_cast<float>(get_number(mean[i], "preprocess.mean", what));
  }
  if (obj.contains("std")) {
    const json& std = get_array(obj, "std", 3, what);
    for (int i = 0; i < 3; ++i) cfg.std[i] = static_cast<float>(get_number(std[i], "preprocess.std", what));
  }
  for (int i = 0; i < 3; ++i) {
    if (!std::isfinite(cfg.mean[i]) || !std::isfinite(cfg.std[i]) || !(cfg.std[i] > 0.0f)) {
      fail(what, "preprocess.mean must be finite and preprocess.std finite and > 0");
    }
  }
  if (obj.contains("channel_order") && get_string(obj, "channel_order", what) != "rgb") {
    fail(what, "preprocess.channel_order must be 'rgb'");
  }
  return cfg;
}

NmsSettings parse_nms(const json& obj, const std::string& what) {
  NmsSettings nms;
  nms.mode = get_string(obj, "mode", what);
  if (nms.mode != "onnx" && nms.mode != "efficient" && nms.mode != "none") {
    fail(what, "nms.mode must be onnx, efficient or none, got '" + nms.mode + "'");
  }
  std::int64_t max_dets = get_int(field(obj, "max_dets", what), "nms.max_dets", what);
  std::int64_t topk = get_int(field(obj, "topk_per_level", what), "nms.topk_per_level", what);
  if (max_dets < 1 || max_dets > 100000 || topk < 1 || topk > 1000000) fail(what, "nms.max_dets / topk out of range");
  nms.max_dets = static_cast<int>(max_dets);
  nms.topk_per_level = static_cast<int>(topk);
  nms.score_thresh = static_cast<float>(get_number(field(obj, "score_thresh", what), "nms.score_thresh", what));
  nms.iou_thresh = static_cast<float>(get_number(field(obj, "iou_thresh", what), "nms.iou_thresh", what));
  if (!(nms.score_thresh >= 0.0f && nms.score_thresh < 1.0f)) fail(what, "nms.score_thresh must be in [0, 1)");
  if (!(nms.iou_thresh >= 0.0f && nms.iou_thresh <= 1.0f)) fail(what, "nms.iou_thresh must be in [0, 1]");
  return nms;
}

ModelSpec parse_spec(const json& doc, const std::string& what) {
  ModelSpec spec;
  const json& names = get_array(doc, "class_names", 0, what);
  if (names.empty()) fail(what, "field 'class_names' is empty");
  for (const json& n : names) {
    if (!n.is_string()) fail(what, "field 'class_names' must hold strings");
    spec.class_names.push_back(n.get<std::string>());
  }
  spec.preprocess = parse_preprocess(get_object(doc, "preprocess", what), what);
  const json& post = get_object(doc, "postprocess", what);
  spec.nms = parse_nms(get_object(post, "nms", what), what);
  for (const json& v : get_array(post, "anchors_per_level", 0, what)) {
    std::int64_t n = get_int(v, "postprocess.anchors_per_level", what);
    if (n < 1) fail(what, "postprocess.anchors_per_level values must be >= 1");
    spec.anchors_per_level.push_back(n);
  }
  if (spec.nms.mode == "none" && spec.anchors_per_level.empty()) fail(what, "postprocess.anchors_per_level is empty");
  const json& batch = get_array(doc, "batch_range", 3, what);
  for (int i = 0; i < 3; ++i) {
    std::int64_t v = get_int(batch[i], "batch_range", what);
    if (v < 1 || v > 4096) fail(what, "batch_range values must be in 1..4096");
    spec.batch_range[i] = static_cast<int>(v);
  }
  if (!(spec.batch_range[0] <= spec.batch_range[1] && spec.batch_range[1] <= spec.batch_range[2])) {
    fail(what, "batch_range needs min <= opt <= max");
  }
  const json& input = get_array(doc, "input_size", 2, what);
  for (int i = 0; i < 2; ++i) spec.input_size[i] = static_cast<int>(get_int(input[i], "input_size", what));
  if (spec.input_size != spec.preprocess.size) fail(what, "input_size differs from preprocess.size");
  if (doc.contains("input_name")) spec.input_name = get_string(doc, "input_name", what);
  return spec;
}

}  // namespace

EngineManifest parse_manifest(const std::string& json_text, const std::string& what) {
  json doc = json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded()) fail(what, "not valid JSON");
  if (!doc.is_object()) fail(what, "not a JSON object");
  if (!doc.contains("format") || doc["format"] != kFormat) fail(what, std::string("not an engine manifest (format is not '") + kFormat + "')");
  if (get_int(field(doc, "format_version", what), "format_version", what) != kFormatVersion) {
    fail(what, "format_version is not " + std::to_string(kFormatVersion));
  }
  static const char* const known[] = {"format", "format_version", "engine_sha256", "flavour", "trt_version",
                                      "precision", "batch_range", "input_size", "onnx_sha256", "class_names",
                                      "preprocess", "postprocess", "input_name", "gpu_name", "compute_capabilities",
                                      "extra"};
  for (const auto& item : doc.items()) {  // as runtime/manifest.py: an unknown key is an error, never ignored
    bool found = false;
    for (const char* k : known) found = found || item.key() == k;
    if (!found) fail(what, "unknown field '" + item.key() + "'");
  }
  EngineManifest m;
  m.spec = parse_spec(doc, what);
  m.engine_sha256 = get_string(doc, "engine_sha256", what);
  m.onnx_sha256 = get_string(doc, "onnx_sha256", what);
  check_sha(m.engine_sha256, "engine_sha256", what);
  check_sha(m.onnx_sha256, "onnx_sha256", what);
  m.flavour = get_string(doc, "flavour", what);
  if (m.flavour != "tensorrt" && m.flavour != "tensorrt-rtx") fail(what, "flavour must be tensorrt or tensorrt-rtx");
  m.trt_version = get_string(doc, "trt_version", what);
  m.precision = get_string(doc, "precision", what);
  if (doc.contains("gpu_name") && !doc["gpu_name"].is_null()) m.gpu_name = get_string(doc, "gpu_name", what);
  if (doc.contains("compute_capabilities")) {
    for (const json& c : get_array(doc, "compute_capabilities", 0, what)) {
      if (!c.is_string()) fail(what, "field 'compute_capabilities' must hold strings");
      m.compute_capabilities.push_back(c.get<std::string>());
    }
  }
  return m;
}

EngineManifest read_manifest(const std::string& engine_path) {
  const std::string path = engine_path + ".json";
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    throw Error(ErrorCode::kModelFile, engine_path + ": no manifest " + path +
                                           " beside the engine, so its origin cannot be checked; rebuild it with "
                                           "`retina-deploy build-engine`");
  }
  std::ostringstream text;
  text << in.rdbuf();
  return parse_manifest(text.str(), path);
}

std::vector<char> read_verified_engine(const std::string& engine_path, const EngineManifest& manifest) {
  std::ifstream in(engine_path, std::ios::binary | std::ios::ate);
  if (!in) throw Error(ErrorCode::kModelFile, engine_path + ": no such engine file");
  std::streamoff size = in.tellg();
  if (size <= 0 || static_cast<std::uintmax_t>(size) > kMaxEngineBytes) {
    throw Error(ErrorCode::kModelFile, engine_path + ": engine file of " + std::to_string(size) +
                                           " bytes is empty or implausibly large");
  }
  std::vector<char> data(static_cast<std::size_t>(size));
  in.seekg(0);
  if (!in.read(data.data(), size)) throw Error(ErrorCode::kModelFile, engine_path + ": cannot read the engine");
  const std::string digest = sha256_hex(data.data(), data.size());
  if (digest != manifest.engine_sha256) {
    throw Error(ErrorCode::kModelFile, engine_path + ": sha256 " + digest.substr(0, 16) +
                                           "... differs from its manifest's " + manifest.engine_sha256.substr(0, 16) +
                                           "...; the engine was modified, truncated or swapped; rebuild it");
  }
  return data;
}

std::string sha256_hex(const void* data, std::size_t size) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  if (EVP_Digest(data, size, digest, &length, EVP_sha256(), nullptr) != 1) {
    throw Error(ErrorCode::kInternal, "sha256 failed");
  }
  std::string hex;
  char buf[3];
  for (unsigned int i = 0; i < length; ++i) {
    std::snprintf(buf, sizeof buf, "%02x", digest[i]);
    hex += buf;
  }
  return hex;
}

std::string release_of(const std::string& version) {
  static const std::regex number("\\d+");
  std::string out;
  int parts = 0;
  for (auto it = std::sregex_iterator(version.begin(), version.end(), number); it != std::sregex_iterator() && parts < 3;
       ++it, ++parts) {
    out += (parts ? "." : "") + it->str();
  }
  return out;
}

}  // namespace retina

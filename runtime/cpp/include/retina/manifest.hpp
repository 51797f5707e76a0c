// The engine manifest (<engine>.json) written by `retina-deploy build-engine`, and what a detector needs from it.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace retina {

// runtime/preprocess.py's PreprocessConfig: size (H, W) multiples of 128, mean/std on the 0-1 scale, RGB.
struct PreprocessConfig {
  std::array<int, 2> size{512, 512};
  std::array<float, 3> mean{0.485f, 0.456f, 0.406f};
  std::array<float, 3> std{0.229f, 0.224f, 0.225f};
};

// runtime/onnx_metadata.py's NmsSettings: mode "onnx" | "efficient" (NMS in the engine) or "none" (host NMS).
struct NmsSettings {
  std::string mode = "onnx";
  int max_dets = 100;
  float score_thresh = 0.05f;
  float iou_thresh = 0.5f;
  int topk_per_level = 1000;
};

// Everything the engine-independent code needs to turn images into detections.
struct ModelSpec {
  std::vector<std::string> class_names;
  PreprocessConfig preprocess;
  NmsSettings nms;
  std::vector<std::int64_t> anchors_per_level;  // H_l * W_l * 9 per level: the layout of --nms none outputs
  std::array<int, 3> batch_range{1, 1, 1};      // min, opt, max
  std::array<int, 2> input_size{512, 512};      // H, W
  std::string input_name = "images";
};

struct EngineManifest {
  ModelSpec spec;
  std::string engine_sha256;
  std::string onnx_sha256;
  std::string flavour;      // "tensorrt" | "tensorrt-rtx"
  std::string trt_version;  // e.g. "10.13.0" or "1.7.1"
  std::string precision;    // "fp32" | "fp16" | "int8"
  std::optional<std::string> gpu_name;
  std::vector<std::string> compute_capabilities;
};

// Parses manifest JSON text; every field is checked for presence and type. Throws Error(kModelFile)
// naming the field ("what" prefixes the message, e.g. the manifest's path).
EngineManifest parse_manifest(const std::string& json_text, const std::string& what = "manifest");

// Reads "<engine_path>.json" and parses it; a missing manifest is Error(kModelFile).
EngineManifest read_manifest(const std::string& engine_path);

// Reads the engine's bytes once and checks their sha256 against the manifest before anything parses them.
std::vector<char> read_verified_engine(const std::string& engine_path, const EngineManifest& manifest);

// Lowercase hex sha256 of a buffer.
std::string sha256_hex(const void* data, std::size_t size);

// "10.13.0.35" -> "10.13.0": serialized engines are tied to major.minor.patch.
std::string release_of(const std::string& version);

}  // namespace retina

// Shared by the C++ tests: a valid manifest, and a backend that returns fixed outputs.
#pragma once

#include <string>
#include <vector>

#include "retina/backend.hpp"
#include "retina/manifest.hpp"

namespace testing_helpers {

// A manifest as runtime/manifest.py writes it (2 classes, 128 x 256 input, batch 1..4), with `nms_mode`.
inline std::string manifest_json(const std::string& engine_sha, const std::string& nms_mode = "none",
                                 const std::string& batch = "[1, 2, 4]") {
  return std::string(R"({"format": "retina-deploy/engine-manifest", "format_version": 1,
    "engine_sha256": ")") + engine_sha + R"(", "flavour": "tensorrt", "trt_version": "10.13.0.35",
    "precision": "fp32", "batch_range": )" + batch + R"(, "input_size": [128, 256],
    "onnx_sha256": ")" + std::string(64, 'a') + R"(", "class_names": ["cat", "dog"],
    "preprocess": {"size": [128, 256], "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "channel_order": "rgb"},
    "postprocess": {"nms": {"mode": ")" + nms_mode + R"(", "max_dets": 10, "score_thresh": 0.3, "iou_thresh": 0.5,
                            "topk_per_level": 5}, "anchors_per_level": [3, 1]},
    "input_name": "images", "gpu_name": null, "compute_capabilities": [], "extra": {}})";
}

// Returns the same dense outputs ("boxes" [B, 4, 4], "scores" [B, 4, 2]) for every image; records batch sizes.
class DenseBackend : public retina::Backend {
 public:
  std::vector<float> boxes_row, scores_row;
  std::vector<int> batches;
  std::vector<float> first_input;  // the first image's input of the last call

  retina::Outputs run(const float* input, int batch) override {
    batches.push_back(batch);
    first_input.assign(input, input + 3 * 128 * 256);
    boxes.clear();
    scores.clear();
    for (int b = 0; b < batch; ++b) {
      boxes.insert(boxes.end(), boxes_row.begin(), boxes_row.end());
      scores.insert(scores.end(), scores_row.begin(), scores_row.end());
    }
    retina::Outputs out;
    out["boxes"] = {boxes.data(), retina::DataType::kFloat32, {batch, 4, 4}};
    out["scores"] = {scores.data(), retina::DataType::kFloat32, {batch, 4, 2}};
    return out;
  }
  std::string describe() const override { return "dense test backend"; }

 private:
  std::vector<float> boxes, scores;
};

}  // namespace testing_helpers

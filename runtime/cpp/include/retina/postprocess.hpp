// Post-processing on the host, the same as runtime/host_nms.py and runtime/detections.py:
// per-level top-k + score threshold + class-aware greedy NMS for --nms none engines, and the
// mapping of input-pixel boxes back to each original image.
#pragma once

#include <cstdint>
#include <vector>

#include "retina/manifest.hpp"
#include "retina/types.hpp"

namespace retina {

// Detections of one image in network-input pixels (the outputs of an --nms onnx engine for one row).
struct InputDetections {
  std::vector<std::array<float, 4>> boxes;  // xyxy input pixels
  std::vector<float> scores;                // descending
  std::vector<int> classes;
};

// One image's dense outputs: boxes [N, 4] decoded xyxy input pixels, scores [N, C] after sigmoid.
// Per level (level_sizes anchors each) the topk best (anchor, class) pairs, those with score >
// score_thresh, class-aware greedy NMS (IoU > iou_thresh suppresses), the max_dets best.
InputDetections detections_from_dense(const float* boxes, const float* scores, std::int64_t num_anchors,
                                      int num_classes, const std::vector<std::int64_t>& level_sizes,
                                      const NmsSettings& nms);

// Positions kept by class-aware greedy NMS (as host_nms.batched_nms), by descending score (equal scores by position),
// <= max_keep. Throws Error(kInvalidArgument) for a NaN score or vectors of different lengths.
std::vector<std::size_t> batched_nms(const std::vector<std::array<float, 4>>& boxes, const std::vector<float>& scores,
                                     const std::vector<int>& classes, float iou_thresh, std::size_t max_keep);

// Boxes / scale (float32), x clipped to [0, width], y to [0, height]; class names attached.
Detections to_original(const InputDetections& dets, double scale, int height, int width,
                       const std::vector<std::string>& class_names);

}  // namespace retina

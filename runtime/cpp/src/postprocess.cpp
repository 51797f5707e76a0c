// Host top-k + class-aware NMS (runtime/post/host_nms.py) and the mapping back to original pixels
// (runtime/post/detections.py), with the same float32 operations in the same order: the C++ library's own
// copy, for applications without Python (tests/runtime/cpp/test_cpp_parity.py holds the two equal).
#include "retina/postprocess.hpp"

#include <algorithm>
#include <numeric>
#include <string>

namespace retina {
namespace {

// IoU > thresh as torchvision computes it in float32; 0/0 is nan, which never exceeds a threshold.
bool suppresses(const std::array<float, 4>& a, const std::array<float, 4>& b, float thresh) {
  const float w = std::max(std::min(a[2], b[2]) - std::max(a[0], b[0]), 0.0f);
  const float h = std::max(std::min(a[3], b[3]) - std::max(a[1], b[1]), 0.0f);
  const float inter = w * h;
  const float area_a = (a[2] - a[0]) * (a[3] - a[1]);
  const float area_b = (b[2] - b[0]) * (b[3] - b[1]);
  const float uni = area_a + area_b - inter;
  if (uni == 0.0f) return inter > 0.0f;  // +inf > thresh; 0/0 = nan is not
  return inter / uni > thresh;
}

// Positions (into `order`) kept by greedy NMS over boxes sorted by descending score.
std::vector<std::size_t> greedy(const std::vector<std::array<float, 4>>& boxes, const std::vector<std::size_t>& order,
                                float thresh, std::size_t max_keep) {
  std::vector<char> suppressed(order.size(), 0);
  std::vector<std::size_t> keep;
  for (std::size_t i = 0; i < order.size(); ++i) {
    if (suppressed[i]) continue;
    keep.push_back(order[i]);
    if (keep.size() == max_keep) break;
    for (std::size_t j = i + 1; j < order.size(); ++j) {
      if (!suppressed[j] && suppresses(boxes[order[i]], boxes[order[j]], thresh)) suppressed[j] = 1;
    }
  }
  return keep;
}

// Indices sorted by descending value, ties in index order (numpy's stable argsort of -values).
std::vector<std::size_t> argsort_desc(const std::vector<float>& values) {
  std::vector<std::size_t> order(values.size());
  std::iota(order.begin(), order.end(), std::size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return values[a] > values[b]; });
  return order;
}

}  // namespace

std::vector<std::size_t> batched_nms(const std::vector<std::array<float, 4>>& boxes, const std::vector<float>& scores,
                                     const std::vector<int>& classes, float iou_thresh, std::size_t max_keep) {
  const std::vector<std::size_t> order = argsort_desc(scores);
  std::vector<int> unique(classes);
  std::sort(unique.begin(), unique.end());
  unique.erase(std::unique(unique.begin(), unique.end()), unique.end());
  std::vector<std::size_t> kept;
  for (int c : unique) {  // classes never suppress each other: NMS per class, then merge by score
    std::vector<std::size_t> of_class;
    for (std::size_t i : order) {
      if (classes[i] == c) of_class.push_back(i);
    }
    std::vector<std::size_t> k = greedy(boxes, of_class, iou_thresh, max_keep);
    kept.insert(kept.end(), k.begin(), k.end());
  }
  // Equal scores by candidate index, as the graph's final TopK and the Python runtime order them (not by class).
  std::sort(kept.begin(), kept.end(),
            [&](std::size_t a, std::size_t b) { return scores[a] > scores[b] || (scores[a] == scores[b] && a < b); });
  if (kept.size() > max_keep) kept.resize(max_keep);
  return kept;
}

InputDetections detections_from_dense(const float* boxes, const float* scores, std::int64_t num_anchors,
                                      int num_classes, const std::vector<std::int64_t>& level_sizes,
                                      const NmsSettings& nms) {
  std::int64_t total = 0;
  for (std::int64_t s : level_sizes) total += s;
  if (total != num_anchors) {
    throw Error(ErrorCode::kModelFile, "anchors_per_level sums to " + std::to_string(total) +
                                           ", the dense outputs have " + std::to_string(num_anchors) + " anchors");
  }
  std::vector<std::array<float, 4>> cand_boxes;
  std::vector<float> cand_scores;
  std::vector<int> cand_classes;
  std::int64_t start = 0;
  std::vector<std::int64_t> flat;
  for (std::int64_t size : level_sizes) {
    const float* level = scores + start * num_classes;
    const std::int64_t n = size * num_classes;
    const std::int64_t k = std::min<std::int64_t>(nms.topk_per_level, n);
    flat.resize(static_cast<std::size_t>(n));
    std::iota(flat.begin(), flat.end(), std::int64_t{0});
    auto better = [&](std::int64_t a, std::int64_t b) { return level[a] > level[b] || (level[a] == level[b] && a < b); };
    std::partial_sort(flat.begin(), flat.begin() + k, flat.end(), better);
    for (std::int64_t i = 0; i < k; ++i) {
      const float s = level[flat[i]];
      if (!(s > nms.score_thresh)) continue;
      const std::int64_t anchor = start + flat[i] / num_classes;
      const float* b = boxes + anchor * 4;
      cand_boxes.push_back({b[0], b[1], b[2], b[3]});
      cand_scores.push_back(s);
      cand_classes.push_back(static_cast<int>(flat[i] % num_classes));
    }
    start += size;
  }
  InputDetections out;
  for (std::size_t i : batched_nms(cand_boxes, cand_scores, cand_classes, nms.iou_thresh,
                                   static_cast<std::size_t>(nms.max_dets))) {
    out.boxes.push_back(cand_boxes[i]);
    out.scores.push_back(cand_scores[i]);
    out.classes.push_back(cand_classes[i]);
  }
  return out;
}

Detections to_original(const InputDetections& dets, double scale, int height, int width,
                       const std::vector<std::string>& class_names) {
  const float s = static_cast<float>(scale);
  const float w = static_cast<float>(width), h = static_cast<float>(height);
  Detections out;
  out.items.reserve(dets.scores.size());
  for (std::size_t i = 0; i < dets.scores.size(); ++i) {
    const int c = dets.classes[i];
    if (c < 0 || static_cast<std::size_t>(c) >= class_names.size()) {
      throw Error(ErrorCode::kBackend, "model returned class id " + std::to_string(c) + " outside 0.." +
                                           std::to_string(class_names.size() - 1));
    }
    Detection d;
    const std::array<float, 4>& b = dets.boxes[i];
    d.box = {std::clamp(b[0] / s, 0.0f, w), std::clamp(b[1] / s, 0.0f, h), std::clamp(b[2] / s, 0.0f, w),
             std::clamp(b[3] / s, 0.0f, h)};
    d.score = dets.scores[i];
    d.class_id = c;
    d.class_name = class_names[static_cast<std::size_t>(c)];
    out.items.push_back(std::move(d));
  }
  return out;
}

}  // namespace retina

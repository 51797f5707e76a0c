// Host top-k + class-aware NMS (runtime/post/host_nms.py) and the mapping back to original pixels
// (runtime/post/detections.py), with the same float32 operations in the same order: the C++ library's own copy, for
// applications without Python, and the Python runtime's top-k + NMS where the package was built with its extension
// (runtime/post/native.py). tests/runtime/cpp/test_cpp_parity.py and tests/runtime/post/test_host_post_cpp.py hold
// them equal.
#include "retina/postprocess.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <string>

namespace retina {
namespace {

// IoU > thresh as torchvision computes it in float32, in host_nms._iou's order of operations; 0/0 is nan, which
// never exceeds a threshold.
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

// A sort key for "descending score, equal scores by ascending index": the float's bits made to order as unsigned
// integers (negative floats flipped whole, the others by the sign bit), inverted, above the index. Not for NaN.
std::uint64_t rank_key(float score, std::uint64_t index) {
  std::uint32_t bits = 0;
  std::memcpy(&bits, &score, sizeof bits);
  bits = score == 0.0f ? 0x80000000u : (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);  // -0.0 == +0.0
  return (static_cast<std::uint64_t>(~bits) << 32) | index;
}

constexpr std::uint64_t kIndexMask = 0xffffffffu;
constexpr std::int64_t kSamplePerK = 16;  // host_nms.SAMPLE_PER_K: larger levels first find a floor on a sample

// `ranked` := rank keys of the min(k, n) best of level [n] that score > thresh, best first (ONNX TopK's order, then
// the threshold: the top-k pairs above it are the top k of those above it). As host_nms._top_flat: a level of more
// than 2 * 16 * k pairs first takes the score that about 2k of every step-th pair reach as a floor, and ranks only
// the pairs at or above it when at least k are (then the top k are among them); else every pair above thresh.
void top_pairs(const float* level, std::int64_t n, std::size_t k, float thresh, std::vector<std::uint64_t>& ranked,
               std::vector<float>& sample) {
  ranked.clear();
  if (k == 0) return;
  const std::int64_t step = n / (kSamplePerK * static_cast<std::int64_t>(k));
  if (step >= 2) {
    sample.clear();
    for (std::int64_t i = 0; i < n; i += step) {
      sample.push_back(std::isnan(level[i]) ? -std::numeric_limits<float>::infinity() : level[i]);
    }
    const std::size_t rank = std::min<std::size_t>(sample.size(), (2 * k + step - 1) / step);
    std::nth_element(sample.begin(), sample.begin() + static_cast<std::ptrdiff_t>(rank - 1), sample.end(),
                     std::greater<float>());
    const float floor = sample[rank - 1];
    if (floor > thresh) {
      for (std::int64_t i = 0; i < n; ++i) {
        if (level[i] >= floor) ranked.push_back(rank_key(level[i], static_cast<std::uint64_t>(i)));
      }
      if (ranked.size() < k) ranked.clear();  // an unlucky sample: the exact way
    }
  }
  if (ranked.empty()) {
    for (std::int64_t i = 0; i < n; ++i) {
      if (level[i] > thresh) ranked.push_back(rank_key(level[i], static_cast<std::uint64_t>(i)));
    }
  }
  if (ranked.size() > k) {
    std::nth_element(ranked.begin(), ranked.begin() + static_cast<std::ptrdiff_t>(k), ranked.end());
    ranked.resize(k);
  }
  std::sort(ranked.begin(), ranked.end());
}

}  // namespace

std::vector<std::size_t> batched_nms(const std::vector<std::array<float, 4>>& boxes, const std::vector<float>& scores,
                                     const std::vector<int>& classes, float iou_thresh, std::size_t max_keep) {
  const std::size_t n = scores.size();
  if (boxes.size() != n || classes.size() != n) {
    throw Error(ErrorCode::kInvalidArgument, "batched_nms: boxes, scores and classes differ in length");
  }
  for (float s : scores) {
    if (std::isnan(s)) throw Error(ErrorCode::kInvalidArgument, "batched_nms: a score is NaN");
  }
  std::vector<std::size_t> kept;
  if (max_keep == 0) return kept;
  // Greedy NMS per class, all classes in one pass: candidates by descending score (equal scores by index, the
  // graph's TopK order and the Python runtime's), each kept unless a box kept before it in its class suppresses
  // it. That is the merged output of per-class greedy NMS, so the pass stops at max_keep boxes.
  if (n > kIndexMask) throw Error(ErrorCode::kInvalidArgument, "batched_nms: more than 2^32 - 1 candidates");
  std::vector<std::uint64_t> order(n);
  for (std::size_t i = 0; i < n; ++i) order[i] = rank_key(scores[i], i);
  std::sort(order.begin(), order.end());
  std::vector<int> ids(classes);  // class ids as 0 .. G-1
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  std::vector<std::vector<std::array<float, 4>>> kept_boxes(ids.size());
  for (std::uint64_t key : order) {
    const std::size_t i = static_cast<std::size_t>(key & kIndexMask);
    const std::size_t group =
        static_cast<std::size_t>(std::lower_bound(ids.begin(), ids.end(), classes[i]) - ids.begin());
    std::vector<std::array<float, 4>>& same_class = kept_boxes[group];
    auto suppresses_i = [&](const std::array<float, 4>& k) { return suppresses(k, boxes[i], iou_thresh); };
    if (std::any_of(same_class.begin(), same_class.end(), suppresses_i)) continue;
    kept.push_back(i);
    if (kept.size() == max_keep) break;
    same_class.push_back(boxes[i]);
  }
  return kept;
}

InputDetections detections_from_dense(const float* boxes, const float* scores, std::int64_t num_anchors,
                                      int num_classes, const std::vector<std::int64_t>& level_sizes,
                                      const NmsSettings& nms) {
  std::int64_t total = 0;
  for (std::int64_t s : level_sizes) {
    if (s < 0) throw Error(ErrorCode::kModelFile, "anchors_per_level holds a negative size " + std::to_string(s));
    total += s;
  }
  if (total != num_anchors) {
    throw Error(ErrorCode::kModelFile, "anchors_per_level sums to " + std::to_string(total) +
                                           ", the dense outputs have " + std::to_string(num_anchors) + " anchors");
  }
  std::vector<std::array<float, 4>> cand_boxes;
  std::vector<float> cand_scores;
  std::vector<int> cand_classes;
  std::int64_t start = 0;
  std::vector<std::uint64_t> ranked;
  std::vector<float> sample;
  for (std::int64_t size : level_sizes) {
    const float* level = scores + start * num_classes;
    const std::int64_t n = size * num_classes;
    if (static_cast<std::uint64_t>(n) > kIndexMask) {
      throw Error(ErrorCode::kModelFile, "a level holds more than 2^32 - 1 (anchor, class) pairs");
    }
    top_pairs(level, n, static_cast<std::size_t>(std::clamp<std::int64_t>(nms.topk_per_level, 0, n)),
              nms.score_thresh, ranked, sample);
    for (std::uint64_t key : ranked) {
      const std::int64_t i = static_cast<std::int64_t>(key & kIndexMask);
      const std::int64_t anchor = start + i / num_classes;
      const float* b = boxes + anchor * 4;
      cand_boxes.push_back({b[0], b[1], b[2], b[3]});
      cand_scores.push_back(level[i]);
      cand_classes.push_back(static_cast<int>(i % num_classes));
    }
    start += size;
  }
  InputDetections out;
  for (std::size_t i : batched_nms(cand_boxes, cand_scores, cand_classes, nms.iou_thresh,
                                   static_cast<std::size_t>(std::max(nms.max_dets, 0)))) {
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

// retina_deploy.runtime.post._native: the C++ library's host post-processing (src/postprocess.cpp) for the Python
// runtime, which calls it through runtime/post/native.py (shapes and dtypes are checked there, sizes again here).
// Arrays come in and go out through the buffer protocol: no numpy headers, and the GIL is released while it runs.
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <new>
#include <string>
#include <vector>

#include "retina/postprocess.hpp"

namespace {

// The Py_buffers of one call, released on every path out (PyArg_ParseTuple releases its own on failure, and
// PyBuffer_Release clears obj: none is released twice).
class Buffers {
 public:
  Buffers() = default;
  Buffers(const Buffers&) = delete;
  Buffers& operator=(const Buffers&) = delete;
  ~Buffers() {
    for (Py_buffer& b : views_) {
      if (b.obj != nullptr) PyBuffer_Release(&b);
    }
  }
  Py_buffer* next() { return &views_.at(used_++); }

 private:
  std::array<Py_buffer, 8> views_{};  // zeroed: obj == nullptr until a buffer is taken
  std::size_t used_ = 0;
};

static_assert(sizeof(std::array<float, 4>) == 4 * sizeof(float), "boxes are copied as packed float32 quadruples");

bool check_size(const Py_buffer& b, std::int64_t items, std::size_t item_size, const char* name) {
  if (b.len != static_cast<Py_ssize_t>(items * static_cast<std::int64_t>(item_size))) {
    PyErr_Format(PyExc_ValueError, "%s: %zd bytes, expected %lld", name, b.len,
                 static_cast<long long>(items * static_cast<std::int64_t>(item_size)));
    return false;
  }
  return true;
}

// Sets the Python exception for a C++ one escaping the library.
void set_error(const std::exception& e) {
  if (dynamic_cast<const std::bad_alloc*>(&e) != nullptr) {
    PyErr_NoMemory();
  } else {
    PyErr_SetString(PyExc_ValueError, e.what());
  }
}

// detections_from_dense(boxes, scores, level_sizes, batch, anchors, classes, topk, score_thresh, iou_thresh,
//                       max_dets, num_dets, out_boxes, out_scores, out_classes)
// boxes float32 [B, N, 4], scores float32 [B, N, C], level_sizes int64 [L] (C-contiguous buffers); the outputs are
// zeroed writable buffers num_dets int32 [B], out_boxes float32 [B, K, 4], out_scores float32 [B, K], out_classes
// int32 [B, K], with K = max_dets. Fills each image's first num_dets rows.
PyObject* detections_from_dense(PyObject*, PyObject* args) {
  Buffers buffers;
  Py_buffer *boxes = buffers.next(), *scores = buffers.next(), *levels = buffers.next();
  Py_buffer *num_dets = buffers.next(), *out_boxes = buffers.next(), *out_scores = buffers.next(),
            *out_classes = buffers.next();
  long long batch = 0, anchors = 0;
  int classes = 0, topk = 0, max_dets = 0;
  float score_thresh = 0.0f, iou_thresh = 0.0f;
  if (!PyArg_ParseTuple(args, "y*y*y*LLiiffiw*w*w*w*", boxes, scores, levels, &batch, &anchors, &classes, &topk,
                        &score_thresh, &iou_thresh, &max_dets, num_dets, out_boxes, out_scores, out_classes)) {
    return nullptr;
  }
  if (batch < 0 || anchors < 0 || classes < 1 || topk < 0 || max_dets < 0) {
    PyErr_SetString(PyExc_ValueError, "batch, anchors, topk and max_dets must be >= 0, classes >= 1");
    return nullptr;
  }
  if (levels->len % static_cast<Py_ssize_t>(sizeof(std::int64_t)) != 0) {
    PyErr_SetString(PyExc_ValueError, "level_sizes: not a whole number of int64");
    return nullptr;
  }
  const std::int64_t k = max_dets;
  if (!check_size(*boxes, batch * anchors * 4, sizeof(float), "boxes") ||
      !check_size(*scores, batch * anchors * classes, sizeof(float), "scores") ||
      !check_size(*num_dets, batch, sizeof(std::int32_t), "num_dets") ||
      !check_size(*out_boxes, batch * k * 4, sizeof(float), "out_boxes") ||
      !check_size(*out_scores, batch * k, sizeof(float), "out_scores") ||
      !check_size(*out_classes, batch * k, sizeof(std::int32_t), "out_classes")) {
    return nullptr;
  }
  std::vector<std::int64_t> level_sizes(static_cast<std::size_t>(levels->len) / sizeof(std::int64_t));
  std::memcpy(level_sizes.data(), levels->buf, static_cast<std::size_t>(levels->len));
  retina::NmsSettings nms;
  nms.mode = "none";
  nms.max_dets = max_dets;
  nms.score_thresh = score_thresh;
  nms.iou_thresh = iou_thresh;
  nms.topk_per_level = topk;

  std::string error;
  bool no_memory = false;
  Py_BEGIN_ALLOW_THREADS;
  try {
    const auto* in_boxes = static_cast<const float*>(boxes->buf);
    const auto* in_scores = static_cast<const float*>(scores->buf);
    for (long long i = 0; i < batch; ++i) {
      const retina::InputDetections d = retina::detections_from_dense(
          in_boxes + i * anchors * 4, in_scores + i * anchors * classes, anchors, classes, level_sizes, nms);
      const std::size_t n = d.scores.size();
      static_cast<std::int32_t*>(num_dets->buf)[i] = static_cast<std::int32_t>(n);
      float* row_boxes = static_cast<float*>(out_boxes->buf) + i * k * 4;
      float* row_scores = static_cast<float*>(out_scores->buf) + i * k;
      std::int32_t* row_classes = static_cast<std::int32_t*>(out_classes->buf) + i * k;
      for (std::size_t j = 0; j < n; ++j) {
        std::copy(d.boxes[j].begin(), d.boxes[j].end(), row_boxes + 4 * j);
        row_scores[j] = d.scores[j];
        row_classes[j] = d.classes[j];
      }
    }
  } catch (const std::bad_alloc&) {
    no_memory = true;
  } catch (const std::exception& e) {
    error = e.what();
  }
  Py_END_ALLOW_THREADS;
  if (no_memory) return PyErr_NoMemory();
  if (!error.empty()) {
    PyErr_SetString(PyExc_ValueError, error.c_str());
    return nullptr;
  }
  Py_RETURN_NONE;
}

// batched_nms(boxes, scores, classes, iou_thresh, max_keep, out) -> count
// boxes float32 [M, 4], scores float32 [M], classes int32 [M]; out int64 [M] receives the kept indices.
PyObject* batched_nms(PyObject*, PyObject* args) {
  Buffers buffers;
  Py_buffer *boxes = buffers.next(), *scores = buffers.next(), *classes = buffers.next(), *out = buffers.next();
  float iou_thresh = 0.0f;
  Py_ssize_t max_keep = 0;
  if (!PyArg_ParseTuple(args, "y*y*y*fnw*", boxes, scores, classes, &iou_thresh, &max_keep, out)) return nullptr;
  const std::int64_t m = static_cast<std::int64_t>(scores->len / sizeof(float));
  if (!check_size(*scores, m, sizeof(float), "scores") || !check_size(*boxes, m * 4, sizeof(float), "boxes") ||
      !check_size(*classes, m, sizeof(std::int32_t), "classes") || !check_size(*out, m, sizeof(std::int64_t), "out")) {
    return nullptr;
  }
  std::vector<std::array<float, 4>> box_list(static_cast<std::size_t>(m));
  std::memcpy(box_list.data(), boxes->buf, static_cast<std::size_t>(boxes->len));
  const auto* s = static_cast<const float*>(scores->buf);
  const auto* c = static_cast<const std::int32_t*>(classes->buf);
  std::vector<float> score_list(s, s + m);
  std::vector<int> class_list(c, c + m);
  std::vector<std::size_t> kept;
  try {
    kept = retina::batched_nms(box_list, score_list, class_list, iou_thresh,
                               static_cast<std::size_t>(std::max<Py_ssize_t>(max_keep, 0)));
  } catch (const std::exception& e) {
    set_error(e);
    return nullptr;
  }
  std::copy(kept.begin(), kept.end(), static_cast<std::int64_t*>(out->buf));
  return PyLong_FromSize_t(kept.size());
}

PyMethodDef methods[] = {
    {"detections_from_dense", detections_from_dense, METH_VARARGS,
     "Per-level top-k, score threshold and class-aware greedy NMS of dense outputs, into zeroed buffers."},
    {"batched_nms", batched_nms, METH_VARARGS, "Class-aware greedy NMS; writes the kept indices, returns their count."},
    {nullptr, nullptr, 0, nullptr},
};

PyModuleDef module = {PyModuleDef_HEAD_INIT, "_native", "The C++ host post-processing (runtime/cpp).", -1, methods};

}  // namespace

PyMODINIT_FUNC PyInit__native(void) { return PyModule_Create(&module); }

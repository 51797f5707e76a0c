/* C API of the retina runtime, for other languages. No C++ exception crosses it: every function returns a
 * retina_status, and on failure retina_last_error() gives this thread's message until its next failing call. */
#ifndef RETINA_RETINA_H
#define RETINA_RETINA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum retina_status {
  RETINA_OK = 0,
  RETINA_ERR_INVALID_ARGUMENT = 1, /* null pointer, bad option */
  RETINA_ERR_IMAGE = 2,            /* zero-size image, stride smaller than a row, too many pixels */
  RETINA_ERR_MODEL_FILE = 3,       /* missing / tampered engine, bad manifest */
  RETINA_ERR_UNAVAILABLE = 4,      /* no TensorRT in this build, no GPU, version mismatch */
  RETINA_ERR_BACKEND = 5,          /* inference failed */
  RETINA_ERR_QUEUE_FULL = 6,       /* batching queue full: retry later */
  RETINA_ERR_CLOSED = 7,           /* batching queue closed */
  RETINA_ERR_INTERNAL = 8
} retina_status;

typedef enum retina_channel_order { RETINA_RGB = 0, RETINA_BGR = 1 } retina_channel_order;

/* A borrowed HWC uint8 image, 3 channels; row_stride in bytes (>= 3 * width). */
typedef struct retina_image {
  const uint8_t* data;
  int32_t width;
  int32_t height;
  size_t row_stride;
  int32_t order; /* a retina_channel_order (an int: any value from a foreign caller is checked, not trusted) */
} retina_image;

typedef struct retina_detection {
  float box[4]; /* x1, y1, x2, y2 in the original image's pixels */
  float score;
  int32_t class_id;
  const char* class_name; /* owned by the result */
} retina_detection;

/* Detections of `num_images` images; image i has counts[i] detections starting at offsets[i]. */
typedef struct retina_result {
  size_t num_images;
  const size_t* counts;
  const size_t* offsets;
  const retina_detection* detections;
  void* internal; /* owned by the library */
} retina_result;

typedef struct retina_options {
  int32_t device;        /* CUDA device index */
  int32_t cuda_graphs;   /* non-zero: capture one CUDA graph per batch size */
  int64_t max_pixels;    /* largest accepted image (width * height); <= 0: 64,000,000 */
} retina_options;

typedef struct retina_detector retina_detector;
typedef struct retina_batcher retina_batcher;

/* A host tensor a custom backend returns; data stays valid until the callback's next call. */
typedef enum retina_dtype { RETINA_FLOAT32 = 0, RETINA_INT32 = 1 } retina_dtype;
typedef struct retina_tensor {
  const char* name; /* "boxes", "scores" (--nms none) or "num_dets", "boxes", "scores", "classes" */
  int32_t dtype; /* a retina_dtype */
  int32_t ndim;
  int64_t shape[4];
  const void* data;
} retina_tensor;

/* Runs input float32 [batch, 3, height, width]; fills outputs[0 .. *num_outputs) (capacity on entry: 4) and
 * sets *num_outputs. Returns 0 on success. */
typedef int (*retina_infer_fn)(void* user, const float* input, int32_t batch, int32_t height, int32_t width,
                               retina_tensor* outputs, int32_t* num_outputs);

/* Opens ENGINE_PATH after checking "<ENGINE_PATH>.json" (sha256, TensorRT version, GPU). options may be NULL. */
retina_status retina_detector_create(const char* engine_path, const retina_options* options, retina_detector** out);

/* A detector whose inference is `infer` (e.g. another runtime); the manifest file gives classes, preprocessing,
 * post-processing and batch range (no engine is read). */
retina_status retina_detector_create_custom(const char* manifest_path, retina_infer_fn infer, void* user,
                                            const retina_options* options, retina_detector** out);

/* Detections of `num_images` images; free *out with retina_detector_result_free. */
retina_status retina_detector_detect(retina_detector* detector, const retina_image* images, size_t num_images,
                                     retina_result** out);

void retina_detector_result_free(retina_result* result);
void retina_detector_destroy(retina_detector* detector);

/* Dynamic batching over a detector (which must outlive it). max_batch 0: the detector's maximum. */
retina_status retina_batcher_create(retina_detector* detector, int32_t max_batch, double max_delay_ms,
                                    int32_t max_queue, retina_batcher** out);
/* Blocks until the image's detections are ready; RETINA_ERR_QUEUE_FULL / RETINA_ERR_CLOSED at once when refused. */
retina_status retina_batcher_detect(retina_batcher* batcher, const retina_image* image, retina_result** out);
/* Requests waiting in the queue (not counting the batch being run). */
retina_status retina_batcher_queued(const retina_batcher* batcher, size_t* out);
/* Refuses new requests and finishes the accepted ones. */
retina_status retina_batcher_close(retina_batcher* batcher);
void retina_batcher_destroy(retina_batcher* batcher);

/* This thread's last error message ("" if none). */
const char* retina_last_error(void);
/* The library version, e.g. "0.1.0"; whether it was built with the TensorRT backend. */
const char* retina_version(void);
int retina_has_tensorrt(void);

#ifdef __cplusplus
}
#endif

#endif /* RETINA_RETINA_H */

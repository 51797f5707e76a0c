/* The C API from C: every bad input returns a status and a message, never a crash. argv[1]: a scratch folder. */
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "retina/retina.h"

static int failures = 0;

#define EXPECT(cond)                                               \
  do {                                                             \
    if (!(cond)) {                                                 \
      fprintf(stderr, "%s:%d: FAILED %s\n", __FILE__, __LINE__, #cond); \
      ++failures;                                                  \
    }                                                              \
  } while (0)

/* status == expected and the thread's last error contains `text` */
#define EXPECT_ERROR(call, expected, text)                                                          \
  do {                                                                                              \
    retina_status s_ = (call);                                                                      \
    if (s_ != (expected) || strstr(retina_last_error(), (text)) == NULL) {                          \
      fprintf(stderr, "%s:%d: FAILED %s -> %d '%s'\n", __FILE__, __LINE__, #call, (int)s_, retina_last_error()); \
      ++failures;                                                                                   \
    }                                                                                               \
  } while (0)

static const char* MANIFEST =
    "{\"format\": \"retina-deploy/engine-manifest\", \"format_version\": 1, \"engine_sha256\": \"%s\","
    " \"flavour\": \"tensorrt\", \"trt_version\": \"10.13.0\", \"precision\": \"fp32\", \"batch_range\": [1, 1, 2],"
    " \"input_size\": [128, 128], \"onnx_sha256\": \"" "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" "\","
    " \"class_names\": [\"cat\", \"dog\"], \"preprocess\": {\"size\": [128, 128], \"mean\": [0.5, 0.5, 0.5],"
    " \"std\": [0.25, 0.25, 0.25], \"channel_order\": \"rgb\"}, \"postprocess\": {\"nms\": {\"mode\": \"onnx\","
    " \"max_dets\": 3, \"score_thresh\": 0.05, \"iou_thresh\": 0.5, \"topk_per_level\": 10},"
    " \"anchors_per_level\": [1]}%s}";

static void write_file(const char* path, const char* text) {
  FILE* f = fopen(path, "wb");
  if (f == NULL) {
    perror(path);
    exit(2);
  }
  fputs(text, f);
  fclose(f);
}

static void write_manifest(const char* path, const char* sha, const char* tail) {
  char text[4096];
  snprintf(text, sizeof text, MANIFEST, sha, tail);
  write_file(path, text);
}

/* A backend with NMS outputs: one "dog" box per image; blocks while `gate` is closed. */
typedef struct {
  pthread_mutex_t mutex;
  pthread_cond_t cond;
  int open, entered, fail;
  int32_t num[2];
  float boxes[2 * 3 * 4], scores[2 * 3];
  int32_t classes[2 * 3];
} fake_backend;

static int fake_infer(void* user, const float* input, int32_t batch, int32_t height, int32_t width,
                      retina_tensor* out, int32_t* num_outputs) {
  fake_backend* f = (fake_backend*)user;
  (void)input;
  if (height != 128 || width != 128 || batch < 1 || batch > 2 || *num_outputs < 4) return 1;
  pthread_mutex_lock(&f->mutex);
  ++f->entered;
  pthread_cond_broadcast(&f->cond);
  while (!f->open) pthread_cond_wait(&f->cond, &f->mutex);
  pthread_mutex_unlock(&f->mutex);
  if (f->fail) return 1;
  retina_tensor t[4] = {{"num_dets", RETINA_INT32, 2, {batch, 1}, f->num},
                        {"boxes", RETINA_FLOAT32, 3, {batch, 3, 4}, f->boxes},
                        {"scores", RETINA_FLOAT32, 2, {batch, 3}, f->scores},
                        {"classes", RETINA_INT32, 2, {batch, 3}, f->classes}};
  memcpy(out, t, sizeof t);
  *num_outputs = 4;
  return 0;
}

static void set_open(fake_backend* f, int open) {
  pthread_mutex_lock(&f->mutex);
  f->open = open;
  pthread_cond_broadcast(&f->cond);
  pthread_mutex_unlock(&f->mutex);
}

typedef struct {
  retina_batcher* batcher;
  const retina_image* image;
  retina_status status;
  size_t count;
} request;

static void* run_request(void* arg) {
  request* r = (request*)arg;
  retina_result* result = NULL;
  r->status = retina_batcher_detect(r->batcher, r->image, &result);
  r->count = result ? result->counts[0] : 0;
  retina_detector_result_free(result);
  return NULL;
}

static void* run_close(void* arg) {
  retina_batcher_close((retina_batcher*)arg);
  return NULL;
}

int main(int argc, char** argv) {
  const char* dir = argc > 1 ? argv[1] : ".";
  char manifest[1024], engine[1024], engine_manifest[1024];
  snprintf(manifest, sizeof manifest, "%s/c_api_model.json", dir);
  snprintf(engine, sizeof engine, "%s/c_api.engine", dir);
  snprintf(engine_manifest, sizeof engine_manifest, "%s/c_api.engine.json", dir);
  const char* zeros = "0000000000000000000000000000000000000000000000000000000000000000";
  write_manifest(manifest, zeros, "");

  fake_backend f;
  memset(&f, 0, sizeof f);
  pthread_mutex_init(&f.mutex, NULL);
  pthread_cond_init(&f.cond, NULL);
  f.open = 1;
  f.num[0] = f.num[1] = 1;
  f.boxes[0] = 10, f.boxes[1] = 20, f.boxes[2] = 200, f.boxes[3] = 60;
  f.boxes[12] = 10, f.boxes[13] = 20, f.boxes[14] = 200, f.boxes[15] = 60;
  f.scores[0] = f.scores[3] = 0.75f;
  f.classes[0] = f.classes[3] = 1;

  /* null pointers */
  retina_detector* det = NULL;
  EXPECT_ERROR(retina_detector_create(NULL, NULL, &det), RETINA_ERR_INVALID_ARGUMENT, "must not be NULL");
  EXPECT_ERROR(retina_detector_create(engine, NULL, NULL), RETINA_ERR_INVALID_ARGUMENT, "must not be NULL");
  EXPECT_ERROR(retina_detector_create_custom(manifest, NULL, &f, NULL, &det), RETINA_ERR_INVALID_ARGUMENT, "NULL");
  EXPECT_ERROR(retina_detector_detect(NULL, NULL, 0, NULL), RETINA_ERR_INVALID_ARGUMENT, "must not be NULL");
  retina_detector_result_free(NULL);
  retina_detector_destroy(NULL);

  /* missing engine file, sha256 mismatch, manifest with a missing or wrong-typed field */
  EXPECT_ERROR(retina_detector_create("/no/such.engine", NULL, &det), RETINA_ERR_MODEL_FILE, "no manifest");
  EXPECT(det == NULL);
  write_file(engine, "not really an engine");
  write_manifest(engine_manifest, zeros, "");
  EXPECT_ERROR(retina_detector_create(engine, NULL, &det), RETINA_ERR_MODEL_FILE, "differs from its manifest's");
  write_manifest(engine_manifest, zeros, ", \"precision\": 16");
  EXPECT_ERROR(retina_detector_create(engine, NULL, &det), RETINA_ERR_MODEL_FILE, "c_api.engine.json");
  write_file(engine_manifest, "{\"format\": \"retina-deploy/engine-manifest\", \"format_version\": 1}");
  EXPECT_ERROR(retina_detector_create(engine, NULL, &det), RETINA_ERR_MODEL_FILE, "missing field 'class_names'");
  write_file(engine_manifest, "[1, 2");
  EXPECT_ERROR(retina_detector_create(engine, NULL, &det), RETINA_ERR_MODEL_FILE, "not valid JSON");
  /* a correct manifest: without TensorRT the build says so; with it, no GPU or a bad engine is an error */
  write_manifest(engine_manifest, "8a54c9d3e3ba1d4a2ed8bf3e44f9fac96c6a7ac49ba3e5d06fff2cfd4f89a1b5", "");
  EXPECT(retina_detector_create(engine, NULL, &det) != RETINA_OK && det == NULL && strlen(retina_last_error()) > 0);

  /* a working custom detector */
  EXPECT(retina_detector_create_custom(manifest, fake_infer, &f, NULL, &det) == RETINA_OK && det != NULL);
  EXPECT(strcmp(retina_last_error(), "") == 0);
  uint8_t* pixels = calloc(64 * 256 * 3, 1);
  retina_image images[3] = {{pixels, 256, 64, 256 * 3, RETINA_RGB},
                            {pixels, 128, 64, 256 * 3, RETINA_BGR},
                            {pixels, 256, 64, 256 * 3, RETINA_RGB}};
  retina_result* result = NULL;
  EXPECT(retina_detector_detect(det, images, 3, &result) == RETINA_OK);
  EXPECT(result && result->num_images == 3 && result->counts[0] == 1 && result->offsets[2] == 2);
  if (result) {
    const retina_detection* d = &result->detections[0];
    /* 64 x 256 -> scale 0.5: box (10, 20, 200, 60) -> (20, 40, 400, 120) clipped to (20, 40, 256, 64) */
    EXPECT(d->box[0] == 20.0f && d->box[1] == 40.0f && d->box[2] == 256.0f && d->box[3] == 64.0f);
    EXPECT(d->class_id == 1 && strcmp(d->class_name, "dog") == 0 && d->score == 0.75f);
  }
  retina_detector_result_free(result);

  /* bad images: zero size, stride smaller than a row, null data, bad channel order */
  retina_image bad = {pixels, 0, 64, 256 * 3, RETINA_RGB};
  EXPECT_ERROR(retina_detector_detect(det, &bad, 1, &result), RETINA_ERR_IMAGE, "is empty");
  EXPECT(result == NULL);
  bad.width = 256, bad.row_stride = 100;
  EXPECT_ERROR(retina_detector_detect(det, &bad, 1, &result), RETINA_ERR_IMAGE, "row stride 100 bytes is smaller");
  bad.row_stride = 768, bad.data = NULL;
  EXPECT_ERROR(retina_detector_detect(det, &bad, 1, &result), RETINA_ERR_IMAGE, "null");
  bad.data = pixels, bad.order = 7;
  EXPECT_ERROR(retina_detector_detect(det, &bad, 1, &result), RETINA_ERR_IMAGE, "channel order");
  EXPECT_ERROR(retina_detector_detect(det, NULL, 2, &result), RETINA_ERR_INVALID_ARGUMENT, "NULL");
  f.fail = 1;
  EXPECT_ERROR(retina_detector_detect(det, images, 1, &result), RETINA_ERR_BACKEND, "infer function failed");
  f.fail = 0;

  /* batching: a full queue, then a closed one; accepted requests all finish */
  retina_batcher* batcher = NULL;
  EXPECT_ERROR(retina_batcher_create(det, 5, 1.0, 4, &batcher), RETINA_ERR_INVALID_ARGUMENT, "max_batch");
  EXPECT(retina_batcher_create(det, 1, 0.0, 1, &batcher) == RETINA_OK);
  set_open(&f, 0);
  f.entered = 0;
  request reqs[2] = {{batcher, &images[0], RETINA_ERR_INTERNAL, 0}, {batcher, &images[0], RETINA_ERR_INTERNAL, 0}};
  pthread_t threads[2];
  pthread_create(&threads[0], NULL, run_request, &reqs[0]);
  pthread_mutex_lock(&f.mutex);
  while (f.entered < 1) pthread_cond_wait(&f.cond, &f.mutex); /* request 0 is inside the backend */
  const int entered = f.entered;
  pthread_mutex_unlock(&f.mutex);
  pthread_create(&threads[1], NULL, run_request, &reqs[1]);
  /* once request 1 waits in the queue, a third is refused (max_queue 1) */
  size_t queued = 0;
  while (retina_batcher_queued(batcher, &queued) == RETINA_OK && queued < 1) sched_yield();
  retina_status s = retina_batcher_detect(batcher, &images[0], &result);
  EXPECT(s == RETINA_ERR_QUEUE_FULL && strstr(retina_last_error(), "max_queue=1") != NULL);
  pthread_t closer;
  pthread_create(&closer, NULL, run_close, batcher);
  for (int tries = 0; tries < 1000000; ++tries) {
    s = retina_batcher_detect(batcher, &images[0], &result);
    if (s == RETINA_ERR_CLOSED) break;
  }
  EXPECT(s == RETINA_ERR_CLOSED && strstr(retina_last_error(), "closed") != NULL);
  set_open(&f, 1);
  pthread_join(closer, NULL);
  for (int i = 0; i < 2; ++i) {
    pthread_join(threads[i], NULL);
    EXPECT(reqs[i].status == RETINA_OK && reqs[i].count == 1);
  }
  EXPECT(entered == 1 && f.entered == 2);
  EXPECT_ERROR(retina_batcher_detect(NULL, &images[0], &result), RETINA_ERR_INVALID_ARGUMENT, "NULL");
  EXPECT_ERROR(retina_batcher_close(NULL), RETINA_ERR_INVALID_ARGUMENT, "NULL");
  EXPECT_ERROR(retina_batcher_queued(NULL, &queued), RETINA_ERR_INVALID_ARGUMENT, "NULL");
  retina_batcher_destroy(batcher);
  retina_detector_destroy(det);
  free(pixels);
  printf("C API: %s (TensorRT backend %s)\n", failures ? "FAILED" : "ok", retina_has_tensorrt() ? "on" : "off");
  return failures ? 1 : 0;
}

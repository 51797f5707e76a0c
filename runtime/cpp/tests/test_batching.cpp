// BatchingDetector: batches form, a full queue refuses at once, close() loses nothing.
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "check.hpp"
#include "retina/batching.hpp"
#include "test_helpers.hpp"

using namespace retina;

namespace {

// A dense backend that holds each run until released, to fill the queue deterministically.
class GatedBackend : public testing_helpers::DenseBackend {
 public:
  std::mutex m;
  std::condition_variable cv;
  bool open = true;
  int entered = 0;

  Outputs run(const float* input, int batch) override {
    std::unique_lock<std::mutex> lock(m);
    ++entered;
    cv.notify_all();
    cv.wait(lock, [&] { return open; });
    return DenseBackend::run(input, batch);
  }
  void set_open(bool value) {
    std::lock_guard<std::mutex> lock(m);
    open = value;
    cv.notify_all();
  }
  void wait_entered(int n) {
    std::unique_lock<std::mutex> lock(m);
    cv.wait(lock, [&] { return entered >= n; });
  }
};

std::unique_ptr<GatedBackend> make_backend() {
  auto b = std::make_unique<GatedBackend>();
  b->boxes_row = {0, 0, 64, 64, 1, 1, 65, 65, 100, 0, 160, 60, 0, 0, 64, 64};
  b->scores_row = {0.9f, 0.1f, 0.8f, 0.35f, 0.3f, 0.6f, 0.2f, 0.7f};
  return b;
}

ModelSpec spec() { return parse_manifest(testing_helpers::manifest_json(std::string(64, 'b'))).spec; }

}  // namespace

TEST(batching_groups_concurrent_requests) {
  auto backend = make_backend();
  GatedBackend* gate = backend.get();
  Detector detector(std::move(backend), spec());
  std::vector<std::uint8_t> px(64 * 128 * 3, 9);
  const ImageView image{px.data(), 128, 64, 128 * 3, ChannelOrder::kRGB};
  const Detections alone = detector.detect({image})[0];
  BatchingDetector batcher(detector, {4, 1000.0, 64});
  std::vector<std::future<Detections>> futures;
  for (int i = 0; i < 8; ++i) futures.push_back(batcher.submit(image));
  for (auto& f : futures) CHECK(f.get().items.size() == alone.items.size());
  CHECK(batcher.images_run() == 8);
  CHECK(batcher.batches_run() == 2);  // 8 requests at max_batch 4, long delay: two full batches
  CHECK(gate->batches.back() == 4);
}

TEST(batching_full_queue_refuses_and_close_finishes_everything) {
  auto backend = make_backend();
  GatedBackend* gate = backend.get();
  Detector detector(std::move(backend), spec());
  std::vector<std::uint8_t> px(64 * 128 * 3, 9);
  const ImageView image{px.data(), 128, 64, 128 * 3, ChannelOrder::kRGB};
  gate->set_open(false);
  BatchingDetector batcher(detector, {1, 0.0, 2});
  std::vector<std::future<Detections>> futures;
  futures.push_back(batcher.submit(image));
  gate->wait_entered(1);  // the worker holds request 0 inside the backend
  futures.push_back(batcher.submit(image));
  futures.push_back(batcher.submit(image));  // queue: 2 waiting = max_queue
  CHECK_THROWS(batcher.submit(image), ErrorCode::kQueueFull, "max_queue=2");
  std::thread closer([&] { batcher.close(); });
  while (!batcher.closed()) std::this_thread::yield();
  CHECK_THROWS(batcher.submit(image), ErrorCode::kClosed, "closed");
  gate->set_open(true);
  closer.join();
  for (auto& f : futures) CHECK(f.get().size() == 3);  // every accepted request finished
  CHECK(batcher.images_run() == 3);
  CHECK_THROWS(BatchingDetector(detector, {9, 1.0, 4}), ErrorCode::kInvalidArgument, "max_batch must be in [1, 4]");
}

TEST(batching_bad_image_fails_only_its_caller) {
  Detector detector(make_backend(), spec());
  BatchingDetector batcher(detector, {});
  CHECK_THROWS(batcher.submit({nullptr, 4, 4, 12, ChannelOrder::kRGB}), ErrorCode::kImage, "null");
  std::vector<std::uint8_t> px(12 * 4, 1);
  CHECK(batcher.detect_one({px.data(), 4, 4, 12, ChannelOrder::kRGB}).size() == 3);
}

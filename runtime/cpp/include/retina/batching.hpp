// BatchingDetector: many threads call detect_one(); one worker runs their images as batches
// (as runtime/batching.py). A batch starts when max_batch images wait or max_delay_ms have passed
// since the oldest arrived. The queue is bounded: a full queue refuses at once (Error kQueueFull).
// close() refuses new requests and finishes every accepted one, so no caller is left waiting.
#pragma once

#include <chrono>
#include <condition_variable>
#include <deque>
#include <future>
#include <mutex>
#include <thread>

#include "retina/detector.hpp"

namespace retina {

struct BatchingOptions {
  int max_batch = 0;          // 0: the detector's maximum batch
  double max_delay_ms = 5.0;  // longest wait of the oldest request for others to join it
  int max_queue = 256;        // most waiting requests (not counting the batch being run)
};

class BatchingDetector {
 public:
  BatchingDetector(Detector& detector, const BatchingOptions& options = {});
  ~BatchingDetector();  // close()
  BatchingDetector(const BatchingDetector&) = delete;
  BatchingDetector& operator=(const BatchingDetector&) = delete;

  // Preprocesses in the calling thread, then queues; Error(kQueueFull / kClosed) at once when refused.
  std::future<Detections> submit(const ImageView& image);
  Detections detect_one(const ImageView& image) { return submit(image).get(); }

  // Refuses new requests, runs every accepted one, stops the worker. Idempotent.
  void close();
  bool closed() const;

  std::size_t queued() const;  // requests waiting (not counting the batch being run)
  std::size_t batches_run() const;
  std::size_t images_run() const;

 private:
  struct Request {
    PreparedImage prepared;
    std::promise<Detections> promise;
    std::chrono::steady_clock::time_point arrived;
  };
  void worker();

  Detector& detector_;
  int max_batch_;
  std::chrono::duration<double, std::milli> max_delay_;
  std::size_t max_queue_;
  mutable std::mutex mutex_;
  std::condition_variable cond_;
  std::deque<Request> pending_;
  bool closed_ = false;
  std::size_t batches_run_ = 0;
  std::size_t images_run_ = 0;
  std::thread thread_;
};

}  // namespace retina

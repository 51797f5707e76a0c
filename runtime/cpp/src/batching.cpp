// BatchingDetector: a bounded queue in front of one Detector, drained by one worker thread.
#include "retina/batching.hpp"

#include <exception>
#include <vector>

namespace retina {

BatchingDetector::BatchingDetector(Detector& detector, const BatchingOptions& options)
    : detector_(detector),
      max_batch_(options.max_batch == 0 ? detector.max_batch() : options.max_batch),
      max_delay_(options.max_delay_ms),
      max_queue_(static_cast<std::size_t>(options.max_queue > 0 ? options.max_queue : 0)) {
  if (max_batch_ < 1 || max_batch_ > detector.max_batch()) {
    throw Error(ErrorCode::kInvalidArgument, "max_batch must be in [1, " + std::to_string(detector.max_batch()) +
                                                 "] (the model's maximum batch), got " + std::to_string(max_batch_));
  }
  if (!(options.max_delay_ms >= 0.0)) throw Error(ErrorCode::kInvalidArgument, "max_delay_ms must be >= 0");
  if (options.max_queue < 1) throw Error(ErrorCode::kInvalidArgument, "max_queue must be >= 1");
  thread_ = std::thread(&BatchingDetector::worker, this);
}

BatchingDetector::~BatchingDetector() { close(); }

std::future<Detections> BatchingDetector::submit(const ImageView& image) {
  {
    std::lock_guard<std::mutex> lock(mutex_);  // refuse early, before spending time on preprocessing
    if (closed_) throw Error(ErrorCode::kClosed, "the BatchingDetector is closed");
  }
  Request request{detector_.prepare(image), {}, std::chrono::steady_clock::now()};
  std::future<Detections> future = request.promise.get_future();
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (closed_) throw Error(ErrorCode::kClosed, "the BatchingDetector is closed");
    if (pending_.size() >= max_queue_) {
      throw Error(ErrorCode::kQueueFull, "the queue holds max_queue=" + std::to_string(max_queue_) +
                                             " requests; retry later");
    }
    pending_.push_back(std::move(request));
  }
  cond_.notify_all();
  return future;
}

void BatchingDetector::worker() {
  for (;;) {
    std::vector<Request> batch;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      cond_.wait(lock, [&] { return closed_ || !pending_.empty(); });
      if (pending_.empty()) return;  // closed and drained
      const auto deadline =
          pending_.front().arrived + std::chrono::duration_cast<std::chrono::steady_clock::duration>(max_delay_);
      cond_.wait_until(lock, deadline,
                       [&] { return closed_ || pending_.size() >= static_cast<std::size_t>(max_batch_); });
      const std::size_t take = std::min(pending_.size(), static_cast<std::size_t>(max_batch_));
      for (std::size_t i = 0; i < take; ++i) {
        batch.push_back(std::move(pending_.front()));
        pending_.pop_front();
      }
    }
    std::vector<const PreparedImage*> prepared;
    for (const Request& r : batch) prepared.push_back(&r.prepared);
    try {
      std::vector<Detections> results = detector_.run_prepared(prepared);
      {
        std::lock_guard<std::mutex> lock(mutex_);  // counted before callers wake: they may read the counts
        batches_run_ += 1;
        images_run_ += batch.size();
      }
      for (std::size_t i = 0; i < batch.size(); ++i) batch[i].promise.set_value(std::move(results[i]));
    } catch (...) {  // every accepted request gets an outcome
      for (Request& r : batch) r.promise.set_exception(std::current_exception());
    }
  }
}

void BatchingDetector::close() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    closed_ = true;
  }
  cond_.notify_all();
  if (thread_.joinable()) thread_.join();
}

bool BatchingDetector::closed() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return closed_;
}

std::size_t BatchingDetector::queued() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return pending_.size();
}

std::size_t BatchingDetector::batches_run() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return batches_run_;
}

std::size_t BatchingDetector::images_run() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return images_run_;
}

}  // namespace retina

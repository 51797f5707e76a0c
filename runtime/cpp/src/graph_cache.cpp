#include "graph_cache.hpp"

#include "retina/types.hpp"

namespace retina::detail {

GraphCache::GraphCache(Execution& execution, bool use_graphs) : execution_(execution), use_graphs_(use_graphs) {
  shared_ = execution_.create_context();
}

GraphCache::~GraphCache() {
  for (auto& [batch, entry] : entries_) {
    if (entry.graph) execution_.destroy_graph(entry.graph);
    if (entry.context) execution_.destroy_context(entry.context);
  }
  execution_.destroy_context(shared_);
}

void GraphCache::run(int batch) {
  if (!use_graphs_) return run_shared(batch);
  auto it = entries_.find(batch);
  if (it == entries_.end()) return capture(batch);
  if (it->second.graph) return execution_.launch(it->second.graph);
  run_shared(batch);  // its capture failed once: no graph for this batch size
}

std::string GraphCache::status(int batch) const {
  auto it = entries_.find(batch);
  if (it == entries_.end()) return "";
  return it->second.graph ? "captured" : "not captured: " + it->second.failure;
}

void GraphCache::run_shared(int batch) {
  if (batch != shared_batch_) {
    if (!execution_.set_batch(shared_, batch)) {
      throw Error(ErrorCode::kBackend, "TensorRT refused input shape batch " + std::to_string(batch));
    }
    shared_batch_ = batch;
  }
  if (!execution_.enqueue(shared_)) throw Error(ErrorCode::kBackend, "TensorRT enqueueV3 failed");
}

// The first run of a batch size: a context of its own, one plain run (TensorRT allocates and picks
// kernels for the shape outside the capture; its outputs are this call's), then the capture. On a
// failed capture the batch runs once more on the shared context, so no half-recorded work is trusted.
void GraphCache::capture(int batch) {
  Entry entry;
  entry.context = execution_.create_context();
  if (!execution_.set_batch(entry.context, batch)) {
    execution_.destroy_context(entry.context);
    throw Error(ErrorCode::kBackend, "TensorRT refused input shape batch " + std::to_string(batch));
  }
  if (!execution_.enqueue(entry.context)) {
    execution_.destroy_context(entry.context);
    throw Error(ErrorCode::kBackend, "TensorRT enqueueV3 failed");
  }
  try {
    execution_.synchronize();
    execution_.begin_capture();
    const bool enqueued = execution_.enqueue(entry.context);
    entry.graph = execution_.end_capture();
    if (!enqueued) entry.failure = "enqueueV3 failed during stream capture";
    if (!entry.graph && entry.failure.empty()) entry.failure = "the stream capture was invalidated";
  } catch (const Error& e) {
    entry.failure = e.what();
  }
  if (!entry.failure.empty()) {
    if (entry.graph) execution_.destroy_graph(entry.graph);
    execution_.destroy_context(entry.context);
    entry.graph = entry.context = nullptr;
    entries_.emplace(batch, std::move(entry));
    run_shared(batch);
    return;
  }
  entries_.emplace(batch, std::move(entry));
}

}  // namespace retina::detail

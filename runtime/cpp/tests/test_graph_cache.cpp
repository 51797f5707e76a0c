// GraphCache over a fake Execution that behaves as CUDA and TensorRT document it: work is queued on the
// stream and runs at synchronize; while capturing, work is recorded instead. enqueueV3 does the context's
// per-shape setup (in the context's own memory) on the host, and the kernels it queues read that memory
// when they run; so a graph replayed after its context was reshaped and enqueued for another batch size
// runs with the other shape's setup: wrong outputs (undefined in TensorRT), counted as stale replays.
// An engine with data-dependent shapes synchronizes inside enqueue, which invalidates a capture.
#include <functional>
#include <memory>
#include <vector>

#include "check.hpp"
#include "graph_cache.hpp"
#include "retina/types.hpp"

namespace {

constexpr int kPerImage = 8;  // output values per image
constexpr int kMaxBatch = 4;

struct FakeContext {
  int batch = -1;     // set by setInputShape
  int prepared = -1;  // the per-shape setup in the context's memory, written by enqueueV3
};

class FakeExecution : public retina::detail::Execution {
 public:
  std::vector<float> input = std::vector<float>(kMaxBatch * kPerImage);   // "device" input
  std::vector<float> output = std::vector<float>(kMaxBatch * kPerImage);  // "device" output
  bool data_dependent = false;
  int contexts_created = 0, contexts_alive = 0, graphs_alive = 0, stale_replays = 0, launches = 0;

  Context create_context() override {
    ++contexts_created;
    ++contexts_alive;
    return new FakeContext;
  }
  void destroy_context(Context c) noexcept override {
    --contexts_alive;
    delete static_cast<FakeContext*>(c);
  }
  bool set_batch(Context c, int batch) override {
    if (batch < 1 || batch > kMaxBatch) return false;
    static_cast<FakeContext*>(c)->batch = batch;
    return true;
  }
  bool enqueue(Context c) override {
    auto* ctx = static_cast<FakeContext*>(c);
    if (capturing_ && data_dependent) {  // reads the output size back: a sync, which breaks the capture
      invalidated_ = true;
      return false;
    }
    const int batch = ctx->batch;  // kernel launch dimensions are fixed at enqueue
    ctx->prepared = batch;
    auto work = [this, ctx, batch] {  // the kernels read the setup from the context's memory when they run
      if (ctx->prepared != batch) ++stale_replays;
      for (int i = 0; i < batch * kPerImage; ++i) output[i] = input[i] * 2.0f + static_cast<float>(ctx->prepared);
    };
    (capturing_ ? recorded_ : queue_).push_back(work);
    return true;
  }
  void synchronize() override {
    if (capturing_) throw retina::Error(retina::ErrorCode::kBackend, "synchronize during capture");
    for (auto& work : queue_) work();
    queue_.clear();
  }
  void begin_capture() override {
    capturing_ = true;
    invalidated_ = false;
    recorded_.clear();
  }
  Graph end_capture() noexcept override {
    capturing_ = false;
    if (invalidated_) return nullptr;
    ++graphs_alive;
    return new std::vector<std::function<void()>>(recorded_);
  }
  void launch(Graph g) override {
    ++launches;
    for (auto& work : *static_cast<std::vector<std::function<void()>>*>(g)) queue_.push_back(work);
  }
  void destroy_graph(Graph g) noexcept override {
    --graphs_alive;
    delete static_cast<std::vector<std::function<void()>>*>(g);
  }

 private:
  bool capturing_ = false, invalidated_ = false;
  std::vector<std::function<void()>> queue_, recorded_;
};

// Runs `batches` through a cache; the outputs of each call.
std::vector<std::vector<float>> outputs_of(FakeExecution& exec, bool graphs, const std::vector<int>& batches) {
  retina::detail::GraphCache cache(exec, graphs);
  std::vector<std::vector<float>> all;
  for (std::size_t call = 0; call < batches.size(); ++call) {
    const int b = batches[call];
    for (int i = 0; i < b * kPerImage; ++i) exec.input[i] = static_cast<float>(call * 100 + i);
    cache.run(b);
    exec.synchronize();
    all.emplace_back(exec.output.begin(), exec.output.begin() + b * kPerImage);
  }
  return all;
}

}  // namespace

TEST(graph_cache_alternating_batches_match_runs_without_graphs) {
  const std::vector<int> batches = {4, 1, 4, 1, 4, 2, 4};
  FakeExecution plain, graphed;
  const auto expected = outputs_of(plain, false, batches);
  const auto got = outputs_of(graphed, true, batches);
  CHECK(got == expected);
  CHECK(graphed.stale_replays == 0);
  CHECK(graphed.launches == 4);                // 4 x3 replays after its capture, 1 x1 after its own
  CHECK(graphed.contexts_created == 1 + 3);    // the shared one, then one per captured batch size (4, 1, 2)
  CHECK(plain.contexts_created == 1);
  CHECK(graphed.contexts_alive == 0 && graphed.graphs_alive == 0);  // all freed with the cache
}

TEST(graph_cache_status_per_batch) {
  FakeExecution exec;
  retina::detail::GraphCache cache(exec, true);
  CHECK(cache.status(4).empty());
  cache.run(4);
  CHECK(cache.status(4) == "captured");
  CHECK(cache.status(1).empty());
  retina::detail::GraphCache off(exec, false);
  off.run(4);
  CHECK(off.status(4).empty());
}

TEST(graph_cache_failed_capture_runs_without_a_graph_and_says_why) {
  const std::vector<int> batches = {4, 1, 4, 1};
  FakeExecution plain, broken;
  broken.data_dependent = true;
  const auto expected = outputs_of(plain, false, batches);
  CHECK(outputs_of(broken, true, batches) == expected);  // never fatal, never a wrong output
  CHECK(broken.launches == 0 && broken.graphs_alive == 0 && broken.contexts_alive == 0);
  CHECK(broken.contexts_created == 1 + 2);  // one capture attempt per batch size, not one per call
  retina::detail::GraphCache cache(broken, true);
  cache.run(2);
  CHECK(cache.status(2) == "not captured: enqueueV3 failed during stream capture");
}

TEST(graph_cache_refused_shape_is_an_error) {
  FakeExecution exec;
  retina::detail::GraphCache cache(exec, true);
  CHECK_THROWS(cache.run(kMaxBatch + 1), retina::ErrorCode::kBackend, "refused input shape batch 5");
  retina::detail::GraphCache off(exec, false);
  CHECK_THROWS(off.run(0), retina::ErrorCode::kBackend, "refused input shape batch 0");
}

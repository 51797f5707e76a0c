// CUDA graphs per batch size, behind a small interface (`Execution`) that TensorRT implements and a
// test fakes. TensorRT's developer guide: a graph replays the work captured with the execution
// context's state at capture time; after setInputShape changed that context, replaying it is
// undefined. So each captured batch size gets an execution context of its own that is never reshaped,
// and batches that are not captured run on a shared context. A capture that fails (enqueueV3 refuses,
// or the stream capture is invalidated, e.g. by a layer with data-dependent shapes) is not an error:
// that batch size runs without a graph from then on, and `status` says why.
#pragma once

#include <map>
#include <string>

namespace retina::detail {

class Execution {
 public:
  using Context = void*;
  using Graph = void*;
  virtual ~Execution() = default;
  // A new execution context with every tensor address bound; throws Error on failure.
  virtual Context create_context() = 0;
  virtual void destroy_context(Context context) noexcept = 0;
  // setInputShape of the image input to [batch, 3, H, W]; false when refused.
  virtual bool set_batch(Context context, int batch) = 0;
  // enqueueV3 on the backend's stream; false when TensorRT refuses.
  virtual bool enqueue(Context context) = 0;
  // Stream operations; each throws Error on a CUDA failure.
  virtual void synchronize() = 0;
  virtual void begin_capture() = 0;
  // Ends the capture and instantiates it; nullptr when the capture was invalidated (never throws).
  virtual Graph end_capture() noexcept = 0;
  virtual void launch(Graph graph) = 0;
  virtual void destroy_graph(Graph graph) noexcept = 0;
};

class GraphCache {
 public:
  // `execution` must outlive the cache. With use_graphs false every batch runs on the shared context.
  GraphCache(Execution& execution, bool use_graphs);
  ~GraphCache();
  GraphCache(const GraphCache&) = delete;
  GraphCache& operator=(const GraphCache&) = delete;

  // Runs `batch` (its input already on the device, its outputs left on the device, work queued on the
  // stream): replays its graph, or captures one the first time, or enqueues on the shared context.
  // Throws Error(kBackend) when TensorRT refuses the shape or the enqueue outside a capture.
  void run(int batch);

  // "" (graphs off, or the batch not run yet), "captured", or "not captured: WHY".
  std::string status(int batch) const;

 private:
  struct Entry {
    Execution::Context context = nullptr;
    Execution::Graph graph = nullptr;
    std::string failure;
  };
  void run_shared(int batch);
  void capture(int batch);

  Execution& execution_;
  bool use_graphs_;
  Execution::Context shared_ = nullptr;
  int shared_batch_ = -1;
  std::map<int, Entry> entries_;
};

}  // namespace retina::detail

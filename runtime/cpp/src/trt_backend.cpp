// The TensorRT backend (TensorRT 10/11 and TensorRT-RTX C++ API): IRuntime -> ICudaEngine -> execution
// contexts on one CUDA stream, pinned host buffers, async copies, enqueueV3, and optionally one CUDA
// graph per batch size, each on a context of its own (graph_cache.hpp).
#include <NvInferRuntime.h>
#include <cuda_runtime_api.h>
#ifdef RETINA_TRT_PLUGINS
#include <NvInferPlugin.h>
#endif

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <set>

#include "backend_factory.hpp"
#include "graph_cache.hpp"

#ifndef RETINA_TRT_FLAVOUR
#define RETINA_TRT_FLAVOUR "tensorrt"
#endif

namespace retina::detail {
namespace {

void check_cuda(cudaError_t status, const char* what) {
  if (status != cudaSuccess) {
    throw Error(ErrorCode::kBackend, std::string(what) + ": " + cudaGetErrorName(status) + " (" +
                                         cudaGetErrorString(status) + ")");
  }
}

class Logger : public nvinfer1::ILogger {
 public:
  void log(Severity severity, const char* message) noexcept override {
    if (severity <= Severity::kWARNING) std::fprintf(stderr, "[TensorRT] %s\n", message);
  }
};

Logger& logger() {
  static Logger instance;
  return instance;
}

std::string library_release() {
  const int v = getInferLibVersion();  // major * 10000 + minor * 100 + patch
  return std::to_string(v / 10000) + "." + std::to_string(v / 100 % 100) + "." + std::to_string(v % 100);
}

struct HostDeviceBuffer {
  void* host = nullptr;  // pinned
  void* device = nullptr;
  std::size_t bytes = 0;
  HostDeviceBuffer() = default;
  HostDeviceBuffer(const HostDeviceBuffer&) = delete;
  HostDeviceBuffer& operator=(const HostDeviceBuffer&) = delete;
  ~HostDeviceBuffer() {
    if (host) cudaFreeHost(host);
    if (device) cudaFree(device);
  }
  void allocate(std::size_t n) {
    bytes = n;
    check_cuda(cudaMallocHost(&host, n), "cudaMallocHost");
    check_cuda(cudaMalloc(&device, n), "cudaMalloc");
  }
};

struct OutputTensor {
  std::string name;
  DataType dtype = DataType::kFloat32;
  std::vector<std::int64_t> dims;  // the engine's, batch first (-1)
  HostDeviceBuffer buffer;
};

// What GraphCache needs, on TensorRT and the CUDA runtime. Every context binds the same device buffers.
class TensorRTExecution : public Execution {
 public:
  TensorRTExecution(nvinfer1::ICudaEngine& engine, cudaStream_t stream, std::string input_name, int height,
                    int width, std::vector<std::pair<std::string, void*>> addresses)
      : engine_(engine), stream_(stream), input_name_(std::move(input_name)), height_(height), width_(width),
        addresses_(std::move(addresses)) {}

  Context create_context() override {
    std::unique_ptr<nvinfer1::IExecutionContext> context(engine_.createExecutionContext());
    if (!context) throw Error(ErrorCode::kBackend, "TensorRT could not create an execution context");
    for (const auto& [name, address] : addresses_) {
      if (!context->setTensorAddress(name.c_str(), address)) {
        throw Error(ErrorCode::kBackend, "TensorRT refused the address of tensor " + name);
      }
    }
    return context.release();
  }
  void destroy_context(Context context) noexcept override { delete static_cast<nvinfer1::IExecutionContext*>(context); }
  bool set_batch(Context context, int batch) override {
    return as_context(context)->setInputShape(input_name_.c_str(), nvinfer1::Dims4{batch, 3, height_, width_});
  }
  bool enqueue(Context context) override { return as_context(context)->enqueueV3(stream_); }
  void synchronize() override { check_cuda(cudaStreamSynchronize(stream_), "cudaStreamSynchronize"); }
  void begin_capture() override {
    check_cuda(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal), "cudaStreamBeginCapture");
  }
  Graph end_capture() noexcept override {
    cudaGraph_t graph = nullptr;
    const cudaError_t ended = cudaStreamEndCapture(stream_, &graph);
    cudaGraphExec_t exec = nullptr;
    const bool ok = ended == cudaSuccess && graph && cudaGraphInstantiate(&exec, graph, 0) == cudaSuccess;
    if (graph) cudaGraphDestroy(graph);
    if (!ok) cudaGetLastError();  // an invalidated capture's error is not sticky: clear it
    return ok ? exec : nullptr;
  }
  void launch(Graph graph) override {
    check_cuda(cudaGraphLaunch(static_cast<cudaGraphExec_t>(graph), stream_), "cudaGraphLaunch");
  }
  void destroy_graph(Graph graph) noexcept override { cudaGraphExecDestroy(static_cast<cudaGraphExec_t>(graph)); }

 private:
  static nvinfer1::IExecutionContext* as_context(Context c) { return static_cast<nvinfer1::IExecutionContext*>(c); }
  nvinfer1::ICudaEngine& engine_;
  cudaStream_t stream_;
  std::string input_name_;
  int height_, width_;
  std::vector<std::pair<std::string, void*>> addresses_;
};

std::size_t element_size(nvinfer1::DataType t) {
  switch (t) {
    case nvinfer1::DataType::kFLOAT:
    case nvinfer1::DataType::kINT32:
      return 4;
    default:
      return 0;
  }
}

class TensorRTBackend : public Backend {
 public:
  TensorRTBackend(const std::vector<char>& engine, const EngineManifest& manifest, const Options& options)
      : spec_(manifest.spec), device_(options.device), cuda_graphs_(options.cuda_graphs) {
    check_cuda(cudaSetDevice(device_), "cudaSetDevice");
#ifdef RETINA_TRT_PLUGINS
    // EfficientNMS_TRT and the other bundled plugins are found only in an initialised registry.
    if (!initLibNvInferPlugins(&logger(), "")) std::fprintf(stderr, "[retina] TensorRT's plugin library did not initialise\n");
#endif
    runtime_.reset(nvinfer1::createInferRuntime(logger()));
    if (!runtime_) throw Error(ErrorCode::kUnavailable, "TensorRT could not create a runtime");
    engine_.reset(runtime_->deserializeCudaEngine(engine.data(), engine.size()));
    if (!engine_) {
      if (std::string(RETINA_TRT_FLAVOUR) == "tensorrt-rtx") {  // it runs on RTX-class GPUs only
        cudaDeviceProp prop{};
        cudaGetDeviceProperties(&prop, device_);
        throw Error(ErrorCode::kModelFile,
                    "TensorRT-RTX could not deserialize the engine on this GPU (compute capability " +
                        std::to_string(prop.major) + "." + std::to_string(prop.minor) +
                        "; see its messages above): TensorRT-RTX 1.7 runs on 7.5, 8.0, 8.6, 8.9 and 12.x only; on "
                        "another GPU build and link regular TensorRT, else rebuild the engine");
      }
      throw Error(ErrorCode::kModelFile, "TensorRT could not deserialize the engine (see its messages above); "
                                         "rebuild it on this machine with `retina-deploy build-engine`");
    }
    std::vector<std::pair<std::string, void*>> addresses = bind_tensors();
    check_cuda(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate");
    try {
      execution_ = std::make_unique<TensorRTExecution>(*engine_, stream_, spec_.input_name, spec_.input_size[0],
                                                       spec_.input_size[1], std::move(addresses));
      cache_ = std::make_unique<GraphCache>(*execution_, cuda_graphs_);
    } catch (...) {
      cudaStreamDestroy(stream_);
      throw;
    }
  }

  ~TensorRTBackend() override {
    cudaSetDevice(device_);
    cache_.reset();  // graphs and contexts go before the engine and the memory they point at
    execution_.reset();
    engine_.reset();
    runtime_.reset();
    if (stream_) cudaStreamDestroy(stream_);
  }

  Outputs run(const float* input, int batch) override {
    if (batch < spec_.batch_range[0] || batch > spec_.batch_range[2]) {
      throw Error(ErrorCode::kInvalidArgument, "batch " + std::to_string(batch) + " outside the engine's profile");
    }
    check_cuda(cudaSetDevice(device_), "cudaSetDevice");  // the current device is per thread (batching worker)
    const int H = spec_.input_size[0], W = spec_.input_size[1];
    const std::size_t input_bytes = static_cast<std::size_t>(batch) * 3 * H * W * sizeof(float);
    std::memcpy(input_.host, input, input_bytes);
    check_cuda(cudaMemcpyAsync(input_.device, input_.host, input_bytes, cudaMemcpyHostToDevice, stream_), "H2D copy");
    cache_->run(batch);
    note_failed_capture(batch);
    Outputs out;
    for (OutputTensor& t : outputs_) {
      TensorView view{t.buffer.host, t.dtype, t.dims};
      view.shape[0] = batch;  // every other dimension is static (checked in bind_tensors)
      std::size_t count = 1;
      for (const std::int64_t d : view.shape) count *= static_cast<std::size_t>(d);
      if (count * 4 > t.buffer.bytes) throw Error(ErrorCode::kBackend, "output " + t.name + " larger than its buffer");
      check_cuda(cudaMemcpyAsync(t.buffer.host, t.buffer.device, count * 4, cudaMemcpyDeviceToHost, stream_),
                 "D2H copy");
      out[t.name] = view;
    }
    check_cuda(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
    return out;
  }

  std::string describe() const override {
    cudaDeviceProp prop{};
    cudaGetDeviceProperties(&prop, device_);
    std::string graphs;
    for (int b = spec_.batch_range[0]; cuda_graphs_ && b <= spec_.batch_range[2]; ++b) {
      const std::string status = cache_->status(b);
      if (!status.empty()) graphs += (graphs.empty() ? "" : ", ") + ("batch " + std::to_string(b) + " " + status);
    }
    return std::string(RETINA_TRT_FLAVOUR) + " " + library_release() + " on " + prop.name +
           (cuda_graphs_ ? " (CUDA graphs" + (graphs.empty() ? "" : ": " + graphs) + ")" : "");
  }

 private:
  // A failed capture is not fatal (that batch size runs without a graph); say so once per batch size.
  void note_failed_capture(int batch) {
    if (!cuda_graphs_ || warned_.count(batch)) return;
    const std::string status = cache_->status(batch);
    if (status.rfind("not captured", 0) == 0) {
      std::fprintf(stderr, "[retina] batch %d runs without a CUDA graph (%s)\n", batch, status.c_str());
      warned_.insert(batch);
    }
  }

  // Allocates a host + device buffer per I/O tensor; returns (name, device address) of each.
  std::vector<std::pair<std::string, void*>> bind_tensors() {
    std::vector<std::pair<std::string, void*>> addresses;
    const int max_batch = spec_.batch_range[2];
    bool found_input = false;
    for (int i = 0; i < engine_->getNbIOTensors(); ++i) {
      const char* name = engine_->getIOTensorName(i);
      const nvinfer1::DataType type = engine_->getTensorDataType(name);
      const nvinfer1::Dims dims = engine_->getTensorShape(name);
      std::size_t count = static_cast<std::size_t>(max_batch);
      for (int d = 1; d < dims.nbDims; ++d) {
        if (dims.d[d] < 0) throw Error(ErrorCode::kModelFile, std::string("tensor ") + name + " has a dynamic non-batch dim");
        count *= static_cast<std::size_t>(dims.d[d]);
      }
      if (element_size(type) != 4) {
        throw Error(ErrorCode::kModelFile, std::string("tensor ") + name + " is neither float32 nor int32");
      }
      if (engine_->getTensorIOMode(name) == nvinfer1::TensorIOMode::kINPUT) {
        if (spec_.input_name != name || type != nvinfer1::DataType::kFLOAT) {
          throw Error(ErrorCode::kModelFile, std::string("unexpected engine input ") + name);
        }
        const nvinfer1::Dims lo = engine_->getProfileShape(name, 0, nvinfer1::OptProfileSelector::kMIN);
        const nvinfer1::Dims hi = engine_->getProfileShape(name, 0, nvinfer1::OptProfileSelector::kMAX);
        if (lo.d[0] > spec_.batch_range[0] || hi.d[0] < max_batch) {
          throw Error(ErrorCode::kModelFile, "the engine's profile does not cover the manifest's batch range");
        }
        input_.allocate(count * 4);
        addresses.emplace_back(name, input_.device);
        found_input = true;
      } else {
        OutputTensor& t = outputs_.emplace_back();
        t.name = name;
        t.dtype = type == nvinfer1::DataType::kINT32 ? DataType::kInt32 : DataType::kFloat32;
        t.dims.assign(dims.d, dims.d + dims.nbDims);
        if (t.dims.empty()) throw Error(ErrorCode::kModelFile, std::string("output ") + name + " has no batch dim");
        t.buffer.allocate(count * 4);
        addresses.emplace_back(name, t.buffer.device);
      }
    }
    if (!found_input) throw Error(ErrorCode::kModelFile, "engine has no input " + spec_.input_name);
    return addresses;
  }

  ModelSpec spec_;
  int device_;
  bool cuda_graphs_;
  std::unique_ptr<nvinfer1::IRuntime> runtime_;
  std::unique_ptr<nvinfer1::ICudaEngine> engine_;
  cudaStream_t stream_ = nullptr;
  HostDeviceBuffer input_;
  std::deque<OutputTensor> outputs_;  // deque: buffers never move
  std::unique_ptr<TensorRTExecution> execution_;
  std::unique_ptr<GraphCache> cache_;
  std::set<int> warned_;
};

// The manifest against the library this runtime links and the GPU it runs on.
void check_compatible(const EngineManifest& m, const Options& options, const std::string& path) {
  std::vector<std::string> problems;
  if (m.flavour != RETINA_TRT_FLAVOUR) {
    problems.push_back("it was built with " + m.flavour + ", this runtime links " RETINA_TRT_FLAVOUR);
  }
  if (release_of(m.trt_version) != library_release()) {
    problems.push_back("it was built with " + m.flavour + " " + m.trt_version + ", installed is " + library_release());
  }
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    throw Error(ErrorCode::kUnavailable, path + ": no CUDA GPU is available to run the engine");
  }
  if (options.device < 0 || options.device >= devices) {
    throw Error(ErrorCode::kInvalidArgument, "device " + std::to_string(options.device) + " does not exist");
  }
  cudaDeviceProp prop{};
  check_cuda(cudaGetDeviceProperties(&prop, options.device), "cudaGetDeviceProperties");
  const std::string capability = std::to_string(prop.major) + "." + std::to_string(prop.minor);
  if (options.check_gpu) {
    bool listed = m.compute_capabilities.empty();
    for (const std::string& c : m.compute_capabilities) listed = listed || c == capability;
    if (!listed) problems.push_back("it was built for another compute capability, this GPU is " + capability);
    if (m.gpu_name && *m.gpu_name != prop.name) {
      problems.push_back("it was built on a " + *m.gpu_name + ", this GPU is a " + prop.name);
    }
  }
  if (!problems.empty()) {
    std::string joined;
    for (const std::string& p : problems) joined += (joined.empty() ? "" : "; ") + p;
    throw Error(ErrorCode::kModelFile, path + ": engine does not match this machine: " + joined +
                                           "; rebuild it here with `retina-deploy build-engine`");
  }
}

}  // namespace

std::unique_ptr<Backend> open_engine(const std::vector<char>& engine, const EngineManifest& manifest,
                                     const Options& options, const std::string& engine_path) {
  check_compatible(manifest, options, engine_path);
  return std::make_unique<TensorRTBackend>(engine, manifest, options);
}

bool has_tensorrt() { return true; }

}  // namespace retina::detail

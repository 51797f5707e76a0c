// open_engine() of a build without TensorRT: the manifest and sha256 were checked; nothing can run the engine.
#include "backend_factory.hpp"

namespace retina::detail {

std::unique_ptr<Backend> open_engine(const std::vector<char>&, const EngineManifest& manifest, const Options&,
                                     const std::string& engine_path) {
  throw Error(ErrorCode::kUnavailable, engine_path + ": this retina_runtime was built without TensorRT (the engine is "
                                           "a " + manifest.flavour + " " + manifest.trt_version +
                                           " engine); rebuild runtime/cpp where CMake finds TensorRT and CUDA");
}

bool has_tensorrt() { return false; }

}  // namespace retina::detail

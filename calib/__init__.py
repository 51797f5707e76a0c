"""retina_deploy.calib: precision stages between the FP32 export and the engine (onnx + onnxruntime, no torch).

Precision lives in the ONNX file (TensorRT 11 builds strongly typed networks only), so ONNX Runtime
measures each precision's accuracy on any machine before a GPU builds the engine.

- ``fp16``: ``write_fp16_onnx(onnx, out)``: body in FP16; inputs, outputs, sigmoid, decode, NMS in FP32.
- ``quantize``: ``quantize_int8(onnx, out, Int8Config)``: calibration, Q/DQ in TensorRT's form, cache,
  and the ``max_map_drop`` accuracy search.
- ``sampler``: ``sample_calibration_images``: a seeded subset of a folder or COCO set, runtime preprocessing.
- ``int8``, ``cache``, ``sensitivity``, ``graph``: the mechanics; ``accuracy``: AP per precision with ONNX Runtime.

Nothing is imported here, so each module loads only what it needs.
"""

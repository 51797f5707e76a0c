"""The one compiled part of the Python package: the C++ host post-processing (runtime/cpp/src/postprocess.cpp) as
``retina_deploy.runtime.post._native``. Optional: where it does not build (no C++17 compiler, no Python headers), the
install goes on and the runtime uses its numpy implementation (runtime/post/host_nms.py), which gives the same
detections. Everything else about the package is in pyproject.toml.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "retina_deploy.runtime.post._native",
            sources=["runtime/cpp/python/host_post_module.cpp", "runtime/cpp/src/postprocess.cpp"],
            include_dirs=["runtime/cpp/include"],
            language="c++",
            # numpy's float32 operations in numpy's order: no fused multiply-add (aarch64 fuses by default).
            extra_compile_args=["-std=c++17", "-O2", "-ffp-contract=off", "-fvisibility=hidden"],
            optional=True,
        )
    ]
)

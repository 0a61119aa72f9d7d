"""
Offline export tooling: ONNX graphs, parity check, TensorRT engines, benchmark.

The node never imports this package (layering core <- export). Library functions take paths
and options and return paths/reports; ``cli.py`` only parses arguments and calls them:

- :func:`procvlm_ros.export.onnx_export.export_onnx`
- :func:`procvlm_ros.export.check.check_export`
- :func:`procvlm_ros.export.trt_build.build_engines`
- :func:`procvlm_ros.export.bench.run_bench`
"""

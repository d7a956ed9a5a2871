# opencl.cmake: builds examples/opencl_engine.c (filled in by the OpenCL interop work).

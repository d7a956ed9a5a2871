# opencl.cmake: builds examples/opencl_engine.c, an application that owns its
# OpenCL context and queue and runs libmha between kernels of its own
# (examples/opencl_engine.cl, read at run time from this source directory
# unless a path is given). Like an engine it links the ICD loader
# (ocl-icd-opencl-dev); where there is none to link, it is not built.
find_package(OpenCL)
if(OpenCL_FOUND)
  add_executable(example-opencl-engine examples/opencl_engine.c)
  target_compile_definitions(example-opencl-engine PRIVATE
      CL_TARGET_OPENCL_VERSION=120
      OPENCL_ENGINE_CL="${CMAKE_CURRENT_LIST_DIR}/opencl_engine.cl")
  target_link_libraries(example-opencl-engine PRIVATE mha OpenCL::OpenCL m)
else()
  message(STATUS "examples: no OpenCL ICD loader to link, no "
                 "example-opencl-engine")
endif()

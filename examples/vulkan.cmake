# vulkan.cmake: builds examples/vulkan_engine.c (filled in by the Vulkan interop work).

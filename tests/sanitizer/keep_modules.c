/* keep_modules.c: linked into test programs of sanitizer builds only. It
 * replaces dlclose with a no-op, so the GPU drivers the Vulkan and OpenCL
 * loaders unload (lavapipe, PoCL, their LLVM) stay mapped until exit. Then
 * LeakSanitizer can name the module that owns a leak, tests/lsan.supp
 * suppresses the drivers' own leaks by name, and a leak in libmha still
 * fails the test instead of hiding among "<unknown module>" reports. */
int dlclose(void *handle);

int dlclose(void *handle)
{
    (void)handle;
    return 0;
}

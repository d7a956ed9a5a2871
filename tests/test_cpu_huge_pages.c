/* test_cpu_huge_pages.c: the CPU backend's huge-page hint for large
 * buffers (backends/cpu/huge_pages.h): which buffers ask, which range they
 * name, and that a CPU device buffer of 8 MiB is huge-page aligned and
 * marked for THP (the "hg" flag of its mapping in /proc/self/smaps, set by
 * madvise whatever pages the kernel then finds). */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "huge_pages.h"
#include "mha.h"

#define MIB ((size_t)1 << 20)

Test(huge_pages, alignment_from_the_threshold_on)
{
    cr_assert_eq(mha_cpu_buffer_align(0), 64);
    cr_assert_eq(mha_cpu_buffer_align(MHA_CPU_HUGE_MIN - 1), 64);
    cr_assert_eq(mha_cpu_buffer_align(MHA_CPU_HUGE_MIN), 2 * MIB);
    cr_assert_eq(mha_cpu_buffer_align(1024 * MIB), 2 * MIB);
}

Test(huge_pages, span_is_the_whole_huge_pages_inside)
{
    uintptr_t start = 0, base = (uintptr_t)64 << 30; /* 2 MiB aligned */
    /* aligned: every whole 2 MiB page, not the 1 MiB tail */
    cr_assert_eq(mha_cpu_huge_span(base, 9 * MIB, &start), 8 * MIB);
    cr_assert_eq(start, base);
    /* unaligned: from the next boundary to the last one before the end */
    cr_assert_eq(mha_cpu_huge_span(base + 4096, 8 * MIB, &start), 6 * MIB);
    cr_assert_eq(start, base + 2 * MIB);
    cr_assert_eq(mha_cpu_huge_span(base + 4096, 10 * MIB - 4096, &start),
                 8 * MIB);
    /* exactly at the threshold, and one byte below it */
    cr_assert_eq(mha_cpu_huge_span(base, MHA_CPU_HUGE_MIN, &start),
                 MHA_CPU_HUGE_MIN);
    cr_assert_eq(mha_cpu_huge_span(base, MHA_CPU_HUGE_MIN - 1, &start), 0);
}

/* The VmFlags line of the mapping holding address a ("" when none). */
static void vm_flags_of(uintptr_t a, char *flags, size_t n)
{
    FILE *f = fopen("/proc/self/smaps", "r");
    char line[512];
    int inside = 0;
    flags[0] = '\0';
    while (f && fgets(line, sizeof line, f)) {
        unsigned long lo, hi;
        if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2 && strchr(line, '-') &&
            line[strspn(line, "0123456789abcdef")] == '-')
            inside = a >= lo && a < hi;
        else if (inside && strncmp(line, "VmFlags:", 8) == 0) {
            size_t len = strcspn(line + 8, "\n");
            len = len < n - 1 ? len : n - 1;
            memcpy(flags, line + 8, len);
            flags[len] = '\0';
            break;
        }
    }
    if (f)
        fclose(f);
}

/* THP is built into this kernel and not switched off. */
static int thp_available(void)
{
    FILE *f = fopen("/sys/kernel/mm/transparent_hugepage/enabled", "r");
    char mode[128] = "";
    if (!f)
        return 0;
    if (!fgets(mode, sizeof mode, f))
        mode[0] = '\0';
    fclose(f);
    return strstr(mode, "[never]") == NULL && mode[0] != '\0';
}

typedef struct biggest {
    void *raw;
    size_t size;
} biggest;

static void *note_malloc(void *user, size_t size)
{
    biggest *b = user;
    void *p = malloc(size);
    if (p && size > b->size)
        b->raw = p, b->size = size;
    return p;
}

static void note_free(void *user, void *ptr)
{
    (void)user;
    free(ptr);
}

Test(huge_pages, large_cpu_buffer_is_aligned_and_marked)
{
    if (!thp_available())
        cr_skip_test("no transparent huge pages on this system");
    biggest b = {NULL, 0};
    mha_allocator alloc = {0};
    alloc.malloc = note_malloc;
    alloc.free = note_free;
    alloc.user = &b;
    mha_context_options co;
    mha_context_options_init(&co);
    co.allocator = &alloc;
    mha_context *ctx = NULL;
    mha_device *dev = NULL;
    mha_tensor *t = NULL;
    const int64_t shape[1] = {(int64_t)(8 * MIB / 4)};
    cr_assert_eq(mha_context_create(&co, &ctx), MHA_OK);
    cr_assert_eq(mha_device_open(ctx, "cpu", NULL, &dev), MHA_OK);
    cr_assert_eq(mha_tensor_create(dev, MHA_F32, 1, shape, &t), MHA_OK);
    /* the tensor's buffer: the first huge-page boundary past the block's
     * back pointer, marked hg; the bytes before it are not */
    cr_assert_geq(b.size, 8 * MIB + 2 * MIB);
    uintptr_t buf = ((uintptr_t)b.raw + sizeof(void *) + 2 * MIB - 1) &
                    ~(uintptr_t)(2 * MIB - 1);
    char flags[256];
    if (!getenv("MHA_TEST_EMULATED")) { /* see tests/CMakeLists.txt */
        vm_flags_of(buf, flags, sizeof flags);
        cr_expect(strstr(flags, " hg") != NULL, "buffer's VmFlags:%s", flags);
        vm_flags_of(buf - 1, flags, sizeof flags);
        cr_expect(strstr(flags, " hg") == NULL, "padding's VmFlags:%s",
                  flags);
    }
    mha_tensor_destroy(t);
    mha_device_destroy(dev);
    mha_context_destroy(ctx);
}

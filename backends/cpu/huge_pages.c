/* huge_pages.c: the transparent-huge-page hint of huge_pages.h. */
#include "huge_pages.h"

#if defined(__linux__)
#include <sys/mman.h>
#endif

size_t mha_cpu_buffer_align(size_t size)
{
    return size >= MHA_CPU_HUGE_MIN ? MHA_CPU_HUGE_PAGE : MHA_CPU_BUFFER_ALIGN;
}

size_t mha_cpu_huge_span(uintptr_t p, size_t size, uintptr_t *start)
{
    const uintptr_t mask = (uintptr_t)MHA_CPU_HUGE_PAGE - 1;
    uintptr_t first = (p + mask) & ~mask, end = (p + size) & ~mask;
    *start = first;
    if (size < MHA_CPU_HUGE_MIN || end <= first)
        return 0;
    return (size_t)(end - first);
}

void mha_cpu_advise_huge(void *p, size_t size)
{
    uintptr_t start;
    size_t len = mha_cpu_huge_span((uintptr_t)p, size, &start);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (len > 0)
        (void)madvise((void *)start, len, MADV_HUGEPAGE);
#else
    (void)len;
#endif
}

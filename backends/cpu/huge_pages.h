/* huge_pages.h: where the CPU backend's large buffers (a KV cache, big
 * weights) ask for transparent huge pages. A decode step streams each
 * layer's K and V from memory; through 4 KiB pages that is a TLB walk every
 * 4 KiB, and Linux's default THP mode (`madvise`) gives 2 MiB pages only to
 * ranges that ask. mha-bench allocates its KV caches and its STREAM arrays
 * the same way, so its bandwidth bound and the decode it bounds read the
 * same kind of memory. */
#ifndef MHA_CPU_HUGE_PAGES_H
#define MHA_CPU_HUGE_PAGES_H

#include <stddef.h>
#include <stdint.h>

#define MHA_CPU_HUGE_PAGE ((size_t)2 << 20) /* x86-64 and AArch64 4K-granule THP */
#define MHA_CPU_HUGE_MIN ((size_t)4 << 20)  /* buffers from here on ask */
#define MHA_CPU_BUFFER_ALIGN ((size_t)64)   /* the rest: a cache line, so full-
                                               width SIMD loads never split */

/* The alignment of a buffer of size bytes: a huge page from
 * MHA_CPU_HUGE_MIN on (the padding before it is address space, never
 * touched), else a cache line. */
size_t mha_cpu_buffer_align(size_t size);

/* The whole huge pages inside [p, p + size) of a buffer that asks (size at
 * least MHA_CPU_HUGE_MIN): their length in bytes, the first at *start; 0
 * for a smaller buffer or one that holds no whole huge page. */
size_t mha_cpu_huge_span(uintptr_t p, size_t size, uintptr_t *start);

/* Asks the kernel to back those pages with huge pages (Linux
 * madvise(MADV_HUGEPAGE); before the pages are first written, so they are
 * faulted in huge). A hint: nothing where the system has no THP, on other
 * systems, or on failure; the memory's contents and ownership stay as
 * they are. */
void mha_cpu_advise_huge(void *p, size_t size);

#endif

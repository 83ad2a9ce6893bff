/* Memory for the weights and the KV cache: anonymous mappings asked to be backed by 2 MiB pages.

   A decode step reads every weight (~100 MB for the bundled model) and every running sequence's
   keys and values, scattered over the cache's blocks: with 4 KiB pages that is tens of thousands
   of TLB misses per step, each a page-table walk. With transparent huge pages (Linux, "madvise" or
   "always") a 2 MiB page covers 512 of them. Where the kernel does not give huge pages the memory
   is plain pages, and nothing else changes. */
#define _GNU_SOURCE
#include <stddef.h>
#include <stdint.h>
#include <sys/mman.h>

#define HUGE_PAGE ((size_t)2 << 20)

/* `bytes` of zeroed memory aligned to 2 MiB (NULL when out of memory); pages are only backed
   when first touched. Free with cf_free_pages(p, bytes). */
void *cf_alloc_pages(int64_t bytes) {
    size_t size = ((size_t)bytes + HUGE_PAGE - 1) / HUGE_PAGE * HUGE_PAGE;
    if (size == 0) size = HUGE_PAGE;
    uint8_t *raw = mmap(NULL, size + HUGE_PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED) return NULL;
    uint8_t *p = (uint8_t *)(((uintptr_t)raw + HUGE_PAGE - 1) / HUGE_PAGE * HUGE_PAGE);
    if (p > raw) munmap(raw, (size_t)(p - raw));
    munmap(p + size, (size_t)(raw + size + HUGE_PAGE - p - size));
#ifdef MADV_HUGEPAGE
    madvise(p, size, MADV_HUGEPAGE);
#endif
    return p;
}

void cf_free_pages(void *p, int64_t bytes) {
    if (!p) return;
    size_t size = ((size_t)bytes + HUGE_PAGE - 1) / HUGE_PAGE * HUGE_PAGE;
    munmap(p, size == 0 ? HUGE_PAGE : size);
}

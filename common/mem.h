/* Large buffers (weights, KV caches): anonymous mappings, huge pages where
 * the kernel gives them, every page populated up front by one madvise call.
 * On virtual machines a first-touch page fault is costly (a 1 GiB memset ran
 * at 0.3 GB/s here, against 8 GB/s populated by the kernel). */
#ifndef MS_MEM_H
#define MS_MEM_H

#include <stddef.h>

/* A zero-filled, page-aligned, populated buffer of at least bytes;
 * NULL on failure (errno set by mmap). Free with ms_mem_free(p, bytes). */
void *ms_mem_alloc(size_t bytes);
/* Accepts NULL. bytes must be what was passed to ms_mem_alloc. */
void ms_mem_free(void *p, size_t bytes);

#endif

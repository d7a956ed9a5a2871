/* set_cache.c: descriptor sets for forwards recorded into the application's
 * command buffers (mha_vulkan_layer_record). Such a command buffer may still
 * be pending, or be resubmitted frame after frame, long after libmha resets
 * its per-batch pools, so each distinct set of bindings gets one set of its
 * own, written once and never changed, that every later record with the
 * same bindings reuses: in steady state a record looks sets up in this hash
 * table and creates nothing. The sets live in pools made with
 * FREE_DESCRIPTOR_SET_BIT and are freed when a range they bind goes away
 * (a tensor destroyed: its bytes, unless another live tensor covers the
 * binding; a block of ours or the last wrap of an application buffer: the
 * whole VkBuffer), which the ownership rules of mha_vulkan.h place after
 * the GPU work that used them; that bounds the cache by the live tensors
 * and keeps a recycled VkBuffer handle from matching a stale set. Push descriptors (VK_KHR_push_descriptor) would
 * need no sets at all, but an extension the application may not enable and
 * a second pipeline layout, so a second build of every pipeline. */
#include <string.h>

#include "vk_internal.h"

#define SETS_PER_POOL 64u

/* FNV-1a over the key's bytes (handles and sizes, no padding). */
static uint64_t hash_key(const mha_vk_set_key *k)
{
    const unsigned char *p = (const unsigned char *)k;
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < sizeof *k; ++i)
        h = (h ^ p[i]) * 0x100000001b3ull;
    return h;
}

static int home_slot(const mha_vk_device *d, const mha_vk_set_key *k)
{
    return (int)(hash_key(k) & (uint64_t)(d->set_cap - 1));
}

/* The slot holding k, or the empty slot where it belongs (linear probing;
 * the table is never more than half full). */
static int find_slot(const mha_vk_device *d, const mha_vk_set_key *k)
{
    int i = home_slot(d, k);
    while (d->sets[i].set &&
           memcmp(&d->sets[i].key, k, sizeof *k) != 0)
        i = (i + 1) & (d->set_cap - 1);
    return i;
}

/* Doubles the table (or makes the first one) and reinserts every entry. */
static mha_status grow_table(mha_vk_device *d)
{
    int cap = d->set_cap ? d->set_cap * 2 : 64;
    mha_vk_set_entry *old = d->sets;
    int old_cap = d->set_cap;
    mha_vk_set_entry *t = mha_host_calloc(d->host, (size_t)cap, sizeof *t);
    if (!t)
        return mha_host_error(d->host, MHA_OUT_OF_MEMORY,
                              "vulkan: out of host memory");
    d->sets = t;
    d->set_cap = cap;
    for (int i = 0; i < old_cap; ++i)
        if (old[i].set)
            d->sets[find_slot(d, &old[i].key)] = old[i];
    mha_host_free(d->host, old);
    return MHA_OK;
}

/* A set from the first pool with room (a pool that turns out fragmented
 * counts as full), or from a new pool. */
static mha_status alloc_cached(mha_vk_device *d, VkDescriptorSet *set,
                               int *pool)
{
    mha_vk_desc_pools *pools = &d->set_pools;
    for (int i = 0;; ++i) {
        if (i == pools->count) {
            mha_status s = mha_vk_desc_pools_add(
                d, pools, SETS_PER_POOL,
                VK_DESCRIPTOR_POOL_CREATE_FREE_DESCRIPTOR_SET_BIT);
            if (s != MHA_OK)
                return s;
        }
        if (!pools->at[i].room)
            continue;
        VkDescriptorSetAllocateInfo ai = {
            .sType = VK_STRUCTURE_TYPE_DESCRIPTOR_SET_ALLOCATE_INFO,
            .descriptorPool = pools->at[i].pool,
            .descriptorSetCount = 1,
            .pSetLayouts = &d->set_layout,
        };
        VkResult r = d->vk.vkAllocateDescriptorSets(d->dev, &ai, set);
        if (r == VK_ERROR_FRAGMENTED_POOL ||
            r == VK_ERROR_OUT_OF_POOL_MEMORY) {
            pools->at[i].room = 0;
            continue;
        }
        if (r != VK_SUCCESS)
            return mha_vk_fail(d->host, d, r, "vkAllocateDescriptorSets");
        pools->at[i].room--;
        *pool = i;
        return MHA_OK;
    }
}

mha_status mha_vk_set_cache_get(mha_vk_device *d,
                                const VkDescriptorBufferInfo *info,
                                VkDescriptorSet *set)
{
    mha_vk_set_key k;
    memset(&k, 0, sizeof k);
    for (int i = 0; i < MHA_VK_BINDINGS; ++i) {
        k.buf[i] = info[i].buffer;
        k.offset[i] = info[i].offset;
        k.range[i] = info[i].range;
    }
    if (d->set_cap) {
        const mha_vk_set_entry *e = &d->sets[find_slot(d, &k)];
        if (e->set) {
            *set = e->set;
            return MHA_OK;
        }
    }
    mha_status s = MHA_OK;
    if ((d->set_count + 1) * 2 > d->set_cap)
        s = grow_table(d);
    int pool = 0;
    if (s == MHA_OK)
        s = alloc_cached(d, set, &pool);
    if (s != MHA_OK)
        return s;
    mha_vk_write_set(d, *set, info);
    mha_vk_set_entry *e = &d->sets[find_slot(d, &k)];
    e->key = k;
    e->set = *set;
    e->pool = pool;
    d->set_count++;
    return MHA_OK;
}

static bool binds(const mha_vk_set_key *k, VkBuffer buf)
{
    for (int i = 0; i < MHA_VK_BINDINGS; ++i)
        if (k->buf[i] == buf)
            return true;
    return false;
}

/* Empties slot i and moves later entries of its probe run back, so every
 * entry stays reachable from its home slot (no tombstones). */
static void remove_slot(mha_vk_device *d, int i)
{
    int mask = d->set_cap - 1;
    for (int j = (i + 1) & mask; d->sets[j].set; j = (j + 1) & mask) {
        int home = home_slot(d, &d->sets[j].key);
        /* the entry at j may fill the hole at i unless its home lies
         * cyclically in (i, j] */
        bool stays = i <= j ? (home > i && home <= j) : (home > i || home <= j);
        if (!stays) {
            d->sets[i] = d->sets[j];
            i = j;
        }
    }
    memset(&d->sets[i], 0, sizeof d->sets[i]);
}

/* Whether a live range of b covers [lo, hi): some tensor still there may
 * be what the binding was made for. */
static bool covered(const mha_vk_block *b, VkDeviceSize lo, VkDeviceSize hi)
{
    for (const mha_vk_buffer *r = b->first; r; r = r->next)
        if (r->offset - r->offset % b->bind_align <= lo &&
            hi <= r->offset + r->size)
            return true;
    return false;
}

/* Whether k binds bytes of [lo, hi) of b that no live range covers. */
static bool binds_freed(const mha_vk_set_key *k, const mha_vk_block *b,
                        VkDeviceSize lo, VkDeviceSize hi)
{
    for (int i = 0; i < MHA_VK_BINDINGS; ++i) {
        VkDeviceSize end = k->offset[i] + k->range[i];
        if (k->buf[i] == b->buf && k->offset[i] < hi && lo < end &&
            !covered(b, k->offset[i], end))
            return true;
    }
    return false;
}

/* Frees every set for which stale(key) holds. */
static void evict_where(mha_vk_device *d,
                        bool (*stale)(const mha_vk_set_key *, const void *),
                        const void *arg)
{
    for (int i = 0; i < d->set_cap;) {
        mha_vk_set_entry *e = &d->sets[i];
        if (!e->set || !stale(&e->key, arg)) {
            ++i;
            continue;
        }
        mha_vk_desc_pool *pool = &d->set_pools.at[e->pool];
        d->vk.vkFreeDescriptorSets(d->dev, pool->pool, 1, &e->set);
        pool->room++;
        d->set_count--;
        remove_slot(d, i); /* slot i may now hold another entry: recheck */
    }
}

static bool binds_buffer(const mha_vk_set_key *k, const void *arg)
{
    return binds(k, *(const VkBuffer *)arg);
}

void mha_vk_set_cache_evict(mha_vk_device *d, VkBuffer buf)
{
    evict_where(d, binds_buffer, &buf);
}

typedef struct freed_range {
    const mha_vk_block *block;
    VkDeviceSize lo, hi;
} freed_range;

static bool binds_range(const mha_vk_set_key *k, const void *arg)
{
    const freed_range *f = arg;
    return binds_freed(k, f->block, f->lo, f->hi);
}

void mha_vk_set_cache_evict_range(mha_vk_device *d, const mha_vk_block *b,
                                  VkDeviceSize lo, VkDeviceSize hi)
{
    freed_range f = {b, lo, hi};
    evict_where(d, binds_range, &f);
}

void mha_vk_set_cache_fini(mha_vk_device *d)
{
    mha_vk_desc_pools_destroy(d, &d->set_pools);
    mha_host_free(d->host, d->sets);
    d->sets = NULL;
    d->set_count = d->set_cap = 0;
}

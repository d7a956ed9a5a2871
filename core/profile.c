/* profile.c: the time of each node a device runs (mha_device_profile_*,
 * mha-bench --profile). A timestamp goes before the first node after a
 * wait and after every node, through the backend's timer methods (GPU
 * timestamps) or, where it has none, the host clock; after the wait the
 * differences become entries. Lives in the core so that every backend and
 * every caller of mha_dev_run is profiled the same way. */
#define _POSIX_C_SOURCE 200809L /* clock_gettime */
#include <string.h>
#include <time.h>

#include "context.h"

#define PROFILE_MAX_ENTRIES 4096

struct mha_profile {
    int marks;      /* timestamps taken since the last wait */
    int host_clock; /* this batch's marks are host times */
    int broken;     /* a mark failed: this batch is not recorded */
    uint64_t host_ns[MHA_TIMER_SLOTS];
    mha_op ops[MHA_TIMER_SLOTS]; /* ops[i]: the node that mark i ends */
    const char *variants[MHA_TIMER_SLOTS]; /* its variant (static) */
    int count;      /* entries recorded, at most PROFILE_MAX_ENTRIES */
    int total;      /* entries finished, recorded or not */
    mha_profile_entry entries[PROFILE_MAX_ENTRIES];
};

static uint64_t host_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Takes timestamp number p->marks: the device's, or the host's when the
 * batch started on the host clock (its first mark was unsupported). */
static void mark(mha_device *device, struct mha_profile *p)
{
    if (p->marks >= MHA_TIMER_SLOTS) {
        p->broken = 1;
        return;
    }
    if (p->marks == 0) {
        p->broken = 0;
        p->host_clock = 0;
    }
    if (!p->host_clock) {
        mha_status st = mha_dev_timer_mark(device, p->marks);
        if (st == MHA_UNSUPPORTED && p->marks == 0)
            p->host_clock = 1;
        else if (st != MHA_OK)
            p->broken = 1;
    }
    p->host_ns[p->marks] = host_now_ns();
    p->marks++;
}

void mha_profile_before_run(mha_device *device)
{
    if (device->profile && device->profile->marks == 0)
        mark(device, device->profile);
}

void mha_profile_after_run(mha_device *device, const mha_node *node)
{
    struct mha_profile *p = device->profile;
    if (!p)
        return;
    if (p->marks < MHA_TIMER_SLOTS) {
        p->ops[p->marks] = node->op;
        p->variants[p->marks] = node->variant;
    }
    mark(device, p);
}

void mha_profile_after_sync(mha_device *device)
{
    struct mha_profile *p = device->profile;
    if (!p || p->marks == 0)
        return;
    uint64_t dev_ns[MHA_TIMER_SLOTS];
    const uint64_t *t = p->host_ns;
    if (!p->broken && !p->host_clock) {
        if (mha_dev_timer_read(device, p->marks, dev_ns) == MHA_OK)
            t = dev_ns;
        else
            p->broken = 1;
    }
    for (int i = 1; i < p->marks && !p->broken; i++) {
        p->total++;
        if (p->count == PROFILE_MAX_ENTRIES)
            continue;
        /* A device counter can wrap or be reset between marks: such a
         * node's time is unknown, not negative. */
        uint64_t d = t[i] >= t[i - 1] ? t[i] - t[i - 1] : 0;
        p->entries[p->count++] = (mha_profile_entry){
            .op = mha_op_name(p->ops[i]),
            .ms = (double)d * 1e-6,
            .device_clock = t == dev_ns,
            .variant = p->variants[i],
        };
    }
    p->marks = 0;
}

void mha_profile_free(mha_device *device)
{
    if (device->profile)
        mha_host_free(&device->ctx->host, device->profile);
    device->profile = NULL;
}

mha_status mha_device_profile_start(mha_device *device)
{
    if (!device)
        return MHA_INVALID_ARGUMENT;
    mha_profile_free(device);
    device->profile = mha_host_calloc(&device->ctx->host, 1,
                                      sizeof *device->profile);
    if (!device->profile)
        return mha_error(device->ctx, MHA_OUT_OF_MEMORY,
                         "mha_device_profile_start: out of host memory");
    mha_clear_error(device->ctx);
    return MHA_OK;
}

mha_status mha_device_profile_stop(mha_device *device)
{
    if (!device)
        return MHA_INVALID_ARGUMENT;
    mha_profile_free(device);
    mha_clear_error(device->ctx);
    return MHA_OK;
}

mha_status mha_device_profile_read(mha_device *device,
                                   mha_profile_entry *entries, int cap,
                                   int *count)
{
    if (!device)
        return MHA_INVALID_ARGUMENT;
    if (!count || cap < 0 || (cap > 0 && !entries))
        return mha_error(device->ctx, MHA_INVALID_ARGUMENT,
                         "mha_device_profile_read: %s",
                         !count  ? "count is NULL"
                         : cap < 0 ? "cap is negative"
                                   : "entries is NULL with cap > 0");
    const struct mha_profile *p = device->profile;
    if (!p)
        return mha_error(device->ctx, MHA_BAD_STATE,
                         "mha_device_profile_read: profiling is off; call "
                         "mha_device_profile_start first");
    int n = p->count < cap ? p->count : cap;
    if (n > 0)
        memcpy(entries, p->entries, (size_t)n * sizeof *entries);
    *count = p->total;
    mha_clear_error(device->ctx);
    return MHA_OK;
}

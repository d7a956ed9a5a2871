/* plan_cache.c: each layer's cache of plans, one per call shape, so that a
 * forward of a shape seen before plans and allocates nothing: least recently
 * used eviction that never evicts a plan whose work may still be queued
 * (pinned), and transient plans when every slot is pinned. */
#include <string.h>

#include "plan.h"

mha_status mha_plan_get(mha_layer *layer, const char *fn,
                        const mha_call *call, int waits, mha_plan **out)
{
    int slot = -1;
    layer->clock++;
    for (int i = 0; i < MHA_PLAN_CACHE; i++) {
        mha_plan *p = layer->plans[i];
        if (p && memcmp(&p->call, call, sizeof *call) == 0) {
            p->last_used = layer->clock;
            *out = p;
            return MHA_OK;
        }
        if (p && p->pinned)
            continue;
        if (slot < 0 || (layer->plans[slot] &&
                         (!p || p->last_used < layer->plans[slot]->last_used)))
            slot = i;
    }
    if (slot < 0 && !waits)
        return mha_error(layer->device->ctx, MHA_LIMIT_REACHED,
                         "%s: this layer already holds %d shapes whose "
                         "forwards were enqueued or recorded, and their "
                         "scratch must live as long as the layer; use fixed "
                         "shapes (pad with key_padding_mask) or another layer",
                         fn, MHA_PLAN_CACHE);
    mha_plan *plan;
    mha_status st = mha_plan_create(layer, fn, call, &plan);
    if (st != MHA_OK)
        return st;
    plan->last_used = layer->clock;
    plan->transient = slot < 0;
    if (slot >= 0) {
        mha_plan_destroy(layer, layer->plans[slot]);
        layer->plans[slot] = plan;
    }
    *out = plan;
    return MHA_OK;
}

void mha_plan_release(mha_layer *layer, mha_plan *plan)
{
    if (plan && plan->transient)
        mha_plan_destroy(layer, plan);
}

void mha_plan_destroy(mha_layer *layer, mha_plan *plan)
{
    if (!plan)
        return;
    for (int r = 0; r < MHA_BUF_EXTERNAL_COUNT; r++)
        mha_dev_free(layer->device, plan->staging[r],
                     plan->staging_bytes[r]);
    mha_dev_free(layer->device, plan->arena, plan->arena_bytes);
    mha_host_free(&layer->device->ctx->host, plan);
}

/* staging.c: the host-memory forward's device side: buffers made once per
 * plan for the caller's arrays and results, the uploads into them (bool
 * masks become additive f32), the run, and the reads back. */
#include "plan.h"
#include "tensor.h"

/* Device buffers for the host forward, sized by the plan's graph. */
static mha_status make_staging(mha_layer *layer, mha_plan *plan)
{
    const mha_graph *g = &plan->graph;
    for (int b = 0; b < g->nbufs; b++) {
        mha_buf_role role = g->bufs[b].role;
        if (role >= MHA_BUF_EXTERNAL_COUNT || role == MHA_BUF_PARAMS ||
            plan->staging[role])
            continue;
        mha_status st = mha_dev_alloc(layer->device, g->bufs[b].bytes,
                                      &plan->staging[role]);
        if (st != MHA_OK)
            return st;
        plan->staging_bytes[role] = g->bufs[b].bytes;
    }
    plan->has_staging = 1;
    return MHA_OK;
}

/* The staging buffer of role holds exactly the caller's array: graph.c
 * sizes input buffers by the validated shapes, at 4 bytes an element (bool
 * masks are stored as f32). */
static mha_status upload_array(mha_device *device, const mha_plan *plan,
                               int role, const mha_host_array *a)
{
    void *buf = plan->staging[role];
    size_t n = plan->staging_bytes[role] / 4;
    if (a->dtype == MHA_BOOL)
        return mha_upload_bool_mask(device, buf, 0, a->data, n);
    return mha_dev_write(device, buf, 0, a->data, n * 4);
}

mha_status mha_plan_run_host(mha_layer *layer, mha_plan *plan,
                             const mha_host_forward_args *a,
                             size_t out_count, size_t w_count)
{
    mha_device *dev = layer->device;
    const mha_host_array *arr[5] = {&a->query, &a->key, &a->value,
                                    &a->key_padding_mask, &a->attn_mask};
    mha_status st = plan->has_staging ? MHA_OK : make_staging(layer, plan);
    for (int i = 0; i < 5 && st == MHA_OK; i++)
        if (arr[i]->data && plan->staging[i])
            st = upload_array(dev, plan, i, arr[i]);
    if (st == MHA_OK)
        st = mha_plan_enqueue(layer, plan, plan->staging);
    if (st == MHA_OK)
        st = mha_dev_sync(dev);
    if (st == MHA_OK)
        st = mha_dev_read(dev, plan->staging[MHA_BUF_OUTPUT], 0, a->output,
                          out_count * 4);
    if (st == MHA_OK && w_count)
        st = mha_dev_read(dev, plan->staging[MHA_BUF_WEIGHTS], 0, a->weights,
                          w_count * 4);
    return st;
}

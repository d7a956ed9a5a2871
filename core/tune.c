/* tune.c: which kernel variant each node runs (mha_node.variant). The
 * planner looks up the tuning database (tune_db.c) for the layer's shape
 * class on its device when it makes a plan; every node then passes
 * through mha_tune_variant on its way to the backend, which applies the
 * source MHA_TUNE forces and a variant MHA_TUNE_VARIANT names:
 *
 *   MHA_TUNE  unset  the database's entry, else the backend's rules
 *             db     the database's entry, else the built-in default
 *             rules  the backend's rule table by device class
 *             off    the built-in default (what libmha chose untuned)
 *   MHA_TUNE_VARIANT=matmul=NAME,attention=NAME (either part) runs those
 *             variants whatever the source (tests, mha-tune).
 *
 * A name the backend does not have (a stale entry, a typo) is ignored with
 * a logged reason. */
#include <string.h>

#include "plan.h"
#include "tune_db.h"

struct mha_tune {
    int loaded;
    mha_tune_db db;
    int warned; /* a bad MHA_TUNE_VARIANT was logged */
};

typedef enum { TUNE_AUTO, TUNE_DB, TUNE_RULES, TUNE_OFF } tune_mode;

static tune_mode mode_of(mha_host *host)
{
    const char *m = mha_host_getenv(host, "MHA_TUNE");
    if (!m)
        return TUNE_AUTO;
    return !strcmp(m, "db")      ? TUNE_DB
           : !strcmp(m, "rules") ? TUNE_RULES
           : !strcmp(m, "off")   ? TUNE_OFF
                                 : TUNE_AUTO;
}

/* 1: the matmul variant decides the op's kernels, 2: the attention's, 0:
 * the op has no variants. */
static int op_class(mha_op op)
{
    switch (op) {
    case MHA_OP_PROJECTION:
    case MHA_OP_SCORES:
    case MHA_OP_WEIGHTED_SUM:
    case MHA_OP_MATMUL:
        return 1;
    case MHA_OP_ATTENTION:
        return 2;
    default:
        return 0;
    }
}

/* The backend's own (static) string for variant name of op, "default"
 * for that, or NULL when the device has no such variant. */
static const char *has_variant(mha_device *device, mha_op op,
                               const char *name)
{
    const char *names[MHA_MAX_VARIANTS];
    int n = mha_dev_variants(device, op, names, MHA_MAX_VARIANTS);
    for (int i = 0; i < n && i < MHA_MAX_VARIANTS; i++)
        if (!strcmp(names[i], name))
            return names[i];
    return !strcmp(name, "default") ? "default" : NULL;
}

/* The device's entries of the database, read on the first plan. */
static mha_status device_db(mha_device *device, const mha_tune_db **db)
{
    mha_host *host = &device->ctx->host;
    if (!device->tune) {
        device->tune = mha_host_calloc(host, 1, sizeof *device->tune);
        if (!device->tune)
            return MHA_OUT_OF_MEMORY;
    }
    char path[4096];
    if (!device->tune->loaded &&
        mha_tune_db_path(host, device->cache_dir, path, sizeof path)) {
        mha_status st = mha_tune_db_read(host, path, &device->tune->db);
        if (st != MHA_OK)
            return st;
    }
    device->tune->loaded = 1;
    *db = &device->tune->db;
    return MHA_OK;
}

/* The backend's string for name if it has it for op, else NULL with the
 * reason logged. */
static const char *usable(mha_device *device, mha_op op, const char *name,
                          const char *shape)
{
    const char *own = has_variant(device, op, name);
    if (own)
        return own;
    mha_host_log(&device->ctx->host, MHA_LOG_WARN,
                 "tuning database: variant %s (%s of %s) does not exist in "
                 "this build for %s; ignored",
                 name, mha_op_name(op), shape, device->entry.desc.name);
    return NULL;
}

mha_status mha_tune_plan(const mha_layer *layer, const mha_call *call,
                         mha_tune_pick *pick)
{
    mha_device *device = layer->device;
    memset(pick, 0, sizeof *pick);
    tune_mode mode = mode_of(&device->ctx->host);
    const mha_tune_db *db = NULL;
    if (mode == TUNE_OFF || mode == TUNE_RULES ||
        mha_dev_variants(device, MHA_OP_ATTENTION, NULL, 0) == 0)
        return MHA_OK;
    mha_status st = device_db(device, &db);
    if (st != MHA_OK || !db->count)
        return st;
    mha_tune_shape s = {layer->cfg.embed_dim, layer->cfg.num_heads,
                        call->batch, call->tgt_len, call->src_len,
                        call->causal};
    char shape[64];
    mha_tune_shape_class(&s, shape, sizeof shape);
    const mha_device_desc *d = &device->entry.desc;
    const mha_tune_entry *e = mha_tune_db_find(db, device->iface->name,
                                               d->name, d->driver, shape);
    if (!e)
        return MHA_OK;
    pick->matmul = usable(device, MHA_OP_PROJECTION, e->matmul, shape);
    pick->attention = usable(device, MHA_OP_ATTENTION, e->attention, shape);
    mha_host_log(&device->ctx->host, MHA_LOG_INFO,
                 "tuning database: %s on %s: matmul %s, attention %s", shape,
                 d->name, pick->matmul ? pick->matmul : "(rules)",
                 pick->attention ? pick->attention : "(rules)");
    return MHA_OK;
}

const char *mha_tune_plan_variant(const mha_tune_pick *pick, mha_op op)
{
    int c = op_class(op);
    return c == 1 ? pick->matmul : c == 2 ? pick->attention : NULL;
}

/* The name MHA_TUNE_VARIANT gives a node of op ("matmul=A,attention=B";
 * a class may be named more than once, "matmul=A,matmul=B", so that one
 * setting names a variant of each backend: the first the device has,
 * else the last) into out, or 0. */
static int forced(mha_device *device, mha_op op, char *out, size_t size)
{
    const char *v = mha_host_getenv(&device->ctx->host, "MHA_TUNE_VARIANT");
    const char *key = op_class(op) == 1 ? "matmul=" : "attention=";
    int found = 0;
    for (const char *at = v; at && *at; at += strcspn(at, ",")) {
        at += *at == ',';
        size_t n = strcspn(at, ",");
        if (strncmp(at, key, strlen(key)) != 0 || n <= strlen(key) ||
            n - strlen(key) >= size)
            continue;
        memcpy(out, at + strlen(key), n - strlen(key));
        out[n - strlen(key)] = '\0';
        found = 1;
        if (has_variant(device, op, out))
            break;
    }
    return found;
}

const char *mha_tune_variant(mha_device *device, const mha_node *node,
                             char *buf, size_t size)
{
    int cls = op_class(node->op);
    if (!cls || mha_dev_variants(device, node->op, NULL, 0) == 0)
        return node->variant;
    mha_host *host = &device->ctx->host;
    if (forced(device, node->op, buf, size)) {
        const char *own = has_variant(device, node->op, buf);
        if (own)
            return own;
        if (!device->tune || !device->tune->warned)
            mha_host_log(host, MHA_LOG_WARN,
                         "MHA_TUNE_VARIANT: %s is no %s variant of %s; "
                         "ignored",
                         buf, mha_op_name(node->op), device->entry.desc.name);
        if (device->tune)
            device->tune->warned = 1;
    }
    switch (mode_of(host)) {
    case TUNE_OFF:
        return "default";
    case TUNE_RULES:
        return NULL;
    case TUNE_DB:
        return node->variant ? node->variant : "default";
    default:
        return node->variant;
    }
}

mha_status mha_device_variants(mha_device *device, const char *kind,
                                const char **names, int cap, int *count)
{
    if (!device)
        return MHA_INVALID_ARGUMENT;
    if (!kind || !count || cap < 0 || (cap > 0 && !names))
        return mha_error(device->ctx, MHA_INVALID_ARGUMENT,
                         "mha_device_variants: %s",
                         !kind    ? "kind is NULL"
                         : !count ? "count is NULL"
                         : cap < 0 ? "cap is negative"
                                   : "names is NULL with cap > 0");
    mha_op op = !strcmp(kind, "matmul")      ? MHA_OP_PROJECTION
                : !strcmp(kind, "attention") ? MHA_OP_ATTENTION
                                             : MHA_OP_COUNT;
    if (op == MHA_OP_COUNT)
        return mha_error(device->ctx, MHA_INVALID_ARGUMENT,
                         "mha_device_variants: kind \"%s\" is neither "
                         "\"matmul\" nor \"attention\"",
                         kind);
    *count = mha_dev_variants(device, op, names, cap);
    mha_clear_error(device->ctx);
    return MHA_OK;
}

void mha_tune_free(mha_device *device)
{
    if (!device->tune)
        return;
    mha_tune_db_free(&device->ctx->host, &device->tune->db);
    mha_host_free(&device->ctx->host, device->tune);
    device->tune = NULL;
}

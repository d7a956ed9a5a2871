/* mha-heads: per-head analysis of an nn.MultiheadAttention layer on any
 * libmha device: the statistics of mha_head_stats over a set of inputs as
 * a table, JSON or CSV, one input's attention per head for
 * tools/plot_heads.py, and (prune) the before/after table of removing the
 * least important heads. This file reads the command line and runs the
 * parts (heads.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "heads.h"

static const char usage[] =
    "usage: mha-heads [prune] --embed-dim E --heads H [options]\n"
    "\n"
    "Per-head statistics of one nn.MultiheadAttention layer over a set of\n"
    "inputs, computed on a libmha device (mha_head_stats): attention\n"
    "entropy, confidence (mean row maximum), mean attention distance, share\n"
    "on the first key and on the previous token, ablation importance (the\n"
    "relative change of the output with the head gated off), gradient\n"
    "importance |dL/dg_h| (normalised per layer; needs --grad), and the\n"
    "head x head Jensen-Shannon and output-cosine matrices.\n"
    "\n"
    "Layer (torch.nn.MultiheadAttention's arguments):\n"
    "  --embed-dim E --heads H   required\n"
    "  --kdim K                  key and value features (default E)\n"
    "  --no-bias --add-bias-kv --add-zero-attn --batch-first\n"
    "  --dtype f32|f16           device storage (default f32)\n"
    "  --weights FILE            .safetensors with the module's state_dict\n"
    "                            (default: seeded random weights)\n"
    "  --prefix P                key prefix, e.g. layers.0.self_attn.\n"
    "Inputs (self-attention unless --key is given):\n"
    "  --input FILE[:KEY]        query (L, N, E), or (N, L, E) with\n"
    "                            --batch-first, from .npy or .safetensors\n"
    "                            (KEY names its tensor); repeat for a set\n"
    "  --key FILE[:KEY]          key = value for the matching --input\n"
    "  --grad FILE[:KEY]|random  dL/dY for the matching --input (output's\n"
    "                            shape); one 'random' applies to every input\n"
    "  --random N                N random inputs instead of files (default\n"
    "                            1 when no --input), shaped by\n"
    "  --batch B --tgt-len L --src-len S   (defaults 2, 16, L)\n"
    "  --seed N                  seed of random weights and inputs (1)\n"
    "  --causal                  is_causal\n"
    "Output:\n"
    "  --device SPEC             best (default), cpu, vulkan, opencl,\n"
    "                            backend:N; prune takes several, comma-\n"
    "                            separated or repeated\n"
    "  --json FILE|-             statistics (and prune rows) as JSON\n"
    "  --csv FILE|-              the per-head table as CSV\n"
    "  --dump-attention B        put batch item B of the first input's\n"
    "                            attention per head ([H][L][S']) in the JSON\n"
    "  --tokens FILE             labels of its positions, one per line\n"
    "prune:\n"
    "  --criterion LIST          gradient, ablation, confidence, random\n"
    "                            (comma-separated; default gradient)\n"
    "  --k LIST                  heads to remove, e.g. 1,2,4 (default 1)\n"
    "  --repeat N                timed forwards per row (default 20),\n"
    "                            alternating with the unpruned layer; the\n"
    "                            medians and their ratio are reported\n"
    "  --help                    print this text\n"
    "\n"
    "JSON: {tool, version, device, layer: {embed_dim, num_heads, ...},\n"
    "inputs, rows, gradient_items, heads: [{head, entropy, confidence,\n"
    "distance, first_key, prev_token, ablation, gradient, gradient_raw}],\n"
    "redundancy: {js: [H][H], cosine: [H][H]}, attention: {input, item,\n"
    "tokens, weights: [H][L][S']} (with --dump-attention), prune: [{device,\n"
    "criterion, k, pruned, latency_ms, latency_ratio, device_bytes,\n"
    "weight_bytes, output_change}] (prune)}. tools/plot_heads.py draws it.\n"
    "Exit status: 0; 1 when a libmha call fails; 2 on a bad argument.\n";

static int bad(const char *what, const char *value)
{
    fprintf(stderr, "mha-heads: %s '%s'\n%s", what, value ? value : "",
            "run mha-heads --help for the options\n");
    return 2;
}

static int parse_int(const char *s, int64_t *out)
{
    char *end;
    long long v = s ? strtoll(s, &end, 10) : 0;
    if (!s || end == s || *end)
        return -1;
    *out = v;
    return 0;
}

/* "1,2,4" into ks. */
static int parse_ks(const char *s, heads_options *o)
{
    char buf[256];
    snprintf(buf, sizeof buf, "%s", s);
    o->nks = 0;
    for (char *t = strtok(buf, ","); t; t = strtok(NULL, ","))
        if (o->nks >= HEADS_MAX_K || parse_int(t, &o->ks[o->nks++]))
            return -1;
    return o->nks ? 0 : -1;
}

static int add_spec(const char **list, int *n, int max, const char *s)
{
    if (!s || *n >= max)
        return -1;
    list[(*n)++] = s;
    return 0;
}

/* Devices, comma-separated or repeated. */
static int add_devices(heads_options *o, char *s)
{
    for (char *t = strtok(s, ","); t; t = strtok(NULL, ","))
        if (add_spec(o->devices, &o->ndevices, HEADS_MAX_DEVICES, t))
            return -1;
    return 0;
}

static int flag(const char *a, heads_options *o)
{
    mha_layer_config *c = &o->cfg;
    if (!strcmp(a, "--no-bias"))
        c->bias = 0;
    else if (!strcmp(a, "--add-bias-kv"))
        c->add_bias_kv = 1;
    else if (!strcmp(a, "--add-zero-attn"))
        c->add_zero_attn = 1;
    else if (!strcmp(a, "--batch-first"))
        c->batch_first = 1;
    else if (!strcmp(a, "--causal"))
        o->causal = 1;
    else
        return 0;
    return 1;
}

/* An option with a value v; 0, or 2 for a bad one. */
static int option(const char *a, char *v, heads_options *o)
{
    int64_t n = 0;
    int ints = parse_int(v, &n) == 0;
    mha_layer_config *c = &o->cfg;
    if (!strcmp(a, "--embed-dim") && ints)
        c->embed_dim = n;
    else if (!strcmp(a, "--heads") && ints)
        c->num_heads = n;
    else if (!strcmp(a, "--kdim") && ints)
        c->kdim = c->vdim = n;
    else if (!strcmp(a, "--dtype") && v &&
             (!strcmp(v, "f32") || !strcmp(v, "f16")))
        c->dtype = v[1] == '1' ? MHA_F16 : MHA_F32;
    else if (!strcmp(a, "--weights"))
        o->weights = v;
    else if (!strcmp(a, "--prefix"))
        o->prefix = v;
    else if (!strcmp(a, "--input"))
        return add_spec(o->inputs, &o->ninputs, HEADS_MAX_INPUTS, v) ? 2 : 0;
    else if (!strcmp(a, "--key"))
        return add_spec(o->keys, &o->nkeys, HEADS_MAX_INPUTS, v) ? 2 : 0;
    else if (!strcmp(a, "--grad"))
        return add_spec(o->grads, &o->ngrads, HEADS_MAX_INPUTS, v) ? 2 : 0;
    else if (!strcmp(a, "--random") && ints && n > 0 && n <= HEADS_MAX_INPUTS)
        o->random_inputs = (int)n;
    else if (!strcmp(a, "--batch") && ints && n > 0)
        o->batch = n;
    else if (!strcmp(a, "--tgt-len") && ints && n > 0)
        o->tgt_len = n;
    else if (!strcmp(a, "--src-len") && ints && n > 0)
        o->src_len = n;
    else if (!strcmp(a, "--seed") && ints)
        o->seed = (uint64_t)n;
    else if (!strcmp(a, "--device") && v)
        return add_devices(o, v) ? 2 : 0;
    else if (!strcmp(a, "--json"))
        o->json = v;
    else if (!strcmp(a, "--csv"))
        o->csv = v;
    else if (!strcmp(a, "--dump-attention") && ints && n >= 0)
        o->dump_attention = (int)n;
    else if (!strcmp(a, "--tokens"))
        o->tokens = v;
    else if (!strcmp(a, "--criterion"))
        o->criterion = v;
    else if (!strcmp(a, "--k") && v)
        return parse_ks(v, o) ? 2 : 0;
    else if (!strcmp(a, "--repeat") && ints && n > 0)
        o->repeat = (int)n;
    else
        return 2;
    return v ? 0 : 2;
}

static int parse(int argc, char **argv, heads_options *o)
{
    memset(o, 0, sizeof *o);
    mha_layer_config_init(&o->cfg, 0, 0);
    o->batch = 2;
    o->tgt_len = 16;
    o->seed = 1;
    o->dump_attention = -1;
    o->criterion = "gradient";
    o->ks[0] = 1;
    o->nks = 1;
    o->repeat = 20;
    int i = 1;
    if (argc > 1 && !strcmp(argv[1], "prune")) {
        o->prune = 1;
        i = 2;
    }
    for (; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            fputs(usage, stdout);
            exit(0);
        }
        if (flag(argv[i], o))
            continue;
        if (option(argv[i], i + 1 < argc ? argv[i + 1] : NULL, o))
            return bad("bad option or value:", argv[i]);
        i++;
    }
    if (o->cfg.embed_dim <= 0 || o->cfg.num_heads <= 0)
        return bad("--embed-dim and --heads are required:", "");
    if (!o->src_len)
        o->src_len = o->tgt_len;
    if (!o->ninputs && !o->random_inputs)
        o->random_inputs = 1;
    return 0;
}

/* The layer section of the JSON. */
static cJSON *layer_json(const heads_options *o)
{
    cJSON *l = cJSON_CreateObject();
    cJSON_AddNumberToObject(l, "embed_dim", (double)o->cfg.embed_dim);
    cJSON_AddNumberToObject(l, "num_heads", (double)o->cfg.num_heads);
    cJSON_AddNumberToObject(l, "head_dim",
                            (double)(o->cfg.embed_dim / o->cfg.num_heads));
    cJSON_AddStringToObject(l, "weights", o->weights ? o->weights : "random");
    cJSON_AddStringToObject(l, "prefix", o->prefix ? o->prefix : "");
    cJSON_AddStringToObject(l, "dtype",
                            o->cfg.dtype == MHA_F16 ? "f16" : "f32");
    cJSON_AddBoolToObject(l, "causal", o->causal);
    return l;
}

/* Statistics (and the attention dump) on device dev into root. */
static int stats_main(mha_device *dev, const heads_options *o,
                      const heads_input *in, int count, cJSON *root)
{
    int64_t H = o->cfg.num_heads;
    mha_head_stat *s = calloc((size_t)H, sizeof *s);
    double *m = calloc((size_t)(2 * H * H), sizeof *m);
    mha_layer *layer = NULL;
    mha_status st = s && m ? heads_layer_make(dev, o, &layer)
                           : MHA_OUT_OF_MEMORY;
    if (st == MHA_OK)
        st = heads_stats_run(dev, layer, o, in, count, s, m, m + H * H);
    if (st == MHA_OK) {
        heads_print_table(s, H);
        heads_stats_json(root, s, H, m, m + H * H);
    }
    if (st == MHA_OK && o->csv && heads_write_csv(o->csv, s, H))
        fprintf(stderr, "mha-heads: cannot write %s\n", o->csv);
    if (st == MHA_OK && o->dump_attention >= 0) {
        cJSON *a = heads_attention_json(dev, layer, o, in,
                                        o->dump_attention, &st);
        if (a)
            cJSON_AddItemToObject(root, "attention", a);
    }
    mha_layer_destroy(layer);
    free(s);
    free(m);
    return st == MHA_OK ? 0 : 1;
}

int main(int argc, char **argv)
{
    heads_options o;
    int rc = parse(argc, argv, &o);
    if (rc)
        return rc;
    heads_input in[HEADS_MAX_INPUTS];
    int count = 0;
    char err[512] = "";
    if (heads_inputs_load(&o, in, &count, err, sizeof err)) {
        heads_inputs_free(in, count);
        return bad("cannot read an input:", err);
    }
    mha_context *ctx = NULL;
    if (mha_context_create(NULL, &ctx) != MHA_OK) {
        fprintf(stderr, "mha-heads: no libmha context\n");
        heads_inputs_free(in, count);
        return 1;
    }
    o.ctx = ctx;
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "tool", "mha-heads");
    cJSON_AddStringToObject(root, "version", mha_version());
    cJSON_AddItemToObject(root, "layer", layer_json(&o));
    cJSON_AddNumberToObject(root, "inputs", count);
    if (o.prune)
        rc = heads_prune_run(ctx, &o, in, count, root);
    else {
        mha_device *dev = NULL;
        if (mha_device_open(ctx, o.ndevices ? o.devices[0] : NULL, NULL,
                            &dev) != MHA_OK) {
            fprintf(stderr, "mha-heads: %s\n", mha_context_errmsg(ctx));
            rc = 1;
        } else {
            mha_device_info info;
            mha_device_info_of(dev, &info);
            cJSON_AddStringToObject(root, "device", info.name);
            rc = stats_main(dev, &o, in, count, root);
        }
        mha_device_destroy(dev);
    }
    if (!rc && o.json && heads_write_json(o.json, root)) {
        fprintf(stderr, "mha-heads: cannot write %s\n", o.json);
        rc = 1;
    }
    cJSON_Delete(root);
    mha_context_destroy(ctx);
    heads_inputs_free(in, count);
    return rc;
}

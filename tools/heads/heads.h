/* heads.h: what the parts of mha-heads share: the options, the layer and
 * inputs they describe, and the functions of each part (arrays.c reads
 * .npy and .safetensors arrays, run.c makes layers and inputs and runs the
 * statistics, report.c prints the table, JSON and CSV, prune.c the prune
 * subcommand). mha-heads uses libmha's public API only. */
#ifndef MHA_TOOLS_HEADS_H
#define MHA_TOOLS_HEADS_H

#include <cjson/cJSON.h>
#include <stdint.h>

#include "mha.h"

#define HEADS_MAX_INPUTS 64
#define HEADS_MAX_K 16
#define HEADS_MAX_DEVICES 8

/* A host array read from a file (or made up): f32, row-major. */
typedef struct heads_array {
    float *data;
    int ndim;
    int64_t shape[MHA_MAX_DIMS];
    size_t count;
} heads_array;

typedef struct heads_options {
    int prune;                   /* the prune subcommand */
    const char *weights, *prefix;
    mha_layer_config cfg;
    const char *inputs[HEADS_MAX_INPUTS]; /* FILE[:KEY] queries */
    int ninputs;
    const char *keys[HEADS_MAX_INPUTS];   /* optional, else the query */
    int nkeys;
    const char *grads[HEADS_MAX_INPUTS];  /* FILE[:KEY] or "random" */
    int ngrads;
    int64_t batch, tgt_len, src_len;      /* random inputs */
    int random_inputs;                    /* how many random inputs */
    uint64_t seed;
    int causal;
    const char *devices[HEADS_MAX_DEVICES];
    int ndevices;
    const char *json, *csv;               /* paths, "-" is stdout */
    int dump_attention;                   /* batch item of input 0, or -1 */
    const char *tokens;                   /* labels, one per line */
    /* prune */
    const char *criterion;                /* gradient, ablation, ... */
    int64_t ks[HEADS_MAX_K];
    int nks;
    int repeat;                           /* timed forwards per row */
    mha_context *ctx;                     /* for messages */
} heads_options;

/* arrays.c: reads spec "FILE" or "FILE:KEY" (.npy: the file's array;
 * .safetensors: tensor KEY, or the only tensor) as f32. 0, or -1 with err
 * filled. */
int heads_array_load(const char *spec, heads_array *out, char *err,
                     size_t errlen);
void heads_array_free(heads_array *a);
/* Stores the element count of shape in *count and returns 0; -1 when a
 * dimension is not positive or the f32 array would not fit in memory
 * (the product would wrap). */
int heads_shape_count(int ndim, const int64_t *shape, size_t *count);

/* run.c */
/* Prints the context's message for a failed st (at once: later cleanup
 * calls clear it) and returns st; MHA_OK prints nothing. */
mha_status heads_fail(const heads_options *o, mha_status st);
typedef struct heads_input {
    heads_array query, key, grad; /* key.data NULL: the query; grad.data
                                     NULL: none */
} heads_input;

/* The inputs of o (files or random), 0 or -1 with err. */
int heads_inputs_load(const heads_options *o, heads_input *in, int *count,
                      char *err, size_t errlen);
void heads_inputs_free(heads_input *in, int count);
/* A layer on dev with o's config and weights (random ones, seeded, when no
 * file is given). MHA_OK, or the failing call's status with its message
 * printed. */
mha_status heads_layer_make(mha_device *dev, const heads_options *o,
                            mha_layer **out);
/* Device tensors for one input and its output, and the forward args over
 * them; heads_call_free releases them. */
typedef struct heads_call {
    mha_tensor *q, *k, *out, *grad;
    mha_forward_args args;
} heads_call;
mha_status heads_call_make(mha_device *dev, mha_layer *layer,
                           const heads_options *o, const heads_input *in,
                           heads_call *c);
void heads_call_free(heads_call *c);
/* Statistics of layer over the inputs into stats (H entries) and the JS
 * and cosine matrices (H*H each). */
mha_status heads_stats_run(mha_device *dev, mha_layer *layer,
                           const heads_options *o, const heads_input *in,
                           int count, mha_head_stat *stats, double *js,
                           double *cosine);

/* report.c */
void heads_print_table(const mha_head_stat *s, int64_t H);
/* Adds rows, gradient_items, heads and redundancy to root. */
void heads_stats_json(cJSON *root, const mha_head_stat *s, int64_t H,
                      const double *js, const double *cosine);
/* Attention of batch item b of input in, per head, with token labels. */
cJSON *heads_attention_json(mha_device *dev, mha_layer *layer,
                            const heads_options *o, const heads_input *in,
                            int b, mha_status *st);
int heads_write_csv(const char *path, const mha_head_stat *s, int64_t H);
int heads_write_json(const char *path, cJSON *root);

/* prune.c: the before/after table, into root["prune"]; 0 or 1. */
int heads_prune_run(mha_context *ctx, const heads_options *o,
                    const heads_input *in, int count, cJSON *root);

#endif /* MHA_TOOLS_HEADS_H */

/* report.c: mha-heads' output: the per-head table on the terminal, the
 * same as CSV, and the JSON document (statistics, redundancy matrices and,
 * on request, one input's attention per head) that tools/plot_heads.py
 * draws. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "heads.h"

/* Column name, printf format width and the field, in table order. */
#define HEADS_COLUMNS(X)                                                     \
    X("entropy", entropy)                                                    \
    X("confidence", confidence)                                              \
    X("distance", distance)                                                  \
    X("first_key", first_key)                                                \
    X("prev_token", prev_token)                                              \
    X("ablation", ablation)                                                  \
    X("gradient", gradient)                                                  \
    X("gradient_raw", gradient_raw)

void heads_print_table(const mha_head_stat *s, int64_t H)
{
#define HEAD_(name, field) printf(" %12s", name);
    printf("%4s", "head");
    HEADS_COLUMNS(HEAD_)
    printf("\n");
#undef HEAD_
#define CELL_(name, field) printf(" %12.5g", s[h].field);
    for (int64_t h = 0; h < H; h++) {
        printf("%4lld", (long long)s[h].head);
        HEADS_COLUMNS(CELL_)
        printf("\n");
    }
#undef CELL_
    printf("(%lld query rows; gradients from %lld batch items)\n",
           (long long)(H ? s[0].rows : 0),
           (long long)(H ? s[0].gradient_items : 0));
}

/* rows x cols values, row-major, as nested arrays: doubles d, or floats
 * f when d is NULL. */
static cJSON *matrix_json(const double *d, const float *f, int64_t rows,
                          int64_t cols)
{
    cJSON *arr = cJSON_CreateArray();
    for (int64_t i = 0; i < rows; i++)
        cJSON_AddItemToArray(arr, d ? cJSON_CreateDoubleArray(d + i * cols,
                                                              (int)cols)
                                    : cJSON_CreateFloatArray(f + i * cols,
                                                             (int)cols));
    return arr;
}

void heads_stats_json(cJSON *root, const mha_head_stat *s, int64_t H,
                      const double *js, const double *cosine)
{
    cJSON *heads = cJSON_CreateArray();
#define FIELD_(name, field) cJSON_AddNumberToObject(o, name, s[h].field);
    for (int64_t h = 0; h < H; h++) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddNumberToObject(o, "head", (double)s[h].head);
        HEADS_COLUMNS(FIELD_)
        cJSON_AddItemToArray(heads, o);
    }
#undef FIELD_
    cJSON_AddNumberToObject(root, "rows", H ? (double)s[0].rows : 0);
    cJSON_AddNumberToObject(root, "gradient_items",
                            H ? (double)s[0].gradient_items : 0);
    cJSON_AddItemToObject(root, "heads", heads);
    cJSON *red = cJSON_CreateObject();
    cJSON_AddItemToObject(red, "js", matrix_json(js, NULL, H, H));
    cJSON_AddItemToObject(red, "cosine", matrix_json(cosine, NULL, H, H));
    cJSON_AddItemToObject(root, "redundancy", red);
}

/* Up to max labels of file path, one per line (without the newline). */
static cJSON *token_labels(const char *path, int64_t max)
{
    FILE *f = path ? fopen(path, "r") : NULL;
    cJSON *arr = cJSON_CreateArray();
    char line[256];
    for (int64_t i = 0; f && i < max && fgets(line, sizeof line, f); i++) {
        line[strcspn(line, "\n")] = '\0';
        cJSON_AddItemToArray(arr, cJSON_CreateString(line));
    }
    if (f)
        fclose(f);
    return arr;
}

cJSON *heads_attention_json(mha_device *dev, mha_layer *layer,
                            const heads_options *o, const heads_input *in,
                            int b, mha_status *st)
{
    heads_call c;
    mha_tensor *w = NULL;
    int64_t shape[4];
    mha_dtype dt;
    int nd;
    float *data = NULL;
    cJSON *root = NULL;
    int64_t H = o->cfg.num_heads;
    int bf = o->cfg.batch_first, B = in->query.ndim == 3
                                          ? (int)in->query.shape[bf ? 0 : 1]
                                          : 1;
    if (b < 0 || b >= B || in->query.ndim != 3) {
        fprintf(stderr, "mha-heads: --dump-attention %d: the first input "
                        "has %d batch items (3-D inputs only)\n", b, B);
        *st = MHA_INVALID_ARGUMENT;
        return NULL;
    }
    *st = heads_call_make(dev, layer, o, in, &c);
    if (*st == MHA_OK) {
        /* the weights' shape: the forward's own check names a bad one */
        mha_tensor_get_shape(c.out, &dt, &nd, shape);
        int64_t L = shape[bf && nd == 3 ? 1 : 0];
        int64_t S = (c.k ? in->key.shape[bf && nd == 3 ? 1 : 0] : L) +
                    (o->cfg.add_bias_kv ? 1 : 0) +
                    (o->cfg.add_zero_attn ? 1 : 0);
        int64_t ws[4] = {B, H, L, S};
        *st = mha_tensor_create(dev, MHA_F32, 4, ws, &w);
        c.args.need_weights = 1;
        c.args.average_attn_weights = 0;
        c.args.weights = w;
        size_t n = (size_t)(B * H * L * S);
        if (*st == MHA_OK)
            *st = mha_layer_forward(layer, &c.args);
        if (*st == MHA_OK && !(data = malloc(n * sizeof *data)))
            *st = MHA_OUT_OF_MEMORY;
        if (*st == MHA_OK)
            *st = mha_tensor_download(w, data, n * sizeof *data);
        if (*st == MHA_OK) {
            root = cJSON_CreateObject();
            cJSON_AddNumberToObject(root, "input", 0);
            cJSON_AddNumberToObject(root, "item", b);
            cJSON_AddItemToObject(root, "tokens",
                                  token_labels(o->tokens, L > S ? L : S));
            cJSON *heads = cJSON_CreateArray();
            for (int64_t h = 0; h < H; h++)
                cJSON_AddItemToArray(heads,
                                     matrix_json(NULL,
                                                 data + ((int64_t)b * H + h) *
                                                            L * S,
                                                 L, S));
            cJSON_AddItemToObject(root, "weights", heads);
        }
    }
    heads_fail(o, *st);
    free(data);
    mha_tensor_destroy(w);
    heads_call_free(&c);
    return root;
}

int heads_write_csv(const char *path, const mha_head_stat *s, int64_t H)
{
    FILE *f = strcmp(path, "-") == 0 ? stdout : fopen(path, "w");
    if (!f)
        return -1;
#define NAME_(name, field) fprintf(f, ",%s", name);
    fprintf(f, "head");
    HEADS_COLUMNS(NAME_)
    fprintf(f, "\n");
#undef NAME_
#define VALUE_(name, field) fprintf(f, ",%.9g", s[h].field);
    for (int64_t h = 0; h < H; h++) {
        fprintf(f, "%lld", (long long)s[h].head);
        HEADS_COLUMNS(VALUE_)
        fprintf(f, "\n");
    }
#undef VALUE_
    return f == stdout ? 0 : fclose(f);
}

int heads_write_json(const char *path, cJSON *root)
{
    char *text = cJSON_Print(root);
    FILE *f = !text ? NULL : strcmp(path, "-") == 0 ? stdout
                                                    : fopen(path, "w");
    int rc = f && fputs(text, f) >= 0 && fputc('\n', f) != EOF ? 0 : -1;
    if (f && f != stdout && fclose(f) != 0)
        rc = -1;
    cJSON_free(text);
    return rc;
}

/* Access to the real activations in ../shared/data (see its README): raw little-endian tensors
 * and the reference figures. Tests that need them skip with a message when the folder is
 * absent. The folder is found through SKV_TEST_DATA (set by meson) or ../shared/data. */
#ifndef SKV_TEST_DATA_H
#define SKV_TEST_DATA_H

#include "common.h"

enum { DATA_T = 2048, DATA_LAYERS = 6, DATA_IH = 16, DATA_ID = 32 };

static const char *data_dir(void)
{
    static char dir[1024];
    const char *env = getenv("SKV_TEST_DATA");
    snprintf(dir, sizeof dir, "%s/dev", env && *env ? env : "../shared/data");
    char probe[1200];
    snprintf(probe, sizeof probe, "%s/reference.json", dir);
    FILE *f = fopen(probe, "rb");
    if (!f)
        return NULL;
    fclose(f);
    return dir;
}

/* Reads `name` (e.g. "L3_iq.bin") into a new buffer of exactly `bytes` bytes, or NULL. */
static void *data_read(const char *name, size_t bytes)
{
    const char *dir = data_dir();
    if (!dir)
        return NULL;
    char path[1200];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    void *buf = xmalloc(bytes);
    const size_t got = fread(buf, 1, bytes, f);
    fclose(f);
    if (got != bytes) {
        free(buf);
        return NULL;
    }
    return buf;
}

/* The indexer inputs of one layer, in f32: iq [T][16][32] (stored f16), iw [T][16], ik [T][32]. */
typedef struct layer_inputs { float *iq, *iw, *ik; } layer_inputs;

static int data_layer(int layer, layer_inputs *out)
{
    char name[64];
    snprintf(name, sizeof name, "L%d_iq.bin", layer);
    uint16_t *q16 = data_read(name, (size_t)DATA_T * DATA_IH * DATA_ID * 2);
    snprintf(name, sizeof name, "L%d_iw.bin", layer);
    out->iw = data_read(name, (size_t)DATA_T * DATA_IH * 4);
    snprintf(name, sizeof name, "L%d_ik.bin", layer);
    out->ik = data_read(name, (size_t)DATA_T * DATA_ID * 4);
    if (!q16 || !out->iw || !out->ik) {
        free(q16), free(out->iw), free(out->ik);
        return 0;
    }
    out->iq = xmalloc((size_t)DATA_T * DATA_IH * DATA_ID * 4);
    skv_convert(SKV_F32, out->iq, SKV_F16, q16, (int64_t)DATA_T * DATA_IH * DATA_ID);
    free(q16);
    return 1;
}

static void data_layer_free(layer_inputs *l) { free(l->iq), free(l->iw), free(l->ik); }

/* The whole reference.json as a string (NULL when absent). */
static char *data_reference(void)
{
    const char *dir = data_dir();
    if (!dir)
        return NULL;
    char path[1200];
    snprintf(path, sizeof path, "%s/reference.json", dir);
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    const long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = xmalloc((size_t)n + 1);
    s[fread(s, 1, (size_t)n, f)] = '\0';
    fclose(f);
    return s;
}

/* The number after "key": inside the object "section" (NULL: the top level). NaN if absent. */
static double json_number(const char *json, const char *section, const char *key)
{
    const char *p = json;
    char pat[128];
    if (section) {
        snprintf(pat, sizeof pat, "\"%s\"", section);
        p = strstr(p, pat);
        if (!p)
            return NAN;
    }
    snprintf(pat, sizeof pat, "\"%s\"", key);
    p = strstr(p, pat);
    if (!p)
        return NAN;
    p = strchr(p + strlen(pat), ':');
    return p ? strtod(p + 1, NULL) : NAN;
}

/* The n numbers of the array under "key", in order; returns how many were read. */
static int json_numbers(const char *json, const char *key, double *out, int n)
{
    char pat[128];
    snprintf(pat, sizeof pat, "\"%s\"", key);
    const char *p = strstr(json, pat);
    if (!p)
        return 0;
    p += strlen(pat);
    int got = 0;
    while (*p && got < n) {
        if ((*p >= '0' && *p <= '9') || *p == '-' || *p == '.') {
            char *end;
            out[got++] = strtod(p, &end);
            p = end;
        } else {
            p++;
        }
    }
    return got;
}

#endif

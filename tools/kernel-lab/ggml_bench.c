// The llama.cpp baseline for docs/kernel-lab/cpu-gemv.md: ggml's CPU mul_mat on the same shapes
// as crates/smelt-cpu/examples/kernel_bench.rs, through ggml's public API (the libggml*.so that
// llama-cpp-python ships). Build and run with tools/kernel-lab/build_ggml_bench.sh.
//
//   ggml_bench TYPE N ROWS MB THREADS REPACK TOKENS SECS
//
// TOKENS = 1: gemv over MB MiB of weight copies (one mul_mat node per copy, so one barrier per
// matrix, as in decode); prints GB/s of weight bytes. TOKENS > 1: one matrix times TOKENS
// activation rows; prints tokens/s and GFLOP/s. REPACK = 1 puts the weights in ggml's extra
// buffer type CPU_REPACK (interleaved rows, what llama.cpp uses for Q4_0/Q4_K/IQ4_NL on AVX2).
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ggml.h"
#include "ggml-alloc.h"
#include "ggml-backend.h"
#include "ggml-cpu.h"

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static enum ggml_type type_by_name(const char *name) {
    for (int t = 0; t < GGML_TYPE_COUNT; t++) {
        const char *n = ggml_type_name((enum ggml_type)t);
        if (n && strcasecmp(n, name) == 0) return (enum ggml_type)t;
    }
    fprintf(stderr, "unknown type %s\n", name);
    exit(2);
}

static ggml_backend_buffer_type_t repack_buft(void) {
    ggml_backend_reg_t reg = ggml_backend_cpu_reg();
    ggml_backend_dev_t dev = ggml_backend_reg_dev_get(reg, 0);
    ggml_backend_dev_get_extra_bufts_t get =
        (ggml_backend_dev_get_extra_bufts_t)ggml_backend_reg_get_proc_address(reg, "ggml_backend_dev_get_extra_bufts");
    if (!get) return NULL;
    for (ggml_backend_buffer_type_t *b = get(dev); b && *b; b++) {
        if (strcmp(ggml_backend_buft_name(*b), "CPU_REPACK") == 0) return *b;
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 9) {
        fprintf(stderr, "usage: ggml_bench TYPE N ROWS MB THREADS REPACK TOKENS SECS\n");
        return 2;
    }
    enum ggml_type type = type_by_name(argv[1]);
    int n = atoi(argv[2]), rows = atoi(argv[3]), mb = atoi(argv[4]), threads = atoi(argv[5]);
    int repack = atoi(argv[6]), tokens = atoi(argv[7]);
    double secs = atof(argv[8]);

    ggml_backend_t backend = ggml_backend_cpu_init();
    ggml_backend_cpu_set_n_threads(backend, threads);
    ggml_backend_buffer_type_t buft = repack ? repack_buft() : ggml_backend_cpu_buffer_type();
    if (!buft) {
        fprintf(stderr, "no CPU_REPACK buffer type\n");
        return 1;
    }

    size_t row_bytes = ggml_row_size(type, n);
    size_t mat_bytes = row_bytes * rows;
    int copies = tokens > 1 ? 1 : (int)(((size_t)mb << 20) / mat_bytes);
    if (copies < 1) copies = 1;

    struct ggml_init_params wp = {ggml_tensor_overhead() * (copies + 1), NULL, true};
    struct ggml_context *wctx = ggml_init(wp);
    struct ggml_tensor **w = calloc(copies, sizeof *w);
    for (int k = 0; k < copies; k++) w[k] = ggml_new_tensor_2d(wctx, type, n, rows);
    ggml_backend_buffer_t wbuf = ggml_backend_alloc_ctx_tensors_from_buft(wctx, buft);
    if (!wbuf) {
        fprintf(stderr, "weight allocation failed\n");
        return 1;
    }
    ggml_backend_buffer_set_usage(wbuf, GGML_BACKEND_BUFFER_USAGE_WEIGHTS);

    // 64 rows quantised by ggml, repeated: the values do not matter for speed.
    int seed_rows = rows < 64 ? rows : 64;
    float *src = malloc(sizeof(float) * (size_t)n * seed_rows);
    unsigned long long s = 7;
    for (size_t i = 0; i < (size_t)n * seed_rows; i++) {
        s = s * 6364136223846793005ULL + 1442695040888963407ULL;
        src[i] = (float)((s >> 40) & 0xffffff) / (float)(1 << 22) - 2.0f;
    }
    char *data = malloc(mat_bytes);
    ggml_quantize_chunk(type, src, data, 0, seed_rows, n, NULL);
    for (size_t off = row_bytes * seed_rows; off < mat_bytes; off += row_bytes * seed_rows) {
        size_t len = mat_bytes - off < row_bytes * seed_rows ? mat_bytes - off : row_bytes * seed_rows;
        memcpy(data + off, data, len);
    }
    for (int k = 0; k < copies; k++) ggml_backend_tensor_set(w[k], data, 0, mat_bytes);

    struct ggml_init_params cp = {ggml_tensor_overhead() * (2 * copies + 8) + ggml_graph_overhead_custom(2 * copies + 8, false), NULL, true};
    struct ggml_context *cctx = ggml_init(cp);
    struct ggml_tensor *x = ggml_new_tensor_2d(cctx, GGML_TYPE_F32, n, tokens);
    struct ggml_cgraph *gf = ggml_new_graph_custom(cctx, 2 * copies + 8, false);
    for (int k = 0; k < copies; k++) ggml_build_forward_expand(gf, ggml_mul_mat(cctx, w[k], x));
    ggml_gallocr_t galloc = ggml_gallocr_new(ggml_backend_cpu_buffer_type());
    if (!ggml_gallocr_alloc_graph(galloc, gf)) {
        fprintf(stderr, "graph allocation failed\n");
        return 1;
    }
    float *xv = malloc(sizeof(float) * (size_t)n * tokens);
    for (size_t i = 0; i < (size_t)n * tokens; i++) xv[i] = src[i % ((size_t)n * seed_rows)];
    ggml_backend_tensor_set(x, xv, 0, sizeof(float) * (size_t)n * tokens);

    double t0 = now();
    ggml_backend_graph_compute(backend, gf);  // warm-up: faults pages in
    double warm = now() - t0;
    int iters = (int)(secs / warm);
    if (iters < 2) iters = 2;
    t0 = now();
    for (int i = 0; i < iters; i++) ggml_backend_graph_compute(backend, gf);
    double t = (now() - t0) / iters;

    if (tokens == 1) {
        printf("ggml gemv %5s %s threads %3d: %7.2f GB/s  %8.1f us/matrix\n", argv[1], repack ? "repack" : "plain ",
               threads, (double)mat_bytes * copies / t / 1e9, t / copies * 1e6);
    } else {
        printf("ggml gemm %5s %s threads %3d tokens %4d: %9.1f tok/s %8.1f GFLOP/s\n", argv[1], repack ? "repack" : "plain ",
               threads, tokens, tokens / t, 2.0 * n * rows * tokens / t / 1e9);
    }
    return 0;
}

/* One fused pass of MLX affine dequantization on the CPU: packed codes + scales + biases in, dense rows out.
 *
 * The torch path in dequant.py makes ~10 passes over memory per block (shifts, masks, strided interleaves,
 * multiply, add, store); this makes one, and computes exactly what that path computes:
 *   fused:   v = float(q) * s, then + b, in float32 (two float32 roundings, no FMA), then one rounding to the
 *            output dtype;
 *   mlx_cpu: the same in the scales' dtype, rounded after the product and after the sum (bf16 scales only).
 * Plain C, no torch headers: tensors arrive as addresses. Built as an optional extension (setup.py); when it
 * is missing, dequant.py falls back to the torch path, which the tests compare this against bit for bit.
 * Must be compiled with -ffp-contract=off (an FMA would round once where torch rounds twice).
 */
#ifndef KERNEL_ONLY /* scripts/kernel_crosscheck.c builds the kernel alone, for other architectures */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#endif
#include <stdint.h>
#include <string.h>
#ifdef __linux__
#include <sys/mman.h>
#endif

enum { KIND_F32 = 0, KIND_BF16 = 1, KIND_F16 = 2 };

static inline float bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* Round to nearest even, as torch does; inputs are finite or +-inf (scales were checked finite), never NaN. */
static inline uint16_t f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    u += 0x7FFFu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static inline float round_bf16(float f) { return bf16_to_f32(f32_to_bf16(f)); }

static float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1Fu, man = h & 0x3FFu, u;
    if (exp == 0x1F) {
        u = sign | 0x7F800000u | (man << 13);
    } else if (exp != 0) {
        u = sign | ((exp + 112u) << 23) | (man << 13);
    } else if (man == 0) {
        u = sign;
    } else { /* subnormal: normalise */
        exp = 113;
        while (!(man & 0x400u)) {
            man <<= 1;
            exp--;
        }
        u = sign | (exp << 23) | ((man & 0x3FFu) << 13);
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline float load_param(const void *p, int kind, int64_t i) {
    switch (kind) {
    case KIND_BF16: return bf16_to_f32(((const uint16_t *)p)[i]);
    case KIND_F16: return f16_to_f32(((const uint16_t *)p)[i]);
    default: return ((const float *)p)[i];
    }
}

/* Codes of one group as floats. Codes are an LSB-first bit stream per row. */
static inline void unpack_group(const uint8_t *row, int64_t first, int64_t n, int bits, float *q) {
    if (bits == 4) {
        const uint8_t *p = row + first / 2;
        for (int64_t j = 0; j < n / 2; j++) {
            q[2 * j] = (float)(p[j] & 0xF);
            q[2 * j + 1] = (float)(p[j] >> 4);
        }
    } else if (bits == 8) {
        const uint8_t *p = row + first;
        for (int64_t j = 0; j < n; j++) q[j] = (float)p[j];
    } else if (bits == 2) {
        const uint8_t *p = row + first / 4;
        for (int64_t j = 0; j < n / 4; j++) {
            q[4 * j] = (float)(p[j] & 3);
            q[4 * j + 1] = (float)((p[j] >> 2) & 3);
            q[4 * j + 2] = (float)((p[j] >> 4) & 3);
            q[4 * j + 3] = (float)(p[j] >> 6);
        }
    } else { /* any width 1..8: a code spans at most two bytes; read the second only when it does */
        const unsigned mask = (1u << bits) - 1u;
        for (int64_t j = 0; j < n; j++) {
            int64_t bit = (first + j) * bits;
            unsigned shift = (unsigned)(bit & 7), v = row[bit >> 3] >> shift;
            if (shift + (unsigned)bits > 8) v |= (unsigned)row[(bit >> 3) + 1] << (8 - shift);
            q[j] = (float)(v & mask);
        }
    }
}

/* Compiled for the host's best vector unit at load time (x86-64 with GCC); elsewhere, the baseline ISA
 * (on aarch64 that includes NEON). */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#endif
static void dequant_rows(const uint8_t *w, const void *s, const void *b, void *out, int64_t rows,
                         int64_t row_bytes, int bits, int64_t group_size, int param_kind, int out_kind,
                         int two_roundings) {
    const int64_t cols = row_bytes * 8 / bits, groups = cols / group_size;
    float q[512]; /* group_size <= 512, checked by the caller */
    for (int64_t r = 0; r < rows; r++) {
        const uint8_t *row = w + r * row_bytes;
        for (int64_t g = 0; g < groups; g++) {
            const float sg = load_param(s, param_kind, r * groups + g);
            const float bg = load_param(b, param_kind, r * groups + g);
            unpack_group(row, g * group_size, group_size, bits, q);
            if (two_roundings) {
                for (int64_t j = 0; j < group_size; j++) q[j] = round_bf16(round_bf16(q[j] * sg) + bg);
            } else {
                for (int64_t j = 0; j < group_size; j++) q[j] = q[j] * sg + bg;
            }
            const int64_t at = r * cols + g * group_size;
            if (out_kind == KIND_BF16) {
                uint16_t *o = (uint16_t *)out + at;
                for (int64_t j = 0; j < group_size; j++) o[j] = f32_to_bf16(q[j]);
            } else {
                memcpy((float *)out + at, q, (size_t)group_size * sizeof(float));
            }
        }
    }
}

#ifndef KERNEL_ONLY
static PyObject *dequant(PyObject *Py_UNUSED(self), PyObject *args) {
    unsigned long long w, s, b, out;
    long long rows, row_bytes, group_size;
    int bits, param_kind, out_kind, two_roundings;
    if (!PyArg_ParseTuple(args, "KKKKLLiLiii", &w, &s, &b, &out, &rows, &row_bytes, &bits, &group_size,
                          &param_kind, &out_kind, &two_roundings))
        return NULL;
    if (bits < 1 || bits > 8 || group_size < 8 || group_size > 512 || group_size % 8 != 0 || (row_bytes * 8) % bits != 0 ||
        ((row_bytes * 8) / bits) % group_size != 0 || param_kind < 0 || param_kind > 2 ||
        (out_kind != KIND_F32 && out_kind != KIND_BF16) || (two_roundings && param_kind != KIND_BF16)) {
        PyErr_SetString(PyExc_ValueError, "_cdequant.dequant: unsupported arguments");
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    dequant_rows((const uint8_t *)(uintptr_t)w, (const void *)(uintptr_t)s, (const void *)(uintptr_t)b,
                 (void *)(uintptr_t)out, rows, row_bytes, bits, group_size, param_kind, out_kind, two_roundings);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

/* Back a fresh output with 2 MiB pages where the kernel allows it (transparent_hugepage=madvise): a 4 KiB
 * page fault per 4 KiB written costs more than the dequantization itself. A hint; failure changes nothing. */
static PyObject *advise_hugepages(PyObject *Py_UNUSED(self), PyObject *args) {
    unsigned long long addr, nbytes;
    if (!PyArg_ParseTuple(args, "KK", &addr, &nbytes)) return NULL;
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    const unsigned long long huge = 1ull << 21, start = (addr + huge - 1) & ~(huge - 1),
                             end = (addr + nbytes) & ~(huge - 1);
    if (end > start && madvise((void *)(uintptr_t)start, (size_t)(end - start), MADV_HUGEPAGE) == 0) Py_RETURN_TRUE;
#endif
    Py_RETURN_FALSE;
}

static PyMethodDef methods[] = {
    {"dequant", dequant, METH_VARARGS,
     "dequant(w, s, b, out, rows, row_bytes, bits, group_size, param_kind, out_kind, two_roundings): "
     "addresses of contiguous tensors; kinds 0=float32 1=bfloat16 2=float16."},
    {"advise_hugepages", advise_hugepages, METH_VARARGS,
     "advise_hugepages(addr, nbytes) -> bool: madvise(MADV_HUGEPAGE) on the 2 MiB pages inside the range."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_cdequant", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__cdequant(void) { return PyModule_Create(&module); }
#endif

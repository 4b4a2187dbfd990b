/* The mixup loop of mixup_cli.core in one pass over memory:
 *
 *     out[i] = lam[i] * a[i] + rest[i] * b[j]     j = index[i], or i without index
 *
 * evaluated in the working type W (float or double) as two multiplies and one
 * add, exactly as numpy does it, so both paths give the same bytes. Integer
 * results are rounded half to even, clipped to the bounds of
 * core.integer_bounds and converted back.
 *
 * Arrays come through the buffer protocol (no numpy headers); every size,
 * item size and partner index is checked here, so a wrong call raises
 * instead of touching memory it should not.
 *
 * Build without -ffast-math and with -ffp-contract=off: a fused multiply-add
 * rounds once where numpy rounds twice.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <float.h>
#include <math.h>
#include <stdint.h>

#if defined(FLT_EVAL_METHOD) && FLT_EVAL_METHOD != 0
#error "float arithmetic with excess precision (x87) would not match numpy"
#endif
#ifdef __FAST_MATH__
#error "-ffast-math changes results; build without it"
#endif
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif

/* Bumped whenever the calling convention changes; core.py refuses a stale build. */
#define KERNEL_VERSION 2

#if defined(__GNUC__)
#define ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define ALWAYS_INLINE inline
#endif
#if defined(_MSC_VER)
#define restrict __restrict
#endif

/* x86-64 builds target the baseline (SSE2) and add AVX/AVX2 versions picked
 * at load time (glibc ifunc), so one build runs on any x86-64 CPU. */
#if defined(__x86_64__) && defined(__linux__) && defined(__GLIBC__) && defined(__has_attribute)
#if __has_attribute(target_clones)
#define MIX_CLONES __attribute__((target_clones("avx2", "avx", "default")))
#endif
#endif
#ifndef MIX_CLONES
#define MIX_CLONES
#endif

/* Round half to even for |v| <= 2^22 (float) or 2^51 (double): the sum with
 * 1.5 * 2^23 (1.5 * 2^52) has no fraction bits, so the add rounds in the
 * current mode like rint, and unlike rint it vectorises on plain SSE2. Values
 * are clipped first: rint and clipping to integer bounds commute. */
static ALWAYS_INLINE float round_f32(float v) { return (v + 12582912.0f) - 12582912.0f; }
static ALWAYS_INLINE double round_f64(double v) { return (v + 6755399441055744.0) - 6755399441055744.0; }

/* Two unconditional compares against bounds passed at run time: with
 * constant bounds GCC folds the rounding into the branches and the loop no
 * longer vectorises. */
#define CLIP(v, lo, hi) ((v) = (v) > (lo) ? (v) : (lo), (v) < (hi) ? (v) : (hi))

#define FIN_FLOAT(T, v, lo, hi) ((void)(lo), (void)(hi), (v))
#define FIN_ROUND32(T, v, lo, hi) ((T)round_f32(CLIP(v, lo, hi)))
#define FIN_ROUND64(T, v, lo, hi) ((T)round_f64(CLIP(v, lo, hi)))
#define FIN_RINT(T, v, lo, hi) ((T)rint(CLIP(v, lo, hi)))

/* One row loop for out distinct from a, one for out == a (in-place mixing):
 * each can then promise the compiler its pointers do not alias. */
#define DEFINE_KERNEL(NAME, T, W, FIN)                                                   \
    static ALWAYS_INLINE void NAME##_row(T *restrict o, const T *restrict x,             \
                                         const T *restrict y, W l, W r, W lo, W hi,      \
                                         Py_ssize_t m)                                   \
    {                                                                                    \
        for (Py_ssize_t k = 0; k < m; k++) {                                             \
            W v = l * (W)x[k] + r * (W)y[k];                                             \
            o[k] = FIN(T, v, lo, hi);                                                    \
        }                                                                                \
    }                                                                                    \
    static ALWAYS_INLINE void NAME##_row_inplace(T *restrict o, const T *restrict y,     \
                                                 W l, W r, W lo, W hi, Py_ssize_t m)     \
    {                                                                                    \
        for (Py_ssize_t k = 0; k < m; k++) {                                             \
            W v = l * (W)o[k] + r * (W)y[k];                                             \
            o[k] = FIN(T, v, lo, hi);                                                    \
        }                                                                                \
    }                                                                                    \
    MIX_CLONES static void NAME##_rows(void *out_, const void *a_, const void *b_,      \
                                       const int64_t *index, const void *lam_,           \
                                       const void *rest_, double lo_, double hi_,        \
                                       Py_ssize_t n, Py_ssize_t m)                       \
    {                                                                                    \
        T *out = (T *)out_;                                                              \
        const T *a = (const T *)a_, *b = (const T *)b_;                                  \
        const W *lam = (const W *)lam_, *rest = (const W *)rest_;                        \
        const W lo = (W)lo_, hi = (W)hi_;                                                \
        const int inplace = out == a;                                                    \
        for (Py_ssize_t i = 0; i < n; i++) {                                             \
            const T *y = b + (index ? (Py_ssize_t)index[i] : i) * m;                     \
            if (inplace)                                                                 \
                NAME##_row_inplace(out + i * m, y, lam[i], rest[i], lo, hi, m);          \
            else                                                                         \
                NAME##_row(out + i * m, a + i * m, y, lam[i], rest[i], lo, hi, m);       \
        }                                                                                \
    }

DEFINE_KERNEL(f32, float, float, FIN_FLOAT)
DEFINE_KERNEL(f64, double, double, FIN_FLOAT)
DEFINE_KERNEL(u8, uint8_t, float, FIN_ROUND32)
DEFINE_KERNEL(i8, int8_t, float, FIN_ROUND32)
DEFINE_KERNEL(u16, uint16_t, float, FIN_ROUND32)
DEFINE_KERNEL(i16, int16_t, float, FIN_ROUND32)
DEFINE_KERNEL(i32, int32_t, double, FIN_ROUND64)
DEFINE_KERNEL(u32, uint32_t, double, FIN_ROUND64)

/* 64-bit integers: double holds them only to 53 bits, so near 2^63 the
 * float formula is off by thousands. Where both values are below 2^49 in
 * magnitude the float formula is within 1 of the exact result and is kept
 * (same bytes as before); elsewhere, for weights in [0, 1], the result is
 * computed exactly: round half to even of lam*a + (1-lam)*b, written as
 * base + w*(other - base) with w = min(lam, 1 - lam) (both exact doubles),
 * w = M * 2^-s and the product M*|other - base| in 128 bits. int64 values
 * are mapped to uint64 order-preservingly (flip the sign bit): an offset of
 * 2^63 passes through the convex combination and keeps parity.
 * core._exact_u64 is the same computation in numpy. */
#if defined(__SIZEOF_INT128__)
#define HAVE_EXACT64 1
#define BIG_LIMIT 562949953421312.0 /* 2^49 */
static ALWAYS_INLINE uint64_t exact_u64(uint64_t a, uint64_t b, double l)
{
    const int upper = l >= 0.5;
    const double w = upper ? 1.0 - l : l;
    const uint64_t base = upper ? a : b, other = upper ? b : a;
    const int neg = other < base;
    const uint64_t mag = neg ? base - other : other - base;
    int e;
    const double f = frexp(w, &e);
    const uint64_t M = (uint64_t)ldexp(f, 53);
    int s = 53 - e;
    if (s > 120) /* the product is below 2^117: rounds to 0 */
        s = 120;
    const unsigned __int128 P = (unsigned __int128)M * mag;
    uint64_t q = (uint64_t)(P >> s);
    const unsigned __int128 rem = P & ((((unsigned __int128)1) << s) - 1);
    const unsigned __int128 half = ((unsigned __int128)1) << (s - 1);
    if (rem > half || (rem == half && ((base ^ q) & 1)))
        q++;
    return neg ? base - q : base + q;
}
#define I64_BIG(v) ((v) < -562949953421312LL || (v) >= 562949953421312LL)
#define U64_BIG(v) ((v) >= 562949953421312ULL)
#define I64_EXACT(x, y, l) ((int64_t)(exact_u64((uint64_t)(x) ^ 0x8000000000000000ULL, \
                                                 (uint64_t)(y) ^ 0x8000000000000000ULL, l) \
                                       ^ 0x8000000000000000ULL))
#define U64_EXACT(x, y, l) exact_u64((x), (y), (l))

#define DEFINE_KERNEL64(NAME, T, BIG, EXACT)                                             \
    static ALWAYS_INLINE void NAME##_row(T *o, const T *x, const T *y, double l,         \
                                         double r, double lo, double hi, Py_ssize_t m)   \
    {                                                                                    \
        int exact = l >= 0.0 && l <= 1.0;                                                \
        if (exact) { /* a vectorised scan first: most rows have no large value */        \
            int big = 0;                                                                 \
            for (Py_ssize_t k = 0; k < m; k++)                                           \
                big |= BIG(x[k]) | BIG(y[k]);                                            \
            exact = big;                                                                 \
        }                                                                                \
        if (!exact) {                                                                    \
            for (Py_ssize_t k = 0; k < m; k++) {                                         \
                double v = l * (double)x[k] + r * (double)y[k];                          \
                o[k] = FIN_RINT(T, v, lo, hi);                                           \
            }                                                                            \
            return;                                                                      \
        }                                                                                \
        for (Py_ssize_t k = 0; k < m; k++) {                                             \
            const T xa = x[k], xb = y[k];                                                \
            if (BIG(xa) || BIG(xb)) {                                                    \
                o[k] = EXACT(xa, xb, l);                                                 \
            }                                                                            \
            else {                                                                       \
                double v = l * (double)xa + r * (double)xb;                              \
                o[k] = FIN_RINT(T, v, lo, hi);                                           \
            }                                                                            \
        }                                                                                \
    }                                                                                    \
    MIX_CLONES static void NAME##_rows(void *out_, const void *a_, const void *b_,       \
                            const int64_t *index, const void *lam_, const void *rest_,   \
                            double lo, double hi, Py_ssize_t n, Py_ssize_t m)            \
    {                                                                                    \
        T *out = (T *)out_;                                                              \
        const T *a = (const T *)a_, *b = (const T *)b_;                                  \
        const double *lam = (const double *)lam_, *rest = (const double *)rest_;         \
        for (Py_ssize_t i = 0; i < n; i++) {                                             \
            const T *y = b + (index ? (Py_ssize_t)index[i] : i) * m;                     \
            NAME##_row(out + i * m, a + i * m, y, lam[i], rest[i], lo, hi, m);           \
        }                                                                                \
    }

DEFINE_KERNEL64(i64, int64_t, I64_BIG, I64_EXACT)
DEFINE_KERNEL64(u64, uint64_t, U64_BIG, U64_EXACT)
#else
/* Without 128-bit integers the kernel declines 64-bit integers (numpy mixes them). */
#define HAVE_EXACT64 0
DEFINE_KERNEL(i64, int64_t, double, FIN_RINT)
DEFINE_KERNEL(u64, uint64_t, double, FIN_RINT)
#endif

typedef void (*rows_fn)(void *, const void *, const void *, const int64_t *, const void *,
                        const void *, double, double, Py_ssize_t, Py_ssize_t);

enum { K_F32, K_F64, K_U8, K_I8, K_U16, K_I16, K_I32, K_U32, K_I64, K_U64, K_NONE };

/* Integer bounds as in core.integer_bounds: the 64-bit maxima are not
 * doubles, so the largest doubles below them (2^63 - 1024, 2^64 - 2048). */
static const struct {
    rows_fn fn;
    int work; /* K_F32 or K_F64 */
    int integer;
    double lo, hi;
} KINDS[] = {
    [K_F32] = {f32_rows, K_F32, 0, 0.0, 0.0},
    [K_F64] = {f64_rows, K_F64, 0, 0.0, 0.0},
    [K_U8] = {u8_rows, K_F32, 1, 0.0, 255.0},
    [K_I8] = {i8_rows, K_F32, 1, -128.0, 127.0},
    [K_U16] = {u16_rows, K_F32, 1, 0.0, 65535.0},
    [K_I16] = {i16_rows, K_F32, 1, -32768.0, 32767.0},
    [K_I32] = {i32_rows, K_F64, 1, -2147483648.0, 2147483647.0},
    [K_U32] = {u32_rows, K_F64, 1, 0.0, 4294967295.0},
    [K_I64] = {i64_rows, K_F64, 1, -9223372036854775808.0, 9223372036854774784.0},
    [K_U64] = {u64_rows, K_F64, 1, 0.0, 18446744073709549568.0},
};

/* The element type of a buffer from its struct format and item size. */
static int buffer_kind(const Py_buffer *v)
{
    const char *f = v->format;
    if (f == NULL)
        return K_NONE;
    if (*f == '@' || *f == '=' || *f == (PY_LITTLE_ENDIAN ? '<' : '>'))
        f++;
    if (f[0] == '\0' || f[1] != '\0')
        return K_NONE;
    switch (f[0]) {
    case 'f':
        return v->itemsize == 4 ? K_F32 : K_NONE;
    case 'd':
        return v->itemsize == 8 ? K_F64 : K_NONE;
    case 'b': case 'h': case 'i': case 'l': case 'q': case 'n':
        switch (v->itemsize) {
        case 1: return K_I8;
        case 2: return K_I16;
        case 4: return K_I32;
        case 8: return K_I64;
        }
        return K_NONE;
    case 'B': case 'H': case 'I': case 'L': case 'Q': case 'N':
        switch (v->itemsize) {
        case 1: return K_U8;
        case 2: return K_U16;
        case 4: return K_U32;
        case 8: return K_U64;
        }
        return K_NONE;
    }
    return K_NONE;
}

static int overlap(const Py_buffer *p, const Py_buffer *q)
{
    const char *a = p->buf, *b = q->buf;
    return p->len > 0 && q->len > 0 && a < b + q->len && b < a + p->len;
}

/* Calls this short keep the GIL: giving it up would let another thread hold
 * it for up to the interpreter's switch interval before this one gets it back. */
#define GIL_FREE_BYTES (64 * 1024)

PyDoc_STRVAR(mix_doc,
"mix(out, a, b, index, lam, rest, row_size) -> bool\n\n"
"out[i] = lam[i]*a[i] + rest[i]*b[index[i] or i] for C-contiguous buffers of one\n"
"element type, rows of row_size elements; lam and rest in the working type\n"
"(float32 for float32 and 8/16-bit integers, float64 otherwise), index int64 or\n"
"None. out may be a itself. Returns False, computing nothing, where numpy must\n"
"do it instead: out overlapping b or part of a, or (integers) weights so large\n"
"that the result is not finite.");

static PyObject *mix(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    enum { OUT, A, B, INDEX, LAM, REST, NBUF };
    Py_buffer views[NBUF];
    int held[NBUF] = {0};
    PyObject *result = NULL;
    if (nargs != 7) {
        PyErr_Format(PyExc_TypeError, "mix() takes 7 arguments (%zd given)", nargs);
        return NULL;
    }
    Py_ssize_t m = PyLong_AsSsize_t(args[6]);
    if (m == -1 && PyErr_Occurred())
        return NULL;
    if (m < 0) {
        PyErr_SetString(PyExc_ValueError, "row_size must be >= 0");
        return NULL;
    }
    const int has_index = args[INDEX] != Py_None;
    for (int k = 0; k < NBUF; k++) {
        if (k == INDEX && !has_index)
            continue;
        int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (k == OUT ? PyBUF_WRITABLE : 0);
        if (PyObject_GetBuffer(args[k], &views[k], flags) < 0)
            goto done;
        held[k] = 1;
    }

    const int kind = buffer_kind(&views[A]);
    if (kind == K_NONE) {
        PyErr_Format(PyExc_TypeError, "unsupported element type '%s'",
                     views[A].format ? views[A].format : "B");
        goto done;
    }
    if (buffer_kind(&views[OUT]) != kind || buffer_kind(&views[B]) != kind) {
        PyErr_SetString(PyExc_TypeError, "out, a and b must have the same element type");
        goto done;
    }
    const int work = KINDS[kind].work;
    if (buffer_kind(&views[LAM]) != work || buffer_kind(&views[REST]) != work
        || views[LAM].ndim != 1 || views[REST].ndim != 1) {
        PyErr_Format(PyExc_TypeError, "lam and rest must be 1-d %s",
                     work == K_F32 ? "float32" : "float64");
        goto done;
    }
    const Py_ssize_t n = views[LAM].shape[0];
    if (views[REST].shape[0] != n) {
        PyErr_SetString(PyExc_ValueError, "lam and rest differ in length");
        goto done;
    }
    const Py_ssize_t item = views[A].itemsize;
    if (m > PY_SSIZE_T_MAX / item || (m > 0 && n > PY_SSIZE_T_MAX / (m * item))) {
        PyErr_SetString(PyExc_ValueError, "sizes overflow");
        goto done;
    }
    const Py_ssize_t row_bytes = m * item;
    if (views[A].len != n * row_bytes || views[OUT].len != n * row_bytes) {
        PyErr_Format(PyExc_ValueError, "a and out must hold %zd rows of %zd elements", n, m);
        goto done;
    }
    const int64_t *index = NULL;
    if (has_index) {
        if (buffer_kind(&views[INDEX]) != K_I64 || views[INDEX].ndim != 1
            || views[INDEX].shape[0] != n) {
            PyErr_Format(PyExc_TypeError, "index must be 1-d int64 of length %zd", n);
            goto done;
        }
        if (row_bytes > 0 && views[B].len % row_bytes != 0) {
            PyErr_Format(PyExc_ValueError, "b must hold whole rows of %zd elements", m);
            goto done;
        }
        const Py_ssize_t pool = row_bytes > 0 ? views[B].len / row_bytes : 0;
        index = (const int64_t *)views[INDEX].buf;
        if (row_bytes > 0) {
            for (Py_ssize_t i = 0; i < n; i++) {
                if (index[i] < 0 || index[i] >= pool) {
                    PyErr_Format(PyExc_IndexError, "partner index out of range for %zd rows", pool);
                    goto done;
                }
            }
        }
    }
    else if (views[B].len != n * row_bytes) {
        PyErr_Format(PyExc_ValueError, "b must hold %zd rows of %zd elements", n, m);
        goto done;
    }

    if (overlap(&views[OUT], &views[B])
        || (overlap(&views[OUT], &views[A]) && views[OUT].buf != views[A].buf)) {
        result = Py_False;
        goto done;
    }
    if (!HAVE_EXACT64 && (kind == K_I64 || kind == K_U64)) {
        result = Py_False;
        goto done;
    }
    if (KINDS[kind].integer) {
        /* Bounded weights keep every result finite, so clipping and the
         * conversion to integer are defined; numpy handles the rest. */
        for (Py_ssize_t i = 0; i < n; i++) {
            double l, r;
            if (work == K_F32) {
                l = ((const float *)views[LAM].buf)[i];
                r = ((const float *)views[REST].buf)[i];
            }
            else {
                l = ((const double *)views[LAM].buf)[i];
                r = ((const double *)views[REST].buf)[i];
            }
            if (!(fabs(l) <= 1e30 && fabs(r) <= 1e30)) {
                result = Py_False;
                goto done;
            }
        }
    }

    if (n > 0 && m > 0) {
        rows_fn fn = KINDS[kind].fn;
        const double lo = KINDS[kind].lo, hi = KINDS[kind].hi;
        void *out = views[OUT].buf;
        const void *a = views[A].buf, *b = views[B].buf, *lam = views[LAM].buf,
                   *rest = views[REST].buf;
        if (n * row_bytes >= GIL_FREE_BYTES) {
            Py_BEGIN_ALLOW_THREADS
            fn(out, a, b, index, lam, rest, lo, hi, n, m);
            Py_END_ALLOW_THREADS
        }
        else {
            fn(out, a, b, index, lam, rest, lo, hi, n, m);
        }
    }
    result = Py_True;

done:
    for (int k = 0; k < NBUF; k++)
        if (held[k])
            PyBuffer_Release(&views[k]);
    Py_XINCREF(result);
    return result;
}

static PyMethodDef methods[] = {
    {"mix", (PyCFunction)(void (*)(void))mix, METH_FASTCALL, mix_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "mixup_cli._kernel",
    "Single-pass mixup loop behind mixup_cli.core (see core._mix).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__kernel(void)
{
    PyObject *mod = PyModule_Create(&module);
    if (mod != NULL && PyModule_AddIntConstant(mod, "VERSION", KERNEL_VERSION) < 0) {
        Py_DECREF(mod);
        return NULL;
    }
    return mod;
}

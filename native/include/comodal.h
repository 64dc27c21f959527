/*
 * comodal.h — the whole ABI of the comodal native library.
 *
 * Two libraries implement this header with the same symbols:
 *   libcomodal_cpu.so   (oneDNN + C++ kernels)
 *   libcomodal_cuda.so  (cuDNN + CUDA kernels; built only where nvcc exists)
 * The TypeScript side (src/backend/ffi.ts) binds exactly these symbols.
 *
 * Conventions
 * - Every call returns cmo_status; on failure cmo_last_error() returns a thread-local message that
 *   names the op, the shapes and what was expected.
 * - Tensors are opaque buffers that know their backend, shape, dtype and layout. The API layout is
 *   NCDHW (row-major, "plain"). A backend may store a 5-D float tensor whose channel count is a
 *   multiple of 16 in a blocked layout (CMO_LAYOUT_BLOCKED16 = oneDNN nCdhw16c); there is never
 *   padding, so a blocked tensor is a permutation of the plain one. cmo_buffer_write/read always
 *   take and give plain NCDHW host data and convert at that edge.
 * - Ops run through one entry point, cmo_op_execute, with an op id from CMO_OP_LIST, input buffers,
 *   output slots and one params struct. Every params struct consists of 8-byte fields only
 *   (int64_t or double), so the TypeScript side packs them without padding rules.
 * - Output slots: a NULL slot is allocated by the op (shape computed from inputs and params, layout
 *   chosen by the backend) and written (=). A non-NULL slot must have the right shape and dtype.
 *   Activation gradients and forward outputs are always overwritten (=).
 *   Parameter gradients (conv/deconv dW and db, norm dgamma and dbeta) ACCUMULATE (+=) into a
 *   non-NULL slot, and are written (=) into a slot the op allocates.
 * - Buffers are reference-free: the caller releases each buffer exactly once with cmo_buffer_release.
 */
#ifndef COMODAL_H
#define COMODAL_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define CMO_ABI_VERSION 2
#define CMO_MAX_DIMS 6

typedef enum {
  CMO_OK = 0,
  CMO_ERR_INVALID_ARGUMENT = 1, /* bad shape, dtype, layout, params */
  CMO_ERR_UNSUPPORTED = 2,      /* op or variant not implemented by this backend */
  CMO_ERR_OUT_OF_MEMORY = 3,    /* message gives requested and free bytes */
  CMO_ERR_NO_DEVICE = 4,        /* e.g. "no CUDA device" */
  CMO_ERR_BACKEND = 5,          /* oneDNN / cuDNN / CUDA runtime failure, message carries theirs */
  CMO_ERR_INTERNAL = 6
} cmo_status;

typedef enum { CMO_DTYPE_F32 = 0, CMO_DTYPE_I32 = 1, CMO_DTYPE_U8 = 2 } cmo_dtype;

typedef enum {
  CMO_LAYOUT_PLAIN = 0,     /* row-major over dims as given (NCDHW for 5-D) */
  CMO_LAYOUT_BLOCKED16 = 1, /* 5-D f32, C % 16 == 0: [N][C/16][D][H][W][16] */
  CMO_LAYOUT_ANY = 2        /* only in cmo_buffer_create: let the backend choose */
} cmo_layout;

typedef enum { CMO_DEVICE_CPU = 0, CMO_DEVICE_CUDA = 1 } cmo_device;

typedef struct cmo_backend cmo_backend; /* opaque */
typedef struct cmo_buffer cmo_buffer;   /* opaque */

typedef struct {
  int64_t ndim;
  int64_t dims[CMO_MAX_DIMS];
  int64_t dtype;  /* cmo_dtype */
  int64_t layout; /* cmo_layout */
} cmo_tensor_desc;

typedef struct {
  int64_t live_buffers;  /* buffers created and not yet released */
  int64_t live_bytes;    /* bytes held by those buffers */
  int64_t peak_bytes;    /* high-water mark of live_bytes since create / reset */
  int64_t pool_bytes;    /* bytes of released blocks the allocator keeps for reuse (not in use) */
  int64_t device_total_bytes; /* device memory (CUDA) or 0 */
  int64_t device_free_bytes;  /* free device memory (CUDA) or 0 */
  int64_t reserved_bytes; /* bytes the allocator holds: blocks in use (rounded up) + pool_bytes (the
                             counterpart of PyTorch's memory_reserved) */
} cmo_memory_stats;

/* ---------------------------------------------------------------- library */
int32_t cmo_abi_version(void);
/* The device this library serves (cmo_device). */
int32_t cmo_library_device(void);
/* Human-readable version string, e.g. "comodal-cpu 0.1.0 (oneDNN 2.6.3)". */
const char* cmo_version_string(void);
/* Thread-local message of the last failed call on this thread ("" if none). */
const char* cmo_last_error(void);

/* ---------------------------------------------------------------- backend */
/* CPU: device_index must be 0. CUDA: CMO_ERR_NO_DEVICE with "no CUDA device" when none exists. */
cmo_status cmo_backend_create(int32_t device_index, cmo_backend** out);
cmo_status cmo_backend_destroy(cmo_backend* backend);
/* CPU: number of threads used by kernels (0 = all cores). CUDA: ignored. */
cmo_status cmo_backend_set_threads(cmo_backend* backend, int32_t threads);
/* Deterministic mode: kernels must give bit-identical results run to run (CUDA: deterministic
 * cuDNN algorithms, no atomics in reductions). */
cmo_status cmo_backend_set_deterministic(cmo_backend* backend, int32_t on);
/* 1 if this backend implements op_id (a CMO_OP_* value), else 0. */
int32_t cmo_backend_supports_op(cmo_backend* backend, int32_t op_id);
cmo_status cmo_backend_memory_stats(cmo_backend* backend, cmo_memory_stats* out);
cmo_status cmo_backend_reset_peak(cmo_backend* backend);
/* Waits for queued work (CUDA stream). CPU: no-op. */
cmo_status cmo_backend_synchronize(cmo_backend* backend);
/* Frees cached primitives/algorithms and pooled memory not in use. */
cmo_status cmo_backend_trim(cmo_backend* backend);

/* ---------------------------------------------------------------- buffers */
/* Contents are uninitialised. layout CMO_LAYOUT_ANY lets the backend choose. */
cmo_status cmo_buffer_create(cmo_backend* backend, const cmo_tensor_desc* desc, cmo_buffer** out);
cmo_status cmo_buffer_release(cmo_buffer* buffer);
cmo_status cmo_buffer_describe(const cmo_buffer* buffer, cmo_tensor_desc* out);
/* Copies bytes of plain row-major host data in (bytes must equal the tensor's size). */
cmo_status cmo_buffer_write(cmo_buffer* buffer, const void* host, int64_t bytes);
/* Copies the tensor out as plain row-major host data. */
cmo_status cmo_buffer_read(const cmo_buffer* buffer, void* host, int64_t bytes);

/* ---------------------------------------------------------------- ops
 * X(id, NAME, n_inputs, n_outputs, params struct)   (n = -1: variable)
 * Inputs and outputs are listed in the comment of each params struct below.
 */
#define CMO_OP_LIST(X)                                                       \
  X(1, CONV3D_FORWARD, 3, 1, cmo_conv3d_params)                              \
  X(2, CONV3D_BACKWARD_DATA, 2, 1, cmo_conv3d_params)                        \
  X(3, CONV3D_BACKWARD_WEIGHTS, 2, 2, cmo_conv3d_params)                     \
  X(4, CONV_TRANSPOSE3D_FORWARD, 3, 1, cmo_conv3d_params)                    \
  X(5, CONV_TRANSPOSE3D_BACKWARD_DATA, 2, 1, cmo_conv3d_params)              \
  X(6, CONV_TRANSPOSE3D_BACKWARD_WEIGHTS, 2, 2, cmo_conv3d_params)           \
  X(7, GROUP_NORM_FORWARD, 3, 3, cmo_group_norm_params)                      \
  X(8, GROUP_NORM_BACKWARD, 6, 3, cmo_group_norm_params)                     \
  X(9, UNARY_FORWARD, 1, 1, cmo_unary_params)                                \
  X(10, UNARY_BACKWARD, 2, 1, cmo_unary_params)                              \
  X(11, BINARY, 2, 1, cmo_binary_params)                                     \
  X(12, AFFINE_SCALAR, 1, 1, cmo_affine_scalar_params)                       \
  X(13, CONCAT, -1, 1, cmo_axis_params)                                      \
  X(14, SLICE, 1, 1, cmo_slice_params)                                       \
  X(15, MATMUL, 2, 1, cmo_matmul_params)                                     \
  X(16, SOFTMAX_FORWARD, 1, 1, cmo_axis_params)                              \
  X(17, SOFTMAX_BACKWARD, 2, 1, cmo_axis_params)                             \
  X(18, REDUCE, 1, 1, cmo_reduce_params)                                     \
  X(19, EXPAND, 1, 1, cmo_shape_params)                                      \
  X(20, ADAPTIVE_AVG_POOL3D_FORWARD, 1, 1, cmo_pool_params)                  \
  X(21, ADAPTIVE_AVG_POOL3D_BACKWARD, 1, 1, cmo_pool_params)                 \
  X(22, L2_NORMALIZE_FORWARD, 1, 1, cmo_l2_normalize_params)                 \
  X(23, L2_NORMALIZE_BACKWARD, 2, 1, cmo_l2_normalize_params)                \
  X(24, SOFTMAX_CROSS_ENTROPY_FORWARD, 2, 2, cmo_cross_entropy_params)       \
  X(25, SOFTMAX_CROSS_ENTROPY_BACKWARD, 3, 1, cmo_cross_entropy_params)      \
  X(26, DICE_STATS_FORWARD, 2, 1, cmo_dice_params)                           \
  X(27, DICE_STATS_BACKWARD, 3, 1, cmo_dice_params)                          \
  X(28, SGD_UPDATE, 3, 0, cmo_sgd_params)                                    \
  X(29, ADAMW_UPDATE, 4, 0, cmo_adamw_params)                                \
  X(30, EMA_UPDATE, 2, 0, cmo_ema_params)                                    \
  X(31, ARGMAX, 1, 1, cmo_axis_params)                                       \
  X(32, COPY, 1, 1, cmo_copy_params)                                         \
  X(33, FILL, 0, 1, cmo_fill_params)                                         \
  X(34, REDUCE_MAX_BACKWARD, 3, 1, cmo_reduce_params)                        \
  X(35, RESHAPE, 1, 1, cmo_shape_params)                                     \
  X(36, PERMUTE, 1, 1, cmo_permute_params)

typedef enum {
#define CMO_OP_ENUM_(id, name, nin, nout, params) CMO_OP_##name = id,
  CMO_OP_LIST(CMO_OP_ENUM_)
#undef CMO_OP_ENUM_
  CMO_OP_COUNT_PLUS_ONE
} cmo_op;

/* CONV3D_FORWARD            in: x[N,Ci,D,H,W], w[Co,Ci,kd,kh,kw], b[Co] (b may be a NULL input)
 *                           out: y[N,Co,...]
 * CONV3D_BACKWARD_DATA      in: dy, w                      out: dx (=); x shape from params.in_dims
 * CONV3D_BACKWARD_WEIGHTS   in: x, dy                      out: dw (+= if given), db (+= if given;
 *                           a NULL output slot for db with has_bias = 0 is left NULL)
 * CONV_TRANSPOSE3D_*        same roles; w is [Ci,Co,kd,kh,kw] (PyTorch layout), y = deconv(x).
 *   in_dims: the spatial dims of the forward input x (needed by BACKWARD_DATA to size dx). */
typedef struct {
  int64_t stride[3];
  int64_t padding[3];
  int64_t dilation[3]; /* 1 = dense */
  int64_t has_bias;
  int64_t in_dims[3];
} cmo_conv3d_params;

/* GROUP_NORM_FORWARD   in: x[N,C,...], gamma[C], beta[C]   out: y = act(norm(x)), mean[N,G], rstd[N,G]
 * GROUP_NORM_BACKWARD  in: x, dy, gamma, mean, rstd, beta    out: dx (=), dgamma (+=), dbeta (+=)
 * Instance norm is groups == C. Biased variance, as PyTorch.
 * activation fuses a ReLU or leaky ReLU after the affine step (one pass over memory, and the
 * pre-activation tensor is never stored: backward recomputes it from x, so beta is then a required
 * input; with CMO_NORM_ACT_NONE beta may be NULL). dy is the gradient of the activated output. */
typedef enum {
  CMO_NORM_ACT_NONE = 0,
  CMO_NORM_ACT_RELU = 1,
  CMO_NORM_ACT_LEAKY_RELU = 2 /* alpha = negative slope */
} cmo_norm_activation;

typedef struct {
  int64_t groups;
  double eps;
  int64_t activation; /* cmo_norm_activation */
  double alpha;
} cmo_group_norm_params;

typedef enum {
  CMO_UNARY_RELU = 0,
  CMO_UNARY_LEAKY_RELU = 1, /* alpha = negative slope */
  CMO_UNARY_SIGMOID = 2,
  CMO_UNARY_GELU = 3,       /* exact (erf) GELU */
  CMO_UNARY_EXP = 4,
  CMO_UNARY_LOG = 5,
  CMO_UNARY_TANH = 6,
  CMO_UNARY_SQRT = 7,
  CMO_UNARY_ABS = 8,
  CMO_UNARY_NEG = 9
} cmo_unary_kind;

/* UNARY_FORWARD   in: x            out: y
 * UNARY_BACKWARD  in: x, dy        out: dx (=)   (always from the forward INPUT x) */
typedef struct {
  int64_t kind; /* cmo_unary_kind */
  double alpha;
} cmo_unary_params;

typedef enum {
  CMO_BINARY_ADD = 0,
  CMO_BINARY_SUB = 1,
  CMO_BINARY_MUL = 2,
  CMO_BINARY_DIV = 3,
  CMO_BINARY_MAXIMUM = 4,
  CMO_BINARY_EQUAL = 5 /* 1.0 where a == b else 0.0 */
} cmo_binary_kind;

/* BINARY  in: a, b   out: y, NumPy broadcasting of a and b (right-aligned dims). Any shapes for
 * plain tensors; a blocked tensor combines directly with a same-shape tensor, a per-channel
 * [1,C,1,1,1] (or [C,1,1,1]) tensor, or a one-element tensor (other shapes go through a plain
 * copy). Note that under NumPy rules a [C] operand lines up with W, not with channels.
 * The output slot may be the input a itself when the shapes are equal (in-place accumulation). */
typedef struct {
  int64_t kind; /* cmo_binary_kind */
} cmo_binary_params;

/* AFFINE_SCALAR  in: x   out: y = alpha * x + beta */
typedef struct {
  double alpha;
  double beta;
} cmo_affine_scalar_params;

/* CONCAT   in: x_0..x_{n-1} (same dims except axis)   out: y
 * SOFTMAX_FORWARD  in: x out: y;   SOFTMAX_BACKWARD in: y, dy out: dx (=)
 * ARGMAX   in: x   out: y (I32), dims of x with dims[axis] = 1 */
typedef struct {
  int64_t axis;
} cmo_axis_params;

/* SLICE  in: x   out: y = x[..., start:start+length, ...] along axis */
typedef struct {
  int64_t axis;
  int64_t start;
  int64_t length;
} cmo_slice_params;

/* MATMUL  in: a[B,M,K] (or [B,K,M] if trans_a), b[B,K,N] (or [B,N,K] if trans_b)  out: y[B,M,N].
 * Rank-2 inputs are B = 1. A batch dim of 1 broadcasts against B. */
typedef struct {
  int64_t trans_a;
  int64_t trans_b;
} cmo_matmul_params;

typedef enum { CMO_REDUCE_SUM = 0, CMO_REDUCE_MEAN = 1, CMO_REDUCE_MAX = 2 } cmo_reduce_kind;

/* REDUCE  in: x   out: y with reduced dims kept as size 1 (the caller reshapes).
 *   axes_mask bit i set = reduce dim i.
 * REDUCE_MAX_BACKWARD  in: x, y (the forward max), dy   out: dx (=); gradient goes to every
 *   position equal to the max, divided by the number of ties. */
typedef struct {
  int64_t kind; /* cmo_reduce_kind */
  int64_t axes_mask;
} cmo_reduce_params;

/* EXPAND   in: x (broadcastable to shape)   out: y of the given shape (NumPy broadcasting)
 * RESHAPE  in: x   out: y PLAIN with the given shape (same element count), elements in row-major
 *          order of x's logical shape (a blocked x is converted) */
typedef struct {
  int64_t ndim;
  int64_t dims[CMO_MAX_DIMS];
} cmo_shape_params;

/* PERMUTE  in: x   out: y PLAIN with y.dims[i] = x.dims[order[i]] and
 *          y[i_0, .., i_{n-1}] = x[j] where j[order[k]] = i_k (PyTorch's x.permute(order));
 *          ndim must equal x's rank and order must hold each of 0..ndim-1 once. Any dtype; a blocked
 *          x is read in place. The gradient is PERMUTE of dy by the inverse order (no backward op). */
typedef struct {
  int64_t ndim;
  int64_t order[CMO_MAX_DIMS];
} cmo_permute_params;

/* ADAPTIVE_AVG_POOL3D_FORWARD   in: x[N,C,D,H,W]   out: y[N,C,od,oh,ow] (PyTorch bin rule:
 *   start = floor(i*In/Out), end = ceil((i+1)*In/Out))
 * ADAPTIVE_AVG_POOL3D_BACKWARD  in: dy   out: dx (=) with spatial dims in_dims */
typedef struct {
  int64_t out_dims[3];
  int64_t in_dims[3];
} cmo_pool_params;

/* L2_NORMALIZE_FORWARD   in: x   out: y = x / max(||x||_axis, eps)
 * L2_NORMALIZE_BACKWARD  in: x, dy   out: dx (=) */
typedef struct {
  int64_t axis;
  double eps;
} cmo_l2_normalize_params;

/* SOFTMAX_CROSS_ENTROPY_FORWARD   in: logits[N,K,...] F32, labels[N,...] or [N,1,...] I32
 *                                 out: loss[1] (mean over non-ignored positions), probs[N,K,...]
 * SOFTMAX_CROSS_ENTROPY_BACKWARD  in: probs, labels, dloss[1]   out: dlogits (=)
 * Positions whose label == ignore_index contribute nothing; a label outside 0..K-1 that is not
 * ignore_index is CMO_ERR_INVALID_ARGUMENT. If every position is ignored, loss = 0. */
typedef struct {
  int64_t ignore_index;
} cmo_cross_entropy_params;

/* DICE_STATS_FORWARD   in: probs[N,K,...] F32, target: labels[N,...]/[N,1,...] I32 (one-hot implied)
 *                          or soft targets [N,K,...] F32
 *                      out: stats[3,K]: row 0 = sum p*t, row 1 = sum p, row 2 = sum t (over N and
 *                           all spatial positions; batch Dice)
 * DICE_STATS_BACKWARD  in: probs, target, dstats[3,K]   out: dprobs (=)  (target gets no gradient)
 * With labels, positions whose label == ignore_index take no part in any of the three sums and get
 * dprobs 0; a label outside 0..K-1 that is not ignore_index is CMO_ERR_INVALID_ARGUMENT. Soft targets
 * have no ignored positions. */
typedef struct {
  int64_t ignore_index;
} cmo_dice_params;

/* SGD_UPDATE   in: param, grad, momentum_buf (all updated in place, no outputs)
 *   v = momentum * v + (grad + weight_decay * param); param -= lr * (nesterov ? grad' + momentum*v : v) */
typedef struct {
  double lr;
  double momentum;
  double weight_decay;
  int64_t nesterov;
} cmo_sgd_params;

/* ADAMW_UPDATE  in: param, grad, m, v (param, m, v updated in place)
 *   param -= lr * weight_decay * param; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
 *   param -= lr * (m / (1-b1^step)) / (sqrt(v / (1-b2^step)) + eps)     (PyTorch AdamW) */
typedef struct {
  double lr;
  double beta1;
  double beta2;
  double eps;
  double weight_decay;
  int64_t step; /* 1-based */
} cmo_adamw_params;

/* EMA_UPDATE  in: ema_param (updated in place), param:  ema = decay * ema + (1 - decay) * param */
typedef struct {
  double decay;
} cmo_ema_params;

/* COPY  in: x   out: y, same shape and dtype; layout = CMO_LAYOUT_PLAIN / BLOCKED16 / ANY (as x) */
typedef struct {
  int64_t layout;
} cmo_copy_params;

/* FILL  out slot must be given (non-NULL); every element = value (converted to the dtype) */
typedef struct {
  double value;
} cmo_fill_params;

/* Runs one op. inputs: n_inputs buffers (a NULL input is allowed only where documented).
 * outputs: n_outputs slots (see the conventions at the top). */
cmo_status cmo_op_execute(cmo_backend* backend, int32_t op, cmo_buffer* const* inputs,
                          int32_t n_inputs, cmo_buffer** outputs, int32_t n_outputs,
                          const void* params, int64_t params_bytes);

#ifdef __cplusplus
}
#endif

#endif /* COMODAL_H */

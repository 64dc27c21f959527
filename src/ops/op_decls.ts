/**
 * The native ops as data: one entry per CMO_OP_LIST row of native/include/comodal.h with the
 * fields of its params struct, in order. tests/op_list_test.ts checks the two lists agree.
 * @module
 */

/** One field of a params struct: every field is 8 bytes (int64_t or double); count > 1 for arrays. */
export interface ParamField {
  readonly name: string;
  readonly type: "i64" | "f64";
  readonly count: number;
}

/** Declaration of one native op. nInputs = -1 means a variable number of inputs. */
export interface OpDecl {
  readonly id: number;
  readonly name: string;
  readonly nInputs: number;
  readonly nOutputs: number;
  readonly paramsStruct: string;
  readonly params: readonly ParamField[];
}

const i64 = (name: string, count = 1): ParamField => ({ name, type: "i64", count });
const f64 = (name: string, count = 1): ParamField => ({ name, type: "f64", count });

/** Params structs of the header by C name, fields in declaration order. */
export const PARAMS_STRUCTS: Readonly<Record<string, readonly ParamField[]>> = {
  cmo_conv3d_params: [
    i64("stride", 3),
    i64("padding", 3),
    i64("dilation", 3),
    i64("has_bias"),
    i64("in_dims", 3),
  ],
  cmo_group_norm_params: [i64("groups"), f64("eps"), i64("activation"), f64("alpha")],
  cmo_unary_params: [i64("kind"), f64("alpha")],
  cmo_binary_params: [i64("kind")],
  cmo_affine_scalar_params: [f64("alpha"), f64("beta")],
  cmo_axis_params: [i64("axis")],
  cmo_slice_params: [i64("axis"), i64("start"), i64("length")],
  cmo_matmul_params: [i64("trans_a"), i64("trans_b")],
  cmo_reduce_params: [i64("kind"), i64("axes_mask")],
  cmo_shape_params: [i64("ndim"), i64("dims", 6)],
  cmo_permute_params: [i64("ndim"), i64("order", 6)],
  cmo_pool_params: [i64("out_dims", 3), i64("in_dims", 3)],
  cmo_l2_normalize_params: [i64("axis"), f64("eps")],
  cmo_cross_entropy_params: [i64("ignore_index")],
  cmo_dice_params: [i64("ignore_index")],
  cmo_sgd_params: [f64("lr"), f64("momentum"), f64("weight_decay"), i64("nesterov")],
  cmo_adamw_params: [
    f64("lr"),
    f64("beta1"),
    f64("beta2"),
    f64("eps"),
    f64("weight_decay"),
    i64("step"),
  ],
  cmo_ema_params: [f64("decay")],
  cmo_copy_params: [i64("layout")],
  cmo_fill_params: [f64("value")],
};

const ROWS: [number, string, number, number, string][] = [
  [1, "CONV3D_FORWARD", 3, 1, "cmo_conv3d_params"],
  [2, "CONV3D_BACKWARD_DATA", 2, 1, "cmo_conv3d_params"],
  [3, "CONV3D_BACKWARD_WEIGHTS", 2, 2, "cmo_conv3d_params"],
  [4, "CONV_TRANSPOSE3D_FORWARD", 3, 1, "cmo_conv3d_params"],
  [5, "CONV_TRANSPOSE3D_BACKWARD_DATA", 2, 1, "cmo_conv3d_params"],
  [6, "CONV_TRANSPOSE3D_BACKWARD_WEIGHTS", 2, 2, "cmo_conv3d_params"],
  [7, "GROUP_NORM_FORWARD", 3, 3, "cmo_group_norm_params"],
  [8, "GROUP_NORM_BACKWARD", 6, 3, "cmo_group_norm_params"],
  [9, "UNARY_FORWARD", 1, 1, "cmo_unary_params"],
  [10, "UNARY_BACKWARD", 2, 1, "cmo_unary_params"],
  [11, "BINARY", 2, 1, "cmo_binary_params"],
  [12, "AFFINE_SCALAR", 1, 1, "cmo_affine_scalar_params"],
  [13, "CONCAT", -1, 1, "cmo_axis_params"],
  [14, "SLICE", 1, 1, "cmo_slice_params"],
  [15, "MATMUL", 2, 1, "cmo_matmul_params"],
  [16, "SOFTMAX_FORWARD", 1, 1, "cmo_axis_params"],
  [17, "SOFTMAX_BACKWARD", 2, 1, "cmo_axis_params"],
  [18, "REDUCE", 1, 1, "cmo_reduce_params"],
  [19, "EXPAND", 1, 1, "cmo_shape_params"],
  [20, "ADAPTIVE_AVG_POOL3D_FORWARD", 1, 1, "cmo_pool_params"],
  [21, "ADAPTIVE_AVG_POOL3D_BACKWARD", 1, 1, "cmo_pool_params"],
  [22, "L2_NORMALIZE_FORWARD", 1, 1, "cmo_l2_normalize_params"],
  [23, "L2_NORMALIZE_BACKWARD", 2, 1, "cmo_l2_normalize_params"],
  [24, "SOFTMAX_CROSS_ENTROPY_FORWARD", 2, 2, "cmo_cross_entropy_params"],
  [25, "SOFTMAX_CROSS_ENTROPY_BACKWARD", 3, 1, "cmo_cross_entropy_params"],
  [26, "DICE_STATS_FORWARD", 2, 1, "cmo_dice_params"],
  [27, "DICE_STATS_BACKWARD", 3, 1, "cmo_dice_params"],
  [28, "SGD_UPDATE", 3, 0, "cmo_sgd_params"],
  [29, "ADAMW_UPDATE", 4, 0, "cmo_adamw_params"],
  [30, "EMA_UPDATE", 2, 0, "cmo_ema_params"],
  [31, "ARGMAX", 1, 1, "cmo_axis_params"],
  [32, "COPY", 1, 1, "cmo_copy_params"],
  [33, "FILL", 0, 1, "cmo_fill_params"],
  [34, "REDUCE_MAX_BACKWARD", 3, 1, "cmo_reduce_params"],
  [35, "RESHAPE", 1, 1, "cmo_shape_params"],
  [36, "PERMUTE", 1, 1, "cmo_permute_params"],
];

/** Names of the native ops, e.g. "CONV3D_FORWARD". */
export type OpName =
  | "CONV3D_FORWARD"
  | "CONV3D_BACKWARD_DATA"
  | "CONV3D_BACKWARD_WEIGHTS"
  | "CONV_TRANSPOSE3D_FORWARD"
  | "CONV_TRANSPOSE3D_BACKWARD_DATA"
  | "CONV_TRANSPOSE3D_BACKWARD_WEIGHTS"
  | "GROUP_NORM_FORWARD"
  | "GROUP_NORM_BACKWARD"
  | "UNARY_FORWARD"
  | "UNARY_BACKWARD"
  | "BINARY"
  | "AFFINE_SCALAR"
  | "CONCAT"
  | "SLICE"
  | "MATMUL"
  | "SOFTMAX_FORWARD"
  | "SOFTMAX_BACKWARD"
  | "REDUCE"
  | "EXPAND"
  | "ADAPTIVE_AVG_POOL3D_FORWARD"
  | "ADAPTIVE_AVG_POOL3D_BACKWARD"
  | "L2_NORMALIZE_FORWARD"
  | "L2_NORMALIZE_BACKWARD"
  | "SOFTMAX_CROSS_ENTROPY_FORWARD"
  | "SOFTMAX_CROSS_ENTROPY_BACKWARD"
  | "DICE_STATS_FORWARD"
  | "DICE_STATS_BACKWARD"
  | "SGD_UPDATE"
  | "ADAMW_UPDATE"
  | "EMA_UPDATE"
  | "ARGMAX"
  | "COPY"
  | "FILL"
  | "REDUCE_MAX_BACKWARD"
  | "RESHAPE"
  | "PERMUTE";

/** Every op of CMO_OP_LIST, in header order. */
export const OP_DECLS: readonly OpDecl[] = ROWS.map((
  [id, name, nInputs, nOutputs, paramsStruct],
) => ({
  id,
  name,
  nInputs,
  nOutputs,
  paramsStruct,
  params: PARAMS_STRUCTS[paramsStruct],
}));

const BY_NAME = new Map<string, OpDecl>(OP_DECLS.map((d) => [d.name, d]));

/** The declaration of a native op by name; throws for an unknown name. */
export function opDecl(name: OpName): OpDecl {
  const d = BY_NAME.get(name);
  if (!d) throw new Error(`Unknown native op "${name}": not in OP_DECLS`);
  return d;
}

/** Size in bytes of a params struct (every field is 8 bytes). */
export function paramsBytes(decl: OpDecl): number {
  let n = 0;
  for (const f of decl.params) n += 8 * f.count;
  return n;
}

/** Values for a params struct: a number (or bigint) per scalar field, an array for array fields. */
export type ParamValues = Record<string, number | bigint | readonly number[]>;

/**
 * Packs params values into `out` (little-endian, 8 bytes per field) following the decl's field
 * order. Missing fields are zero; array fields shorter than their count are zero-padded.
 * Returns the number of bytes written.
 */
export function packParams(decl: OpDecl, values: ParamValues, out: DataView): number {
  let off = 0;
  for (const f of decl.params) {
    const v = values[f.name];
    for (let k = 0; k < f.count; k++) {
      let x: number | bigint = 0;
      if (v === undefined) x = 0;
      else if (typeof v === "number" || typeof v === "bigint") {
        if (f.count !== 1) {
          throw new Error(`${decl.name}: params field ${f.name} needs ${f.count} values, got one`);
        }
        x = v;
      } else {
        if (v.length > f.count) {
          throw new Error(
            `${decl.name}: params field ${f.name} takes at most ${f.count} values, got ${v.length}`,
          );
        }
        x = k < v.length ? v[k] : 0;
      }
      if (f.type === "i64") {
        if (typeof x === "number" && !Number.isInteger(x)) {
          throw new Error(`${decl.name}: params field ${f.name} must be an integer, got ${x}`);
        }
        out.setBigInt64(off, typeof x === "bigint" ? x : BigInt(x), true);
      } else {
        out.setFloat64(off, Number(x), true);
      }
      off += 8;
    }
  }
  for (const name of Object.keys(values)) {
    if (!decl.params.some((f) => f.name === name)) {
      throw new Error(`${decl.name}: unknown params field "${name}" for ${decl.paramsStruct}`);
    }
  }
  return off;
}

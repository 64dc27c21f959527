/**
 * A small builder for ONNX graphs: nodes, float32 / int64 initializers, typed inputs and outputs,
 * encoded as an ONNX ModelProto with the onnx-proto protobuf bindings (the onnx.proto schema).
 *
 * @module
 */
import onnxProto from "onnx-proto";

// deno-lint-ignore no-explicit-any
const { onnx } = onnxProto as any;

/** ONNX TensorProto.DataType codes used here. */
const FLOAT = 1;
const INT64 = 7;

/** Opset of the default ONNX domain the graphs use. */
export const OPSET = 17;
/** ONNX IR version matching OPSET (IR 8: opsets up to 18). */
export const IR_VERSION = 8;

/** An attribute value: an int, a float, a list of ints, or a string. */
export type AttributeValue = number | number[] | string | { float: number };

/** A tensor dimension: a fixed size or a named symbolic one. */
export type Dim = number | string;

function attribute(name: string, v: AttributeValue) {
  // AttributeProto.AttributeType: FLOAT 1, INT 2, STRING 3, INTS 7.
  if (typeof v === "string") return { name, type: 3, s: new TextEncoder().encode(v) };
  if (Array.isArray(v)) return { name, type: 7, ints: v };
  if (typeof v === "object") return { name, type: 1, f: v.float };
  return { name, type: 2, i: v };
}

function valueInfo(name: string, dims: Dim[]) {
  return {
    name,
    type: {
      tensorType: {
        elemType: FLOAT,
        shape: {
          dim: dims.map((d) => (typeof d === "number" ? { dimValue: d } : { dimParam: d })),
        },
      },
    },
  };
}

function bytesOf(a: Float32Array | BigInt64Array): Uint8Array {
  // ONNX raw_data is little-endian, as are the typed arrays on the platforms Deno runs on.
  return new Uint8Array(a.buffer.slice(a.byteOffset, a.byteOffset + a.byteLength));
}

export class GraphBuilder {
  readonly #nodes: unknown[] = [];
  readonly #initializers: unknown[] = [];
  readonly #inputs: unknown[] = [];
  readonly #outputs: unknown[] = [];
  readonly #names = new Set<string>();
  #counter = 0;

  /** A fresh value name starting with `hint`. */
  fresh(hint: string): string {
    let name: string;
    do name = `${hint}_${this.#counter++}`; while (this.#names.has(name));
    this.#names.add(name);
    return name;
  }

  #claim(name: string): string {
    if (this.#names.has(name)) throw new Error(`ONNX graph: value name '${name}' is used twice`);
    this.#names.add(name);
    return name;
  }

  /** Adds a float32 initializer named `name` (a copy of `data`) and returns its name. */
  float(name: string, data: Float32Array, dims: number[]): string {
    return this.#float(this.#claim(name), data, dims);
  }

  /** Adds a float32 constant under a fresh name starting with `hint` and returns the name. */
  constant(hint: string, data: Float32Array, dims: number[]): string {
    return this.#float(this.fresh(hint), data, dims);
  }

  #float(name: string, data: Float32Array, dims: number[]): string {
    const n = dims.reduce((p, s) => p * s, 1);
    if (n !== data.length) {
      throw new Error(`ONNX graph: initializer ${name} has ${data.length} values, dims [${dims}]`);
    }
    this.#initializers.push({ name, dims, dataType: FLOAT, rawData: bytesOf(data) });
    return name;
  }

  /** Adds an int64 initializer (a shape or axes list) and returns its name. */
  int64(hint: string, values: number[]): string {
    const name = this.fresh(hint);
    this.#initializers.push({
      name,
      dims: [values.length],
      dataType: INT64,
      rawData: bytesOf(BigInt64Array.from(values.map((v) => BigInt(v)))),
    });
    return name;
  }

  /** Adds a node and returns the name of its (first) output. */
  op(type: string, inputs: string[], attrs: Record<string, AttributeValue> = {}, hint?: string) {
    const out = this.fresh(hint ?? type.toLowerCase());
    this.#nodes.push({
      opType: type,
      name: `${type}_${this.#nodes.length}`,
      input: inputs,
      output: [out],
      attribute: Object.entries(attrs).map(([k, v]) => attribute(k, v)),
    });
    return out;
  }

  /** Declares a graph input of float32 values. */
  input(name: string, dims: Dim[]): string {
    this.#inputs.push(valueInfo(this.#claim(name), dims));
    return name;
  }

  /** Declares `value` as the graph output `name` (through an Identity node). */
  output(name: string, value: string, dims: Dim[]): void {
    this.#nodes.push({
      opType: "Identity",
      name: `Identity_${this.#nodes.length}`,
      input: [value],
      output: [this.#claim(name)],
    });
    this.#outputs.push(valueInfo(name, dims));
  }

  /** Encodes the graph as an ONNX model file. */
  encode(opts: {
    graphName: string;
    docString?: string;
    metadata?: Record<string, string>;
    producerVersion?: string;
  }): Uint8Array {
    const model = onnx.ModelProto.create({
      irVersion: IR_VERSION,
      opsetImport: [{ domain: "", version: OPSET }],
      producerName: "comodal",
      producerVersion: opts.producerVersion ?? "",
      docString: opts.docString ?? "",
      graph: {
        name: opts.graphName,
        node: this.#nodes,
        initializer: this.#initializers,
        input: this.#inputs,
        output: this.#outputs,
      },
      metadataProps: Object.entries(opts.metadata ?? {}).map(([key, value]) => ({ key, value })),
    });
    return onnx.ModelProto.encode(model).finish();
  }
}

/** Reads the metadata_props of an encoded ONNX model (key -> value). */
export function readOnnxMetadata(bytes: Uint8Array): Record<string, string> {
  const m = onnx.ModelProto.decode(bytes);
  return Object.fromEntries(
    (m.metadataProps ?? []).map((p: { key: string; value: string }) => [p.key, p.value]),
  );
}

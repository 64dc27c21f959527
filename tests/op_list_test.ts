// Checks that the TypeScript op declarations (src/ops/op_decls.ts) agree with the C header
// native/include/comodal.h: op ids, names, input/output counts, params structs and their fields.
import { deepStrictEqual as assertEquals } from "node:assert/strict";
import { OP_DECLS, PARAMS_STRUCTS } from "../src/ops/op_decls.ts";

const header = Deno.readTextFileSync(new URL("../native/include/comodal.h", import.meta.url));

interface HeaderOp {
  id: number;
  name: string;
  nInputs: number;
  nOutputs: number;
  paramsStruct: string;
}

function parseOpList(text: string): HeaderOp[] {
  const start = text.indexOf("#define CMO_OP_LIST(X)");
  if (start < 0) throw new Error("comodal.h: CMO_OP_LIST not found");
  const lines: string[] = [];
  for (const line of text.slice(start).split("\n").slice(1)) {
    lines.push(line);
    if (!line.trimEnd().endsWith("\\")) break;
  }
  const ops: HeaderOp[] = [];
  const re = /X\(\s*(\d+)\s*,\s*(\w+)\s*,\s*(-?\d+)\s*,\s*(-?\d+)\s*,\s*(\w+)\s*\)/g;
  for (const m of lines.join("\n").matchAll(re)) {
    ops.push({ id: +m[1], name: m[2], nInputs: +m[3], nOutputs: +m[4], paramsStruct: m[5] });
  }
  return ops;
}

function parseStructs(text: string): Map<string, { name: string; type: string; count: number }[]> {
  const out = new Map<string, { name: string; type: string; count: number }[]>();
  const re = /typedef struct \{([^}]*)\}\s*(cmo_\w+_params)\s*;/g;
  for (const m of text.matchAll(re)) {
    const body = m[1].replace(/\/\*[\s\S]*?\*\//g, "");
    const fields = [];
    for (const f of body.matchAll(/(int64_t|double)\s+(\w+)(?:\[(\w+)\])?\s*;/g)) {
      const count = f[3] === undefined ? 1 : f[3] === "CMO_MAX_DIMS" ? 6 : Number(f[3]);
      fields.push({ name: f[2], type: f[1] === "double" ? "f64" : "i64", count });
    }
    out.set(m[2], fields);
  }
  return out;
}

Deno.test("op list: ids, names and input/output counts match CMO_OP_LIST", () => {
  const ops = parseOpList(header);
  assertEquals(ops.length > 30, true, `parsed only ${ops.length} ops from the header`);
  assertEquals(
    OP_DECLS.map((d) => [d.id, d.name, d.nInputs, d.nOutputs, d.paramsStruct]),
    ops.map((o) => [o.id, o.name, o.nInputs, o.nOutputs, o.paramsStruct]),
  );
});

Deno.test("op list: params structs have the header's fields, types and order", () => {
  const structs = parseStructs(header);
  const used = new Set(parseOpList(header).map((o) => o.paramsStruct));
  for (const name of used) {
    const fields = structs.get(name);
    assertEquals(fields !== undefined, true, `struct ${name} not found in comodal.h`);
    assertEquals(
      PARAMS_STRUCTS[name]?.map((f) => ({ name: f.name, type: f.type, count: f.count })),
      fields,
      `fields of ${name}`,
    );
  }
  assertEquals(Object.keys(PARAMS_STRUCTS).sort(), [...used].sort());
});

Deno.test("op list: every header params struct uses 8-byte fields only", () => {
  const structs = parseStructs(header);
  const raw = [...header.matchAll(/typedef struct \{([^}]*)\}\s*(cmo_\w+_params)\s*;/g)];
  assertEquals(raw.length, structs.size);
  for (const m of raw) {
    const body = m[1].replace(/\/\*[\s\S]*?\*\//g, "");
    const decls = body.split(";").map((s) => s.trim()).filter((s) => s.length > 0);
    for (const d of decls) {
      assertEquals(
        /^(int64_t|double)\s/.test(d),
        true,
        `${m[2]}: field "${d}" is not int64_t/double`,
      );
    }
  }
});

Deno.test("ffi: SYMBOLS binds every cmo_* function of the header with the right parameter count", async () => {
  const { SYMBOLS } = await import("../src/backend/ffi.ts");
  const protos = new Map<string, number>();
  const code = header.replace(/\/\*[\s\S]*?\*\//g, "");
  for (const m of code.matchAll(/^\s*(?:const\s+)?\w+\s*\**\s*(cmo_\w+)\s*\(([^)]*)\)\s*;/gm)) {
    const args = m[2].trim();
    protos.set(m[1], args === "void" || args === "" ? 0 : args.split(",").length);
  }
  assertEquals(protos.size > 15, true, `parsed only ${protos.size} prototypes`);
  const bound = new Map(Object.entries(SYMBOLS).map(([k, v]) => [k, v.parameters.length]));
  assertEquals([...bound].sort(), [...protos].sort());
});

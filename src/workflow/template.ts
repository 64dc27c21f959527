/**
 * Parameter references `${{ path.to.value }}` resolved by plain lookup: no expressions, no eval.
 * A string that is exactly one reference keeps the referenced value's type (a number stays a
 * number); references inside longer strings are replaced by their text.
 */

const REF = /\$\{\{\s*([^}]*?)\s*\}\}/g;
const WHOLE = /^\$\{\{\s*([^}]*?)\s*\}\}$/;
const PATH = /^[A-Za-z_][\w-]*(\.[A-Za-z_0-9][\w-]*)*$/;

/**
 * Looks a reference up. Return `undefined` for "unknown"; throw for a more precise message;
 * return KEEP to leave the reference in place (resolved later).
 */
export type Lookup = (path: string[]) => unknown;
export const KEEP: unique symbol = Symbol("keep");

/** Raised when a reference cannot be resolved; `ref` is the text inside the braces. */
export class TemplateError extends Error {
  constructor(message: string, readonly ref: string) {
    super(message);
    this.name = "TemplateError";
  }
}

function lookupChecked(ref: string, lookup: Lookup): unknown {
  if (!PATH.test(ref)) {
    throw new TemplateError(
      `'\${{ ${ref} }}' is not a reference: only dotted names such as matrix.ratio or steps.train.out are allowed`,
      ref,
    );
  }
  const v = lookup(ref.split("."));
  if (v === undefined) throw new TemplateError(`unknown reference '\${{ ${ref} }}'`, ref);
  return v;
}

function asText(v: unknown): string {
  if (typeof v === "string") return v;
  if (typeof v === "number" || typeof v === "boolean") return String(v);
  return JSON.stringify(v);
}

/** Substitutes references in one string. */
export function substituteString(text: string, lookup: Lookup): unknown {
  const whole = WHOLE.exec(text);
  if (whole) {
    const v = lookupChecked(whole[1], lookup);
    return v === KEEP ? text : v;
  }
  return text.replace(REF, (match, ref: string) => {
    const v = lookupChecked(ref, lookup);
    return v === KEEP ? match : asText(v);
  });
}

/** Substitutes references everywhere inside a JSON-like value; `onError` gets the key path. */
export function substitute(
  value: unknown,
  lookup: Lookup,
  path: (string | number)[] = [],
  onError?: (err: TemplateError, path: (string | number)[]) => never,
): unknown {
  try {
    if (typeof value === "string") return substituteString(value, lookup);
  } catch (err) {
    if (err instanceof TemplateError && onError) onError(err, path);
    throw err;
  }
  if (Array.isArray(value)) {
    return value.map((v, i) => substitute(v, lookup, [...path, i], onError));
  }
  if (typeof value === "object" && value !== null) {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value)) {
      out[k] = substitute(v, lookup, [...path, k], onError);
    }
    return out;
  }
  return value;
}

/** Lists the references used in a value (for dependency discovery). */
export function references(value: unknown): string[] {
  const out: string[] = [];
  const walk = (v: unknown) => {
    if (typeof v === "string") { for (const m of v.matchAll(REF)) out.push(m[1]); }
    else if (Array.isArray(v)) v.forEach(walk);
    else if (typeof v === "object" && v !== null) Object.values(v).forEach(walk);
  };
  walk(value);
  return out;
}

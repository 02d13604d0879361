// Command-line plumbing shared by the examples: the face/audio/service options, their
// checks, and the exit codes (0 ok, 1 the request failed: the error as JSON on stderr,
// 2 usage).

import path from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";

/** parseArgs options every client takes. */
export const COMMON_OPTIONS = {
  image: { type: "string" },
  "avatar-id": { type: "string" },
  box: { type: "string" },
  audio: { type: "string" },
  url: { type: "string" },
  "api-key": { type: "string" },
  help: { type: "boolean", short: "h" },
};

/**
 * Parsed and checked options (null for --help): `required` must be given, one of --image
 * and --avatar-id, and --box as 4 integers. Adds box (array), avatarId and apiKey.
 */
export function parseCommon(argv, options, required) {
  const { values } = parseArgs({ args: argv, options: { ...COMMON_OPTIONS, ...options } });
  if (values.help) return null;
  for (const name of required) {
    if (!values[name]) throw new Error(`--${name} is required`);
  }
  if (!values.image === !values["avatar-id"]) {
    throw new Error("give one of --image and --avatar-id");
  }
  const box = values.box?.split(",").map(Number);
  if (box && (box.length !== 4 || !box.every(Number.isInteger))) {
    throw new Error(`--box must be 4 integers top,bottom,left,right, got ${values.box}`);
  }
  return { ...values, box, avatarId: values["avatar-id"], apiKey: values["api-key"] };
}

/** Run `main(args)` with `parse(argv)`'s args when this module is the executed script. */
export async function runCli(moduleUrl, usage, parse, main) {
  if (!process.argv[1] || path.resolve(process.argv[1]) !== fileURLToPath(moduleUrl)) return;
  let args;
  try {
    args = parse(process.argv.slice(2));
  } catch (err) {
    console.error(`${err.message}\n${usage}`);
    process.exitCode = 2;
    return;
  }
  if (args === null) {
    console.log(usage);
    return;
  }
  try {
    await main(args);
  } catch (err) {
    // A LipSyncError's code is the service's (or timeout, unreachable); Node's are ENOENT, ...
    const error = { code: err.code ?? "client_error", message: err.message, field: err.field };
    console.error(JSON.stringify({ success: false, error })); // undefined field is left out
    process.exitCode = 1;
  }
}

// Every ARM request body the emulator received (GET /_emulator/bodies), or the bodies of a
// JSON file ([{method, path, body}]), serialized by Microsoft's own client: the operation of
// @azure/arm-machinelearning that sends that request is called with the body, through an
// HTTP client that sends nothing.  The SDK's serializer checks required properties, types and
// constraints of its models (generated from Microsoft's swagger, mfe.json included) and
// throws on a body it would not send.  The emulator also validates every body against the
// swagger files here (machineLearningServices.json) before it accepts it.
//   node validate_bodies.mjs [--file BODIES.json] [--expect-invalid] [--responses]
// --responses: instead, the emulator's own answers (every compute, job, code and environment
// version, datastore it holds, read back by GET) go through the same serializer: they are
// the models the PUT sends (read-only properties are dropped by the serializer, the rest
// must fit), which holds the emulator's mfe.json answers to Microsoft's models too.
// Prints "ok - METHOD path" / "not ok - METHOD path: why"; requests the SDK version has no
// operation for are listed as "# not covered".
import fs from "node:fs";
import https from "node:https";
import { require, E, check, done } from "./common.mjs";

const { AzureMachineLearningWorkspaces } = require("@azure/arm-machinelearning");
const { createHttpHeaders } = require("@azure/core-rest-pipeline");

const args = process.argv.slice(2);
const expectInvalid = args.includes("--expect-invalid");
const fileArg = args.indexOf("--file");

function get(path, headers = {}) {
  const port = fs.readFileSync(`${E.AZFIX_DIR}/port`, "utf8").trim();
  return new Promise((resolve, reject) => {
    https.get({ host: "127.0.0.1", port, path, headers, ca: fs.readFileSync(`${E.AZFIX_DIR}/ca.pem`) },
      (res) => { let d = ""; res.on("data", (c) => (d += c)); res.on("end", () => resolve(JSON.parse(d))); })
      .on("error", reject);
  });
}
async function answers() {
  const { credential, WSID } = await import("./common.mjs");
  const tok = (await credential().getToken("https://management.azure.com/.default")).token;
  const h = { Authorization: `Bearer ${tok}` };
  const av = "?api-version=2025-12-01";
  const out = [];
  const put = (o) => out.push({ method: "PUT", path: o.id, body: o });
  for (const kind of ["computes", "jobs", "datastores"])
    for (const o of (await get(`${WSID}/${kind}${av}`, h)).value) put(o);
  for (const kind of ["codes", "environments"])
    for (const c of (await get(`${WSID}/${kind}${av}`, h)).value) {
      put(c);
      const name = c.id.split("/").pop();
      for (const v of (await get(`${WSID}/${kind}/${name}/versions${av}`, h)).value) put(v);
    }
  return out;
}
const bodies = fileArg >= 0 ? JSON.parse(fs.readFileSync(args[fileArg + 1], "utf8"))
  : args.includes("--responses") ? await answers() : await get("/_emulator/bodies");

const sent = [];
const nowhere = { sendRequest: async (request) => {
  sent.push(request);
  return { request, status: 200, headers: createHttpHeaders({ "content-type": "application/json" }), bodyAsText: "{}" };
} };
const cred = { getToken: async () => ({ token: "unused", expiresOnTimestamp: Date.now() + 3600e3 }) };
const client = new AzureMachineLearningWorkspaces(cred, E.AZFIX_SUBSCRIPTION, {
  $host: "https://127.0.0.1", apiVersion: "2025-12-01", httpClient: nowhere, retryOptions: { maxRetries: 0 },
});

const WS = /^\/subscriptions\/[^/]+\/resourceGroups\/([^/]+)\/providers\/Microsoft\.MachineLearningServices\/workspaces\/([^/]+)\/(.*)$/i;
function operation(method, path) {
  const m = WS.exec(path);
  if (!m) return null;
  const [, rg, ws, rest] = m;
  const s = rest.split("/").map(decodeURIComponent);
  const c = client;
  const table = [
    ["PUT", ["computes", 1], (b) => c.computeOperations.beginCreateOrUpdate(rg, ws, s[1], b)],
    ["PATCH", ["computes", 1], (b) => c.computeOperations.beginUpdate(rg, ws, s[1], b)],
    ["PUT", ["codes", 1], (b) => c.codeContainers.createOrUpdate(rg, ws, s[1], b)],
    ["PUT", ["codes", 1, "versions", 1], (b) => c.codeVersions.createOrUpdate(rg, ws, s[1], s[3], b)],
    ["PUT", ["environments", 1], (b) => c.environmentContainers.createOrUpdate(rg, ws, s[1], b)],
    ["PUT", ["environments", 1, "versions", 1], (b) => c.environmentVersions.createOrUpdate(rg, ws, s[1], s[3], b)],
    ["PUT", ["jobs", 1], (b) => c.jobs.createOrUpdate(rg, ws, s[1], b)],
    ["PUT", ["datastores", 1], (b) => c.datastores.createOrUpdate(rg, ws, s[1], b)],
  ];
  for (const [mm, shape, fn] of table) {
    if (mm !== method || shape.length !== s.length) continue;
    if (shape.every((x, i) => x === 1 || x === s[i])) return fn;
  }
  return null;
}

let invalid = 0, covered = 0;
for (const b of bodies) {
  const fn = operation(b.method, b.path);
  if (!fn) { console.log(`# not covered by this SDK version: ${b.method} ${b.path}`); continue; }
  covered++;
  let err = null;
  try { await fn(b.body); } catch (e) { err = e.message; }
  if (err) invalid++;
  if (expectInvalid) check(`refused by the SDK's serializer: ${b.method} ${b.path}`, !!err, err);
  else check(`${b.method} ${b.path}`, !err, err);
}
check(`${covered} bodies checked`, covered > 0);
done("sdk/validate_bodies");

// Shared by the official-SDK checks: the environment of tests/azfix.c, the SDK packages from
// AZFIX_NODE_MODULES (outside the source tree: see ../README.md), a check() that counts.
import { createRequire } from "node:module";
import path from "node:path";

export const E = process.env;
for (const k of ["AZFIX_DIR", "AZFIX_ARM", "AZFIX_AAD", "AZFIX_TENANT", "AZFIX_CLIENT_ID",
                 "AZFIX_CLIENT_SECRET", "AZFIX_SUBSCRIPTION", "AZFIX_RESOURCE_GROUP",
                 "AZFIX_WORKSPACE", "AZFIX_NODE_MODULES"]) {
  if (!E[k]) { console.error(`sdk: ${k} is not set (run from tests/test_azemu)`); process.exit(2); }
}
export const require = createRequire(path.join(E.AZFIX_NODE_MODULES, "azfix-sdk-checks.js"));
export const RG = E.AZFIX_RESOURCE_GROUP, WS = E.AZFIX_WORKSPACE, SUB = E.AZFIX_SUBSCRIPTION;
export const WSID = `/subscriptions/${SUB}/resourceGroups/${RG}/providers/Microsoft.MachineLearningServices/workspaces/${WS}`;

let failed = 0, passed = 0;
export function check(what, cond, detail) {
  if (cond) { passed++; console.log(`ok - ${what}`); }
  else { failed++; console.log(`not ok - ${what}${detail === undefined ? "" : ": " + JSON.stringify(detail)}`); }
  return cond;
}
export async function step(what, fn) {
  try { const v = await fn(); check(what, true); return v; }
  catch (e) { check(what, false, `${e.name}: ${e.message}`.slice(0, 600)); return undefined; }
}
export function done(name) {
  console.log(`${name}: ${passed} passed, ${failed} failed`);
  process.exit(failed || !passed ? 1 : 0);
}

// The official credential: ClientSecretCredential with our AAD as its authority host.
export function credential() {
  const { ClientSecretCredential } = require("@azure/identity");
  return new ClientSecretCredential(E.AZFIX_TENANT, E.AZFIX_CLIENT_ID, E.AZFIX_CLIENT_SECRET,
    { authorityHost: E.AZFIX_AAD, disableInstanceDiscovery: true });
}
export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

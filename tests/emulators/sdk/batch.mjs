// Microsoft's own Batch client against our emulator: @azure/batch 10.2.0 (the official
// data-plane SDK, AutoRest/ms-rest-js) with an Entra ID token from @azure/identity's
// ClientSecretCredential on our AAD for https://batch.core.windows.net/.default, as the batch
// plugin authenticates.  It does what the plugin does: pool create/get/list, job add/get, task
// add/get/list, file list/get (ranged), terminate, job and pool delete, and reads a refusal.
// AZFIX_BATCH_URL names the emulator's Batch data plane (https://127.0.0.1:PORT).
import { require, E, check, step, done, credential, sleep } from "./common.mjs";

const { BatchServiceClient } = require("@azure/batch");
if (!E.AZFIX_BATCH_URL) { console.error("sdk/batch.mjs: AZFIX_BATCH_URL is not set"); process.exit(2); }

const cred = credential();
const tokenCreds = {
  async signRequest(req) {
    const t = await cred.getToken("https://batch.core.windows.net/.default");
    req.headers.set("authorization", `Bearer ${t.token}`);
    return req;
  },
};
const client = new BatchServiceClient(tokenCreds, E.AZFIX_BATCH_URL);
client.apiVersion = "2025-06-01";
const sfx = Date.now().toString(36);
const poolId = `sdkpool-${sfx}`, jobId = `sdkjob-${sfx}`;

await step("pool.add (VirtualMachineConfiguration)", () => client.pool.add({
  id: poolId, vmSize: "STANDARD_D2_V2", targetDedicatedNodes: 1,
  virtualMachineConfiguration: {
    imageReference: { publisher: "canonical", offer: "ubuntu-24_04-lts", sku: "server", version: "latest" },
    nodeAgentSKUId: "batch.node.ubuntu 24.04" },
}));
let pool;
for (let i = 0; i < 100; i++) {
  pool = await client.pool.get(poolId);
  if (pool.allocationState === "steady") break;
  await sleep(50);
}
check("pool.get: allocation steady with its node", pool && pool.allocationState === "steady" &&
      pool.currentDedicatedNodes === 1 && pool.vmSize === "STANDARD_D2_V2", pool);
const pools = await step("pool.list", async () => {
  let r = await client.pool.list({ poolListOptions: { maxResults: 1000 } });
  const out = r.map((p) => p.id);
  while (r.odatanextLink) { r = await client.pool.listNext(r.odatanextLink); out.push(...r.map((p) => p.id)); }
  return out;
});
check("pool.list holds it", pools && pools.includes(poolId), pools);

await step("job.add", () => client.job.add({ id: jobId, poolInfo: { poolId } }));
const job = await step("job.get", () => client.job.get(jobId));
check("job read back", job && job.poolInfo.poolId === poolId && job.state === "active", job);

await step("task.add", () => client.task.add(jobId, {
  id: "t1", commandLine: "/bin/sh -c 'echo sdk says $GREETING; mkdir -p outputs; echo 42 > outputs/x.txt'",
  environmentSettings: [{ name: "GREETING", value: "hello" }],
}));
let task;
for (let i = 0; i < 200; i++) {
  task = await client.task.get(jobId, "t1");
  if (task.state === "completed") break;
  await sleep(50);
}
check("task.get: completed with exit code 0", task && task.state === "completed" &&
      task.executionInfo.exitCode === 0 && task.executionInfo.result === "success", task && task.executionInfo);
const files = await step("file.listFromTask (recursive, filtered)", async () => {
  let r = await client.file.listFromTask(jobId, "t1", { recursive: true,
    fileListFromTaskOptions: { filter: "startswith(name,'wd/outputs')" } });
  const out = r.map((f) => f.name);
  while (r.odatanextLink) { r = await client.file.listFromTaskNext(r.odatanextLink); out.push(...r.map((f) => f.name)); }
  return out;
});
check("the output file is listed (all pages)", files && files.includes("wd/outputs/x.txt") &&
      files.includes("wd/outputs"), files);
async function text(r) {
  const chunks = []; for await (const c of r.readableStreamBody) chunks.push(c);
  return Buffer.concat(chunks).toString();
}
const out = await step("file.getFromTask stdout.txt", async () => text(await client.file.getFromTask(jobId, "t1", "stdout.txt")));
check("stdout.txt holds the task's output", out === "sdk says hello\n", out);
const part = await step("file.getFromTask with ocpRange", async () => text(await client.file.getFromTask(jobId, "t1",
  "stdout.txt", { fileGetFromTaskOptions: { ocpRange: "bytes=4-" } })));
check("the range starts at byte 4", part === "says hello\n", part);

// terminate a long task: it completes, its process gone
await step("task.add (long)", () => client.task.add(jobId, { id: "t2", commandLine: "sleep 60" }));
for (let i = 0; i < 200; i++) {
  task = await client.task.get(jobId, "t2");
  if (task.state === "running") break;
  await sleep(50);
}
check("the long task runs", task && task.state === "running", task && task.state);
await step("task.terminate", () => client.task.terminate(jobId, "t2"));
for (let i = 0; i < 200; i++) {
  task = await client.task.get(jobId, "t2");
  if (task.state === "completed") break;
  await sleep(50);
}
check("terminated task completed", task && task.state === "completed", task && task.state);

// refusals come back as the service words them
try {
  await client.job.add({ id: jobId, poolInfo: { poolId } });
  check("a second job.add with the same id throws", false);
} catch (e) {
  check("a second job.add throws JobExists (409)", e.statusCode === 409 && e.code === "JobExists",
        { status: e.statusCode, code: e.code });
}
try {
  const bad = new BatchServiceClient({ async signRequest(r) { r.headers.set("authorization", "Bearer nope"); return r; } },
    E.AZFIX_BATCH_URL);
  bad.apiVersion = "2025-06-01";
  await bad.pool.get(poolId);
  check("a bad token is refused", false);
} catch (e) {
  check("a bad token is refused with 401 AuthenticationFailed", e.statusCode === 401 && e.code === "AuthenticationFailed",
        { status: e.statusCode, code: e.code });
}
await step("job.deleteMethod", () => client.job.deleteMethod(jobId));
await step("pool.deleteMethod", () => client.pool.deleteMethod(poolId));
done("sdk/batch.mjs");

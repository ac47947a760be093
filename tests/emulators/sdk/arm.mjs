// Microsoft's own client against our emulator: @azure/arm-machinelearning (with
// @azure/identity's ClientSecretCredential on our AAD) does what the amlcompute and
// computeinstance plugins do.  If the official client cannot, the emulator is wrong.
import { require, E, RG, WS, WSID, check, step, done, credential, sleep } from "./common.mjs";

const { AzureMachineLearningWorkspaces } = require("@azure/arm-machinelearning");
const { createPipelineRequest } = require("@azure/core-rest-pipeline");

const client = new AzureMachineLearningWorkspaces(credential(), E.AZFIX_SUBSCRIPTION, {
  $host: E.AZFIX_ARM, endpoint: E.AZFIX_ARM, apiVersion: "2025-12-01",
  credentialScopes: ["https://management.azure.com/.default"],
});
const poll = { updateIntervalInMs: 50 };
const sfx = Date.now().toString(36);

const ws = await step("workspaces.get", () => client.workspaces.get(RG, WS));
check("workspace name read back", ws && ws.name === WS, ws && ws.name);

// AmlCompute: create through the LRO (Azure-AsyncOperation), read back, list, update, nodes
const cname = `sdk-aml-${sfx}`.slice(0, 24);
const created = await step("computeOperations.beginCreateOrUpdateAndWait (AmlCompute LRO)", () =>
  client.computeOperations.beginCreateOrUpdateAndWait(RG, WS, cname, {
    location: E.AZFIX_LOCATION || "westeurope",
    properties: {
      computeType: "AmlCompute",
      properties: { vmSize: "STANDARD_D2_V2", vmPriority: "Dedicated",
                    scaleSettings: { maxNodeCount: 2, minNodeCount: 0, nodeIdleTimeBeforeScaleDown: "PT120S" },
                    remoteLoginPortPublicAccess: "Disabled" },
    },
  }, poll));
check("LRO result is Succeeded", created && created.properties.provisioningState === "Succeeded",
      created && created.properties);
const got = await step("computeOperations.get", () => client.computeOperations.get(RG, WS, cname));
check("AmlCompute read back (vmSize, scale settings)", got && got.properties.computeType === "AmlCompute" &&
      got.properties.properties.vmSize === "STANDARD_D2_V2" &&
      got.properties.properties.scaleSettings.maxNodeCount === 2, got && got.properties);
const listed = await step("computeOperations.list", async () => {
  const out = []; for await (const c of client.computeOperations.list(RG, WS)) out.push(c.name); return out;
});
check("list holds the compute", listed && listed.includes(cname), listed);
const upd = await step("computeOperations.beginUpdateAndWait (scale settings LRO)", () =>
  client.computeOperations.beginUpdateAndWait(RG, WS, cname,
    { properties: { scaleSettings: { maxNodeCount: 3, minNodeCount: 1 } } }, poll));
check("update applied", upd && upd.properties.properties.scaleSettings.maxNodeCount === 3, upd && upd.properties);
const nodes = await step("computeOperations.listNodes", async () => {
  const out = []; for await (const n of client.computeOperations.listNodes(RG, WS, cname)) out.push(n); return out;
});
check("one node (minNodeCount 1)", nodes && nodes.length === 1, nodes);

// refusals come back as RestErrors with the service's code
try {
  await client.computeOperations.beginCreateOrUpdateAndWait(RG, WS, `sdk-bad-${sfx}`.slice(0, 24), {
    location: "westeurope",
    properties: { computeType: "AmlCompute", properties: { vmSize: "STANDARD_NOPE", scaleSettings: { maxNodeCount: 1 } } },
  }, poll);
  check("a refused vm size throws", false);
} catch (e) {
  check("a refused vm size throws a RestError 400 with the service's message", e.statusCode === 400 &&
        /STANDARD_NOPE/.test(e.message), { status: e.statusCode, msg: e.message });
}

// code version + environment + command job, read back, cancel
const sas = await step("codeVersions startPendingUpload (raw request through the SDK pipeline)", async () => {
  const req = createPipelineRequest({
    url: `${E.AZFIX_ARM}${WSID}/codes/sdk-code-${sfx}/versions/1/startPendingUpload?api-version=2025-12-01`,
    method: "POST", body: JSON.stringify({ pendingUploadType: "TemporaryBlobReference" }),
  });
  req.headers.set("Content-Type", "application/json");
  const r = await client.sendRequest(req);
  if (r.status !== 200) throw new Error(`HTTP ${r.status}: ${r.bodyAsText}`);
  return JSON.parse(r.bodyAsText).blobReferenceForConsumption;
});
if (sas) {
  const { ContainerClient } = require("@azure/storage-blob");
  const u = new URL(sas.credential.sasUri);
  const folder = decodeURIComponent(u.pathname).split("/").slice(3).join("/");
  const cont = new ContainerClient(`${u.origin}${u.pathname.split("/").slice(0, 3).join("/")}${u.search}`);
  await step("storage-blob upload of the code through the SAS", () =>
    cont.getBlockBlobClient(`${folder}run.py`).upload("print('sdk job')\nimport time; time.sleep(30)\n", 46));
}
await step("codeContainers.createOrUpdate", () =>
  client.codeContainers.createOrUpdate(RG, WS, `sdk-code-${sfx}`, { properties: { description: "sdk" } }));
const cv = await step("codeVersions.createOrUpdate", () =>
  client.codeVersions.createOrUpdate(RG, WS, `sdk-code-${sfx}`, "1", { properties: { codeUri: sas && sas.blobUri } }));
const cvGot = await step("codeVersions.get", () => client.codeVersions.get(RG, WS, `sdk-code-${sfx}`, "1"));
check("code version read back", cvGot && cvGot.properties.codeUri === (sas && sas.blobUri), cvGot);
const env = await step("environmentVersions.createOrUpdate", () =>
  client.environmentVersions.createOrUpdate(RG, WS, "sdk-env", "1",
    { properties: { image: "mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu20.04:latest" } }));
const ds = await step("datastores.get", () => client.datastores.get(RG, WS, "workspaceblobstore"));
check("datastore is AzureBlob", ds && ds.properties.datastoreType === "AzureBlob", ds);
const secrets = await step("datastores.listSecrets", () => client.datastores.listSecrets(RG, WS, "workspaceblobstore"));
check("account key secret", secrets && secrets.secretsType === "AccountKey" && !!secrets.key);

const jname = `sdk-job-${sfx}`;
const job = await step("jobs.createOrUpdate (CommandJob)", () =>
  client.jobs.createOrUpdate(RG, WS, jname, {
    properties: {
      jobType: "Command", command: "python3 run.py", computeId: created && created.id,
      codeId: cv && cv.id, environmentId: env && env.id, experimentName: "sdk",
      environmentVariables: { A: "1" }, resources: { instanceCount: 1 },
      limits: { jobLimitsType: "Command", timeout: "PT10M" },
    },
  }));
check("job created", job && job.name === jname, job);
let status;
for (let i = 0; i < 300; i++) {
  const j = await client.jobs.get(RG, WS, jname);
  status = j.properties.status;
  if (status === "Running" || ["Completed", "Failed", "Canceled"].includes(status)) break;
  await sleep(50);
}
check("jobs.get: the job reaches Running", status === "Running", status);
const listedJobs = await step("jobs.list", async () => {
  const out = []; for await (const j of client.jobs.list(RG, WS)) out.push(j.name); return out;
});
check("jobs.list holds the job", listedJobs && listedJobs.includes(jname), listedJobs);
await step("jobs.beginCancelAndWait (Location LRO)", () => client.jobs.beginCancelAndWait(RG, WS, jname, poll));
const after = await step("jobs.get after cancel", () => client.jobs.get(RG, WS, jname));
check("job Canceled", after && after.properties.status === "Canceled", after && after.properties.status);

// ComputeInstance: create, stop, start, restart
const ciname = `sdkci${sfx}`.slice(0, 20);
const ci = await step("computeOperations.beginCreateOrUpdateAndWait (ComputeInstance)", () =>
  client.computeOperations.beginCreateOrUpdateAndWait(RG, WS, ciname, {
    location: "westeurope",
    properties: { computeType: "ComputeInstance",
                  properties: { vmSize: "STANDARD_DS3_V2", sshSettings: { sshPublicAccess: "Disabled" } } },
  }, poll));
check("compute instance Running", ci && ci.properties.properties.state === "Running", ci && ci.properties);
await step("computeOperations.beginStopAndWait", () => client.computeOperations.beginStopAndWait(RG, WS, ciname, poll));
const stopped = await client.computeOperations.get(RG, WS, ciname);
check("instance Stopped", stopped.properties.properties.state === "Stopped", stopped.properties.properties.state);
await step("computeOperations.beginStartAndWait", () => client.computeOperations.beginStartAndWait(RG, WS, ciname, poll));
await step("computeOperations.beginRestartAndWait", () => client.computeOperations.beginRestartAndWait(RG, WS, ciname, poll));
const running = await client.computeOperations.get(RG, WS, ciname);
check("instance Running again", running.properties.properties.state === "Running", running.properties.properties.state);

// delete both (underlyingResourceAction), through their LROs
for (const n of [cname, ciname]) {
  await step(`computeOperations.beginDeleteAndWait ${n} (Delete)`, () =>
    client.computeOperations.beginDeleteAndWait(RG, WS, n, "Delete", poll));
  try {
    await client.computeOperations.get(RG, WS, n);
    check(`${n} gone after delete`, false);
  } catch (e) {
    check(`${n} gone after delete (404)`, e.statusCode === 404, e.statusCode);
  }
}
done("sdk/arm");

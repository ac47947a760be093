// Microsoft's own client against our emulator: @azure/arm-containerinstance 9.1.0 (with
// @azure/identity's ClientSecretCredential on our AAD) does what the aci plugin does: a
// container group created through its LRO, read back, listed, its container's logs, a
// refused region, and the group deleted through its LRO.  If the official client cannot, the
// emulator is wrong.  9.1.0 sends api-version 2023-05-01 as a constant; a pipeline policy
// rewrites it to 2025-09-01, the version the plugin speaks and the emulator holds requests to
// (the request and response shapes used here are the same in both versions).
import { require, E, RG, SUB, check, step, done, credential, sleep } from "./common.mjs";

const { ContainerInstanceManagementClient } = require("@azure/arm-containerinstance");

const client = new ContainerInstanceManagementClient(credential(), SUB, {
  $host: E.AZFIX_ARM, endpoint: E.AZFIX_ARM,
  credentialScopes: ["https://management.azure.com/.default"],
});
client.pipeline.addPolicy({
  name: "api-version-2025-09-01",
  sendRequest: (req, next) => { req.url = req.url.replace(/api-version=[^&]*/, "api-version=2025-09-01"); return next(req); },
});
const poll = { updateIntervalInMs: 50 };
const name = `sdk-aci-${Date.now().toString(36)}`;
const group = (location) => ({
  location, osType: "Linux", restartPolicy: "Never", tags: { "ctarget-sdk": "1" },
  containers: [{
    name: "main", image: "python:3.12-slim",
    command: ["python3", "-c", "import os; print('hello from', os.environ['WHO'], flush=True)"],
    environmentVariables: [{ name: "WHO", value: "the sdk" }, { name: "TOKEN", secureValue: "s3cret-sdk" }],
    resources: { requests: { cpu: 1, memoryInGB: 1.5 } },
  }],
});

const created = await step("create: containerGroups.beginCreateOrUpdateAndWait", () =>
  client.containerGroups.beginCreateOrUpdateAndWait(RG, name, group("eastus"), poll));
check("LRO result is Succeeded", created && created.provisioningState === "Succeeded", created && created.provisioningState);
check("the secure value is not returned", created &&
      !JSON.stringify(created).includes("s3cret-sdk"), created && created.containers[0].environmentVariables);

let got;
for (let i = 0; i < 200; i++) {
  got = await client.containerGroups.get(RG, name);
  const cs = got.containers[0].instanceView && got.containers[0].instanceView.currentState;
  if (cs && cs.state === "Terminated") break;
  await sleep(50);
}
const cs = got && got.containers[0].instanceView && got.containers[0].instanceView.currentState;
check("get: the container terminated with exit code 0", cs && cs.state === "Terminated" && cs.exitCode === 0, cs);
const listed = await step("list: containerGroups.listByResourceGroup", async () => {
  const out = []; for await (const g of client.containerGroups.listByResourceGroup(RG)) out.push(g.name); return out;
});
check("the list holds the group", listed && listed.includes(name), listed);
const logs = await step("logs: containers.listLogs", () => client.containers.listLogs(RG, name, "main", { tail: 10 }));
check("the log is the program's output", logs && logs.content === "hello from the sdk\n", logs);

let refused;
try { await client.containerGroups.beginCreateOrUpdateAndWait(RG, name + "-mars", group("marsnorth"), poll); }
catch (e) { refused = e; }
check("a region ACI does not offer is refused (400, naming the offered ones)",
      refused && refused.statusCode === 400 && refused.code === "LocationNotAvailableForResourceType" &&
      /eastus/.test(refused.message), refused && [refused.statusCode, refused.code, refused.message]);

await step("delete: containerGroups.beginDeleteAndWait", () => client.containerGroups.beginDeleteAndWait(RG, name, poll));
let gone;
try { await client.containerGroups.get(RG, name); } catch (e) { gone = e; }
check("the group is gone (404)", gone && gone.statusCode === 404, gone && gone.statusCode);
done("aci.mjs");

// Microsoft's own client against our emulator: @azure/arm-databricks (with @azure/identity's
// ClientSecretCredential on our AAD) reads the workspace the databricks plugin attaches, and
// its deserializer must find the data plane in workspaceUrl.  The client (3.0.0, the newest on
// npm) defaults to api-version 2023-02-01; the plugin speaks 2024-05-01 (the spec example we
// hold the emulator to), so a pipeline policy sets that version, as Azure SDK clients allow.
import { require, E, RG, check, step, done, credential } from "./common.mjs";

const { AzureDatabricksManagementClient } = require("@azure/arm-databricks");
const API = "2024-05-01";
const NAME = E.AZFIX_DBX_WORKSPACE || "dbx-ctarget";

const client = new AzureDatabricksManagementClient(credential(), E.AZFIX_SUBSCRIPTION, {
  $host: E.AZFIX_ARM, endpoint: E.AZFIX_ARM,
  credentialScopes: ["https://management.azure.com/.default"],
});
client.pipeline.addPolicy({
  name: "ctargetApiVersion",
  async sendRequest(req, next) {
    const u = new URL(req.url);
    if (u.searchParams.has("api-version")) u.searchParams.set("api-version", API);
    req.url = u.toString();
    return next(req);
  },
});

const ws = await step("workspaces.get", () => client.workspaces.get(RG, NAME));
check("workspace name read back", ws && ws.name === NAME, ws && ws.name);
check("type Microsoft.Databricks/workspaces", ws && ws.type === "Microsoft.Databricks/workspaces", ws && ws.type);
check("provisioningState Succeeded", ws && ws.provisioningState === "Succeeded", ws && ws.provisioningState);
check("workspaceUrl names the data plane", ws && ws.workspaceUrl === `127.0.0.1:${E.AZFIX_DBX_PORT}`,
      ws && ws.workspaceUrl);
check("workspaceId kept", ws && typeof ws.workspaceId === "string" && ws.workspaceId.length > 0);
check("sku deserialized", ws && ws.sku && ws.sku.name === "premium", ws && ws.sku);
check("managedResourceGroupId deserialized", ws && /resourceGroups\//.test(ws.managedResourceGroupId || ""));

const missing = await client.workspaces.get(RG, "no-such-dbx").then(() => null, (e) => e);
check("unknown workspace: RestError 404 ResourceNotFound",
      missing && missing.statusCode === 404 && missing.code === "ResourceNotFound",
      missing && { status: missing.statusCode, code: missing.code });

// without the policy the client's default version is refused the way ARM refuses it
const plain = new AzureDatabricksManagementClient(credential(), E.AZFIX_SUBSCRIPTION, {
  $host: E.AZFIX_ARM, endpoint: E.AZFIX_ARM,
  credentialScopes: ["https://management.azure.com/.default"],
});
const old = await plain.workspaces.get(RG, NAME).then(() => null, (e) => e);
check("another api-version is refused (400 NoRegisteredProviderFound)",
      old && old.statusCode === 400 && old.code === "NoRegisteredProviderFound",
      old && { status: old.statusCode, code: old.code });
done("sdk/databricks.mjs");

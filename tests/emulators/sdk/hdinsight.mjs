// Microsoft's own client against our emulator: @azure/arm-hdinsight (HDInsightManagementClient,
// api-version 2021-06-01, with @azure/identity's ClientSecretCredential on our AAD) reads the
// clusters the hdinsight plugin resolves resource_id through.  If the official client cannot,
// the emulator is wrong.  Run by tests/test_hdinsight (t19) with the azfix environment, plus
// HDI_CLUSTER (a Spark cluster the test registered), HDI_SSH_PORT and HDI_LIVY_PORT; the
// package comes from AZFIX_NODE_MODULES, or HDI_NODE_MODULES until package.json carries it.
import { createRequire } from "node:module";
import path from "node:path";
import { E, RG, SUB, check, step, done, credential } from "./common.mjs";

const mods = E.HDI_NODE_MODULES || E.AZFIX_NODE_MODULES;
const req = createRequire(path.join(mods, "hdinsight-sdk-check.js"));
const { HDInsightManagementClient } = req("@azure/arm-hdinsight");

const client = new HDInsightManagementClient(credential(), SUB, {
  $host: E.AZFIX_ARM, endpoint: E.AZFIX_ARM,
  credentialScopes: ["https://management.azure.com/.default"],
});
check("the client speaks 2021-06-01", client.apiVersion === "2021-06-01", client.apiVersion);

const c = await step("clusters.get", () => client.clusters.get(RG, E.HDI_CLUSTER));
const p = c && c.properties;
check("name and id read back", c && c.name === E.HDI_CLUSTER &&
      c.id === `/subscriptions/${SUB}/resourceGroups/${RG}/providers/Microsoft.HDInsight/clusters/${E.HDI_CLUSTER}`,
      c && { name: c.name, id: c.id });
check("a running Spark cluster", p && p.clusterDefinition && p.clusterDefinition.kind === "SPARK" &&
      p.clusterState === "Running" && p.osType === "Linux", p && { kind: p.clusterDefinition, state: p.clusterState });
const ep = (p && p.connectivityEndpoints) || [];
const ssh = ep.find((e) => e.name === "SSH"), https = ep.find((e) => e.name === "HTTPS");
check("SSH endpoint", ssh && ssh.location === "127.0.0.1" && String(ssh.port) === E.HDI_SSH_PORT, ssh);
check("HTTPS endpoint (the Livy gateway)", https && String(https.port) === E.HDI_LIVY_PORT, https);
check("head node profile deserialized", p && p.computeProfile && p.computeProfile.roles &&
      p.computeProfile.roles[0].name === "headnode" &&
      p.computeProfile.roles[0].hardwareProfile.vmSize === "Standard_D12_V2", p && p.computeProfile);

try {
  await client.clusters.get(RG, "no-such-cluster");
  check("an unknown cluster throws", false);
} catch (e) {
  check("an unknown cluster throws a RestError 404 ResourceNotFound", e.statusCode === 404 &&
        e.code === "ResourceNotFound", { status: e.statusCode, code: e.code });
}
done("hdinsight.mjs");

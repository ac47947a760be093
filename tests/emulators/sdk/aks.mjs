// The official Kubernetes client (@kubernetes/client-node 1.4.0) against the aks emulator, doing
// what the aks plugin does: a Job created, read, its pods listed by label, the log read, a
// duplicate refused with 409, a wrong token refused with 401, the Job deleted with its pods
// (propagationPolicy Foreground).  Env: AKS_KUBECONFIG (DIR/aks_kubeconfig.yaml),
// AZFIX_NODE_MODULES.  Exit 0 when every check passed.
import path from "node:path";
import { pathToFileURL } from "node:url";
import fs from "node:fs";

const E = process.env;
if (!E.AKS_KUBECONFIG || !E.AZFIX_NODE_MODULES) {
  console.error("aks.mjs: AKS_KUBECONFIG and AZFIX_NODE_MODULES must be set");
  process.exit(2);
}
const k8s = await import(pathToFileURL(path.join(E.AZFIX_NODE_MODULES, "@kubernetes/client-node/dist/index.js")));
let passed = 0, failed = 0;
function check(what, cond, detail) {
  if (cond) { passed++; console.log(`ok - ${what}`); }
  else { failed++; console.log(`not ok - ${what}${detail === undefined ? "" : ": " + String(detail).slice(0, 400)}`); }
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const text = fs.readFileSync(E.AKS_KUBECONFIG, "utf8");
const kc = new k8s.KubeConfig();
kc.loadFromString(text);
const batch = kc.makeApiClient(k8s.BatchV1Api), core = kc.makeApiClient(k8s.CoreV1Api);
const namespace = "default", name = "sdk-job-" + process.pid;
const body = {
  apiVersion: "batch/v1", kind: "Job", metadata: { name, labels: { "ctarget-run": name } },
  spec: { backoffLimit: 0, completions: 1, parallelism: 1, template: {
    metadata: { labels: { "ctarget-run": name } },
    spec: { restartPolicy: "Never", containers: [{ name: "main", image: "python:3.11-slim",
      command: ["sh", "-c", "echo sdk-hello; echo sdk-line2"] }] } } },
};
try {
  const j = await batch.createNamespacedJob({ namespace, body });
  check("createNamespacedJob", j.metadata.name === name && j.metadata.uid, JSON.stringify(j.metadata));
} catch (e) { check("createNamespacedJob", false, e.message); }
try {
  await batch.createNamespacedJob({ namespace, body });
  check("a duplicate Job is refused", false, "accepted");
} catch (e) { check("a duplicate Job is refused with 409", e.code === 409, `${e.code} ${e.message}`); }
let pod = null, phase = null;
for (let i = 0; i < 150 && phase !== "Succeeded" && phase !== "Failed"; i++) {
  const pl = await core.listNamespacedPod({ namespace, labelSelector: `ctarget-run=${name}` });
  pod = pl.items[0];
  phase = pod && pod.status.phase;
  if (phase !== "Succeeded") await sleep(100);
}
check("listNamespacedPod by label: the pod Succeeded", phase === "Succeeded", phase);
try {
  const log = await core.readNamespacedPodLog({ name: pod.metadata.name, namespace, container: "main", timestamps: true });
  check("readNamespacedPodLog with timestamps", /^\d{4}-\d\d-\d\dT[0-9:.]+Z sdk-hello\n.*Z sdk-line2\n$/s.test(log), log);
} catch (e) { check("readNamespacedPodLog", false, e.message); }
try {
  const jr = await batch.readNamespacedJob({ name, namespace });
  check("readNamespacedJob: Complete", (jr.status.conditions || []).some((c) => c.type === "Complete"), JSON.stringify(jr.status));
} catch (e) { check("readNamespacedJob", false, e.message); }
try {
  await batch.deleteNamespacedJob({ name, namespace, propagationPolicy: "Foreground" });
  const pl = await core.listNamespacedPod({ namespace, labelSelector: `ctarget-run=${name}` });
  check("deleteNamespacedJob Foreground takes the pods", pl.items.length === 0, pl.items.length);
} catch (e) { check("deleteNamespacedJob", false, e.message); }
const bad = new k8s.KubeConfig();
bad.loadFromString(text);
bad.setCurrentContext("emu-bad");
try {
  await bad.makeApiClient(k8s.CoreV1Api).readNamespace({ name: "default" });
  check("a wrong token is refused", false, "accepted");
} catch (e) { check("a wrong token is refused with 401", e.code === 401, `${e.code} ${e.message}`); }
console.log(`aks.mjs: ${passed} passed, ${failed} failed`);
process.exit(failed || !passed ? 1 : 0);

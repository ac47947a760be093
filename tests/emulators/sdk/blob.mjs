// @azure/storage-blob against Azurite with the credentials our emulator hands out: the SAS of
// startPendingUpload (code upload) and the account key of datastores/listSecrets (logs and
// outputs in the artifact store), the way the plugins use them.
import { require, E, WSID, check, step, done, credential } from "./common.mjs";

const { ContainerClient, BlobServiceClient, StorageSharedKeyCredential } = require("@azure/storage-blob");
const cred = credential();
const tok = (await cred.getToken("https://management.azure.com/.default")).token;
async function arm(method, p, body) {
  const r = await fetch(`${E.AZFIX_ARM}${WSID}${p}?api-version=2025-12-01`, {
    method, headers: { Authorization: `Bearer ${tok}`, "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const t = await r.text();
  if (r.status >= 400) throw new Error(`${method} ${p}: HTTP ${r.status}: ${t}`);
  return t ? JSON.parse(t) : null;
}

const sfx = Date.now().toString(36);
const up = await step("startPendingUpload", () =>
  arm("POST", `/codes/sdkblob-${sfx}/versions/1/startPendingUpload`, { pendingUploadType: "TemporaryBlobReference" }));
const u = new URL(up.blobReferenceForConsumption.credential.sasUri);
const parts = decodeURIComponent(u.pathname).split("/");           // "", account, container, folder...
const folder = parts.slice(3).join("/");
const cont = new ContainerClient(`${u.origin}/${parts[1]}/${parts[2]}${u.search}`);
const data = Buffer.alloc(300 * 1024, 7);
await step("SAS: uploadData (block blob)", () => cont.getBlockBlobClient(`${folder}a.bin`).uploadData(data));
await step("SAS: stage blocks + commit block list", async () => {
  const b = cont.getBlockBlobClient(`ctarget-blobs/${sfx}`);
  const ids = ["AAAA", "AAAB"].map((s) => Buffer.from(s).toString("base64"));
  await b.stageBlock(ids[0], "first-", 6);
  await b.stageBlock(ids[1], "second", 6);
  await b.commitBlockList(ids);
});
const names = await step("SAS: list by prefix", async () => {
  const out = []; for await (const b of cont.listBlobsFlat({ prefix: "ctarget-blobs/" })) out.push(b.name); return out;
});
check("listed the committed blob", names && names.includes(`ctarget-blobs/${sfx}`), names);
const back = await step("SAS: download with a range", () =>
  cont.getBlockBlobClient(`ctarget-blobs/${sfx}`).downloadToBuffer(6, 6));
check("ranged read is byte-exact", back && back.toString() === "second", back && back.toString());
const whole = await step("SAS: download", () => cont.getBlockBlobClient(`${folder}a.bin`).downloadToBuffer());
check("download is byte-exact", whole && whole.equals(data));

// account key from listSecrets: the artifact store (append blob like std_log.txt)
const sec = await step("datastores/listSecrets", () => arm("POST", "/datastores/workspaceartifactstore/listSecrets"));
const dsv = await arm("GET", "/datastores/workspaceartifactstore");
const svc = new BlobServiceClient(`${u.origin}/${dsv.properties.accountName}`,
  new StorageSharedKeyCredential(dsv.properties.accountName, sec.key));
const art = svc.getContainerClient(dsv.properties.containerName);
await step("Shared Key: create the artifact container if needed", () => art.createIfNotExists());
const ab = art.getAppendBlobClient(`ExperimentRun/dcid.sdk-${sfx}/user_logs/std_log.txt`);
await step("Shared Key: append blob create + append", async () => {
  await ab.create(); await ab.appendBlock("line 1\n", 7); await ab.appendBlock("line 2\n", 7);
});
const tail = await step("Shared Key: read an append blob from an offset", () => ab.downloadToBuffer(7));
check("offset read returns the new bytes", tail && tail.toString() === "line 2\n", tail && tail.toString());
const props = await step("Shared Key: getProperties", () => ab.getProperties());
check("size known without reading", props && props.contentLength === 14, props && props.contentLength);
done("sdk/blob");

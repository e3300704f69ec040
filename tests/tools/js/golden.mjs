// The golden-AMI path with the AWS SDK for JavaScript v3 (client-ec2 / client-kms / client-ebs,
// versions pinned in package.json) and its waiters, against ebscrypt.
//
//   EBSCRYPT_ENDPOINT=http://127.0.0.1:8080 AWS_ACCESS_KEY_ID=111111111111 \
//   AWS_SECRET_ACCESS_KEY=x node golden.mjs
//
// Prints one JSON object (ids, keys, what the SDK parsed) on stdout; exits non-zero on the first
// failed assertion.
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { Readable } from "node:stream";
import {
  EC2Client, CreateVolumeCommand, CreateSnapshotCommand, RegisterImageCommand, CopyImageCommand,
  DescribeImagesCommand, DescribeSnapshotsCommand, DescribeVolumesCommand,
  waitUntilVolumeAvailable, waitUntilSnapshotCompleted, waitUntilImageAvailable,
} from "@aws-sdk/client-ec2";
import { KMSClient, CreateKeyCommand, CreateAliasCommand, DescribeKeyCommand } from "@aws-sdk/client-kms";
import {
  EBSClient, StartSnapshotCommand, PutSnapshotBlockCommand, CompleteSnapshotCommand,
  ListSnapshotBlocksCommand, GetSnapshotBlockCommand, ListChangedBlocksCommand,
} from "@aws-sdk/client-ebs";

const endpoint = process.env.EBSCRYPT_ENDPOINT;
const region = process.env.AWS_REGION || "us-east-1";
const tag = process.env.EBSCRYPT_TAG || "js";
assert.ok(endpoint, "EBSCRYPT_ENDPOINT is required");
const credentials = { accessKeyId: process.env.AWS_ACCESS_KEY_ID, secretAccessKey: process.env.AWS_SECRET_ACCESS_KEY };
const config = { endpoint, region, credentials, maxAttempts: 3 };
const ec2 = new EC2Client(config);
const kms = new KMSClient(config);
const ebs = new EBSClient(config);
// keep the raw JSON bodies the EBS client receives, to check the wire types themselves (the SDK's
// parser would turn a quoted "3" into 3 with only a warning)
const rawJson = [];
const inner = ebs.config.requestHandler;
ebs.config.requestHandler = {
  async handle(request, options) {
    const out = await inner.handle(request, options);
    const ct = String(out.response.headers["content-type"] || "");
    if (ct.includes("json") && out.response.body) {
      const chunks = [];
      for await (const chunk of out.response.body) chunks.push(chunk);
      const buf = Buffer.concat(chunks);
      rawJson.push({ method: request.method, path: request.path, body: buf.length ? JSON.parse(buf.toString()) : null });
      out.response.body = Readable.from([buf]);
    }
    return out;
  },
  updateHttpClientConfig: (...a) => inner.updateHttpClientConfig?.(...a),
  httpHandlerConfigs: () => inner.httpHandlerConfigs?.() ?? {},
  destroy: () => inner.destroy?.(),
};
const lastRaw = (suffix) => rawJson.filter((r) => r.path.endsWith(suffix)).at(-1).body;
const wait = (client) => ({ client, maxWaitTime: 120, minDelay: 1, maxDelay: 2 });

const BLOCK = 524288;
// the same bytes as tests/tools/support.py pattern(tag, index)
function pattern(index) {
  const seed = createHash("sha256").update(`${tag}:${index}`).digest();
  const out = Buffer.alloc(BLOCK);
  for (let off = 0; off < BLOCK; off += seed.length) seed.copy(out, off);
  return out;
}
const sha = (buf) => createHash("sha256").update(buf).digest();
const b64sha = (buf) => sha(buf).toString("base64");
const types = {};

// keys: the build key, and a golden key named through an alias (R-KEY-6)
const buildKey = (await kms.send(new CreateKeyCommand({ Description: "build key" }))).KeyMetadata;
const goldenKey = (await kms.send(new CreateKeyCommand({ Description: "golden key" }))).KeyMetadata;
assert.equal(buildKey.KeySpec, "SYMMETRIC_DEFAULT");
assert.ok(buildKey.CreationDate instanceof Date, "KMS CreationDate parsed as a Date");
await kms.send(new CreateAliasCommand({ AliasName: `alias/${tag}-golden`, TargetKeyId: goldenKey.KeyId }));
const viaAlias = (await kms.send(new DescribeKeyCommand({ KeyId: `alias/${tag}-golden` }))).KeyMetadata;
assert.equal(viaAlias.Arn, goldenKey.Arn);

// an encrypted data volume and its snapshot, with the SDK's waiters (R-OUT-2, R-SNAP-1, R-LIFE-1)
const vol = await ec2.send(new CreateVolumeCommand({
  AvailabilityZone: `${region}a`, Size: 2, VolumeType: "gp3", Encrypted: true, KmsKeyId: buildKey.Arn,
}));
assert.equal(vol.Encrypted, true);
assert.equal(vol.KmsKeyId, buildKey.Arn);
types.volumeSize = typeof vol.Size;
assert.equal((await waitUntilVolumeAvailable(wait(ec2), { VolumeIds: [vol.VolumeId] })).state, "SUCCESS");
const dataSnap = await ec2.send(new CreateSnapshotCommand({ VolumeId: vol.VolumeId, Description: "data disk" }));
assert.equal(dataSnap.KmsKeyId, buildKey.Arn);

// a root snapshot with real bytes through the EBS direct APIs (R-DATA-1)
const blocks = [0, 4, 11];
const root = await ebs.send(new StartSnapshotCommand({
  VolumeSize: 1, Encrypted: true, KmsKeyArn: buildKey.Arn, Description: "root disk", Timeout: 60,
  Tags: [{ Key: "Name", Value: `${tag}-root` }],
}));
assert.equal(root.Status, "pending");
types.startVolumeSize = typeof root.VolumeSize;
types.startBlockSize = typeof root.BlockSize;
types.startTime = root.StartTime instanceof Date ? "Date" : typeof root.StartTime;
const agg = createHash("sha256");
for (const index of blocks) {
  const data = pattern(index);
  const put = await ebs.send(new PutSnapshotBlockCommand({
    SnapshotId: root.SnapshotId, BlockIndex: index, BlockData: data, DataLength: data.length,
    Checksum: b64sha(data), ChecksumAlgorithm: "SHA256",
  }));
  assert.equal(put.Checksum, b64sha(data));
  agg.update(sha(data));
}
const completed = await ebs.send(new CompleteSnapshotCommand({
  SnapshotId: root.SnapshotId, ChangedBlocksCount: blocks.length, Checksum: agg.digest("base64"),
  ChecksumAlgorithm: "SHA256", ChecksumAggregationMethod: "LINEAR",
}));
assert.ok(["pending", "completed"].includes(completed.Status));
assert.equal((await waitUntilSnapshotCompleted(wait(ec2), { SnapshotIds: [root.SnapshotId, dataSnap.SnapshotId] })).state, "SUCCESS");

// register → copy re-encrypted to the golden key (by alias) → wait (R-IMG-1, R-IMG-3)
const base = (await ec2.send(new RegisterImageCommand({
  Name: `${tag}-base`, Architecture: "x86_64", VirtualizationType: "hvm", EnaSupport: true, RootDeviceName: "/dev/xvda",
  BlockDeviceMappings: [
    { DeviceName: "/dev/xvda", Ebs: { SnapshotId: root.SnapshotId } },
    { DeviceName: "/dev/sdf", Ebs: { SnapshotId: dataSnap.SnapshotId } },
  ],
}))).ImageId;
await waitUntilImageAvailable(wait(ec2), { ImageIds: [base] });
const golden = (await ec2.send(new CopyImageCommand({
  SourceImageId: base, SourceRegion: region, Name: `${tag}-golden`, Description: "golden AMI",
  Encrypted: true, KmsKeyId: `alias/${tag}-golden`,
}))).ImageId;
assert.equal((await waitUntilImageAvailable(wait(ec2), { ImageIds: [golden] })).state, "SUCCESS");

const img = (await ec2.send(new DescribeImagesCommand({ ImageIds: [golden] }))).Images[0];
assert.equal(img.State, "available");
const snapIds = Object.fromEntries(img.BlockDeviceMappings.map((m) => [m.DeviceName, m.Ebs.SnapshotId]));
const snaps = (await ec2.send(new DescribeSnapshotsCommand({ SnapshotIds: Object.values(snapIds) }))).Snapshots;
for (const s of snaps) {
  assert.equal(s.Encrypted, true);
  assert.equal(s.KmsKeyId, goldenKey.Arn);
  assert.equal(s.State, "completed");
  assert.ok(s.StartTime instanceof Date);
}
types.snapshotVolumeSize = typeof snaps[0].VolumeSize;
const srcVol = (await ec2.send(new DescribeVolumesCommand({ VolumeIds: [vol.VolumeId] }))).Volumes[0];
assert.equal(srcVol.KmsKeyId, buildKey.Arn);

// read the golden root snapshot back; numbers in EBS JSON are numbers, as the model says
const goldenRoot = snapIds["/dev/xvda"];
const listed = await ebs.send(new ListSnapshotBlocksCommand({ SnapshotId: goldenRoot, MaxResults: 100 }));
types.blockIndex = typeof listed.Blocks[0].BlockIndex;
types.listVolumeSize = typeof listed.VolumeSize;
types.listBlockSize = typeof listed.BlockSize;
types.expiryTime = listed.ExpiryTime instanceof Date ? "Date" : typeof listed.ExpiryTime;
assert.deepEqual(listed.Blocks.map((b) => b.BlockIndex), blocks);
const wire = lastRaw("/blocks");
types.wireBlockIndex = typeof wire.Blocks[0].BlockIndex;
types.wireVolumeSize = typeof wire.VolumeSize;
types.wireBlockSize = typeof wire.BlockSize;
types.wireExpiryTime = typeof wire.ExpiryTime;
assert.equal(listed.BlockSize, BLOCK);
assert.equal(listed.VolumeSize, 1);
const readBack = {};
for (const b of listed.Blocks) {
  const got = await ebs.send(new GetSnapshotBlockCommand({
    SnapshotId: goldenRoot, BlockIndex: b.BlockIndex, BlockToken: b.BlockToken,
  }));
  const bytes = Buffer.from(await got.BlockData.transformToByteArray());
  types.dataLength = typeof got.DataLength;
  assert.equal(got.DataLength, BLOCK);
  assert.equal(got.Checksum, b64sha(bytes));
  assert.ok(bytes.equals(pattern(b.BlockIndex)), `block ${b.BlockIndex} differs`);
  readBack[b.BlockIndex] = sha(bytes).toString("hex");
}
// the copy under another key is a full copy: every block differs from nothing in the lineage
const changed = await ebs.send(new ListChangedBlocksCommand({ SecondSnapshotId: goldenRoot }));
assert.deepEqual(changed.ChangedBlocks.map((b) => b.BlockIndex), blocks);
types.changedBlockIndex = typeof changed.ChangedBlocks[0].BlockIndex;
const wireChanged = lastRaw("/changedblocks");
types.wireChangedBlockIndex = typeof wireChanged.ChangedBlocks[0].BlockIndex;
const wireStart = rawJson.find((r) => r.path === "/snapshots" && r.method === "POST").body;
types.wireStartVolumeSize = typeof wireStart.VolumeSize;
types.wireStartBlockSize = typeof wireStart.BlockSize;
types.wireStartTime = typeof wireStart.StartTime;

// errors come back as the SDK's typed exceptions, with code, status and (EBS) Reason (R-WIRE, R-OUT-1)
const errors = {};
async function expectError(label, client, command) {
  try {
    await client.send(command);
    assert.fail(`${label}: no error`);
  } catch (e) {
    if (e.code === "ERR_ASSERTION") throw e;
    errors[label] = { name: e.name, status: e.$metadata?.httpStatusCode, fault: e.$fault, reason: e.Reason, message: e.message };
  }
}
await expectError("describeVolumes", ec2, new DescribeVolumesCommand({ VolumeIds: ["vol-0123456789abcdef0"] }));
await expectError("copyImageKeyWithoutEncrypted", ec2, new CopyImageCommand({
  SourceImageId: base, SourceRegion: region, Name: `${tag}-bad`, KmsKeyId: goldenKey.Arn,
}));
await expectError("describeKey", kms, new DescribeKeyCommand({ KeyId: `alias/${tag}-nope` }));
await expectError("getSnapshotBlock", ebs, new GetSnapshotBlockCommand({
  SnapshotId: "snap-0123456789abcdef0", BlockIndex: 0, BlockToken: listed.Blocks[0].BlockToken,
}));

console.log(JSON.stringify({
  errors,
  buildKey: buildKey.Arn, goldenKey: goldenKey.Arn, volume: vol.VolumeId, dataSnapshot: dataSnap.SnapshotId,
  rootSnapshot: root.SnapshotId, base, golden, goldenSnapshots: snapIds, readBack, types,
}));

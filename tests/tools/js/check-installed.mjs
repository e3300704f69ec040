// Exit 0 and print the versions when node_modules holds exactly the versions package.json pins.
import { readFileSync } from "node:fs";
const want = JSON.parse(readFileSync(new URL("./package.json", import.meta.url))).dependencies;
const got = [];
for (const [name, version] of Object.entries(want)) {
  let have;
  try {
    have = JSON.parse(readFileSync(new URL(`./node_modules/${name}/package.json`, import.meta.url))).version;
  } catch {
    console.error(`${name} missing`);
    process.exit(1);
  }
  if (have !== version) {
    console.error(`${name} ${have} installed, ${version} pinned`);
    process.exit(1);
  }
  got.push(`${name.replace("@aws-sdk/", "")} ${have}`);
}
console.log(got.join(", "));

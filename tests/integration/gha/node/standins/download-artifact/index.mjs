// Copies the artifacts whose names match <pattern> (a trailing *) into <path>/<name>/.
import fs from 'fs';
import path from 'path';

const root = process.env.KILN_TEST_ARTIFACTS;
const prefix = process.env.INPUT_PATTERN.trim().replace(/\*$/, '');
for (const name of fs.readdirSync(root).filter((n) => n.startsWith(prefix))) {
  fs.cpSync(path.join(root, name), path.join(process.env.INPUT_PATH.trim(), name), {recursive: true});
  console.log(`artifact ${name} downloaded`);
}

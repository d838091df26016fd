// Keeps <path> as artifact <name> in $KILN_TEST_ARTIFACTS (shared by the run's jobs).
import fs from 'fs';
import path from 'path';

const dest = path.join(process.env.KILN_TEST_ARTIFACTS, process.env.INPUT_NAME.trim());
fs.mkdirSync(dest, {recursive: true});
const source = process.env.INPUT_PATH.trim();
fs.copyFileSync(source, path.join(dest, path.basename(source)));
console.log(`artifact ${process.env.INPUT_NAME.trim()} uploaded`);

// Tags and labels as docker/metadata-action makes them for `type=ref,event=branch`.
import fs from 'fs';

const images = process.env.INPUT_IMAGES.split(/[\n,]/).map((s) => s.trim()).filter(Boolean);
const branch = (process.env.GITHUB_REF || 'refs/heads/main').replace(/^refs\/heads\//, '');
const tags = images.map((image) => `${image}:${branch}`).join('\n');
const labels = [
  `org.opencontainers.image.revision=${process.env.GITHUB_SHA || ''}`,
  `org.opencontainers.image.source=https://github.com/${process.env.GITHUB_REPOSITORY || 'user/app'}`,
].join('\n');
const out = (name, value) => fs.appendFileSync(process.env.GITHUB_OUTPUT, `${name}<<EOF_${name}\n${value}\nEOF_${name}\n`);
out('tags', tags);
out('labels', labels);

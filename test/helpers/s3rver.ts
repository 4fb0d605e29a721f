import { mkdtemp, readdir, readFile, rm, stat } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
// s3rver ships no types; the small surface used here is typed below.
// @ts-expect-error no declaration file
import S3rver from 's3rver';

/**
 * s3rver (a real S3 API server on the filesystem) on 127.0.0.1, port 0, in a temp dir. s3rver
 * lacks three calls orb relies on for resumable multipart uploads; they are added in front of
 * its router following the S3 API reference, reading s3rver's own upload directory:
 *   ListMultipartUploads (GET /BUCKET?uploads), ListParts (GET /BUCKET/KEY?uploadId=),
 *   AbortMultipartUpload (DELETE /BUCKET/KEY?uploadId=).
 * Knobs: `rejectChecksums` answers 400 to x-amz-checksum-* headers (servers that refuse them);
 * `failPart(n)` makes UploadPart of part n answer 503 or drop the connection; `log` records calls.
 */
export interface S3Server {
  endpoint: string;
  port: number;
  dir: string;
  bucket: string;
  credentials: { accessKeyId: string; secretAccessKey: string };
  log: { method: string; path: string; query: string }[];
  knobs: {
    rejectChecksums?: boolean;
    failPart?: (partNumber: number) => 'reset' | 503 | undefined;
  };
  /** incomplete multipart uploads currently stored: [key, uploadId, parts] */
  uploads(): Promise<{ key: string; uploadId: string; parts: number }[]>;
  close(): Promise<void>;
}

interface KoaCtx {
  method: string;
  path: string;
  querystring: string;
  query: Record<string, string>;
  headers: Record<string, string>;
  status: number;
  body: unknown;
  type: string;
  req: NodeJS.ReadableStream & { socket: { destroy(): void } };
  set(name: string, value: string): void;
}

const xmlEscape = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');

function s3Error(ctx: KoaCtx, status: number, code: string, message: string): void {
  ctx.status = status;
  ctx.type = 'application/xml';
  ctx.body = `<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>${code}</Code><Message>${xmlEscape(message)}</Message></Error>`;
}

export async function startS3rver(bucket = 'orb-test'): Promise<S3Server> {
  const dir = await mkdtemp(join(tmpdir(), 'orb-s3rver-'));
  const server = new S3rver({
    port: 0,
    address: '127.0.0.1',
    silent: true,
    directory: dir,
    configureBuckets: [{ name: bucket }],
  });
  const log: S3Server['log'] = [];
  const knobs: S3Server['knobs'] = {};
  const uploadsDir = (b: string) => join(dir, b, '._S3rver_uploads');

  async function listUploads(b: string) {
    const out: {
      key: string;
      uploadId: string;
      initiated: Date;
      parts: { n: number; size: number; md5: string; mtime: Date }[];
    }[] = [];
    const ids = await readdir(uploadsDir(b)).catch(() => [] as string[]);
    for (const id of ids) {
      const d = join(uploadsDir(b), id);
      const key = await readFile(join(d, 'key'), 'utf8').catch(() => undefined);
      if (key === undefined) continue;
      const st = await stat(join(d, 'key'));
      const parts = [];
      for (const f of await readdir(d)) {
        if (!/^\d+$/.test(f)) continue;
        const md5 = await readFile(join(d, `${f}.md5`), 'utf8').catch(() => undefined);
        if (md5 === undefined) continue; // still being written
        const ps = await stat(join(d, f));
        parts.push({ n: Number(f), size: ps.size, md5, mtime: ps.mtime });
      }
      parts.sort((x, y) => x.n - y.n);
      out.push({ key, uploadId: id, initiated: st.mtime, parts });
    }
    return out;
  }

  const extra = async (ctx: KoaCtx, next: () => Promise<void>) => {
    const [, b, ...keyParts] = ctx.path.split('/');
    const key = decodeURIComponent(keyParts.join('/'));
    log.push({ method: ctx.method, path: ctx.path, query: ctx.querystring });
    const hasChecksum = Object.keys(ctx.headers).some(
      (h) => h.startsWith('x-amz-checksum-') || h === 'x-amz-sdk-checksum-algorithm',
    );
    if (knobs.rejectChecksums && hasChecksum) {
      s3Error(ctx, 400, 'InvalidArgument', 'x-amz-checksum-sha256 is not supported by this server');
      return;
    }
    if (ctx.method === 'PUT' && 'uploadId' in ctx.query && 'partNumber' in ctx.query) {
      const fault = knobs.failPart?.(Number(ctx.query.partNumber));
      if (fault === 'reset') {
        ctx.req.socket.destroy();
        return;
      }
      if (fault === 503) {
        ctx.set('Retry-After', '0');
        s3Error(ctx, 503, 'SlowDown', 'Please reduce your request rate.');
        return;
      }
    }
    if (ctx.method === 'GET' && b && !key && 'uploads' in ctx.query) {
      const prefix = ctx.query.prefix ?? '';
      const ups = (await listUploads(b))
        .filter((u) => u.key.startsWith(prefix))
        .sort((x, y) => (x.key < y.key ? -1 : x.key > y.key ? 1 : 0));
      ctx.type = 'application/xml';
      ctx.body =
        `<?xml version="1.0" encoding="UTF-8"?>\n<ListMultipartUploadsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">` +
        `<Bucket>${xmlEscape(b)}</Bucket><KeyMarker></KeyMarker><UploadIdMarker></UploadIdMarker><Prefix>${xmlEscape(prefix)}</Prefix><MaxUploads>1000</MaxUploads><IsTruncated>false</IsTruncated>` +
        ups
          .map(
            (u) =>
              `<Upload><Key>${xmlEscape(u.key)}</Key><UploadId>${u.uploadId}</UploadId><StorageClass>STANDARD</StorageClass><Initiated>${u.initiated.toISOString()}</Initiated></Upload>`,
          )
          .join('') +
        `</ListMultipartUploadsResult>`;
      return;
    }
    if (b && key && 'uploadId' in ctx.query && (ctx.method === 'GET' || ctx.method === 'DELETE')) {
      const up = (await listUploads(b)).find((u) => u.uploadId === ctx.query.uploadId && u.key === key);
      if (!up) {
        s3Error(ctx, 404, 'NoSuchUpload', 'The specified upload does not exist.');
        return;
      }
      if (ctx.method === 'DELETE') {
        await rm(join(uploadsDir(b), up.uploadId), { recursive: true, force: true });
        ctx.status = 204;
        ctx.body = '';
        return;
      }
      ctx.type = 'application/xml';
      ctx.body =
        `<?xml version="1.0" encoding="UTF-8"?>\n<ListPartsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">` +
        `<Bucket>${xmlEscape(b)}</Bucket><Key>${xmlEscape(key)}</Key><UploadId>${up.uploadId}</UploadId><PartNumberMarker>0</PartNumberMarker>` +
        `<MaxParts>1000</MaxParts><IsTruncated>false</IsTruncated><StorageClass>STANDARD</StorageClass>` +
        up.parts
          .map(
            (p) =>
              `<Part><PartNumber>${p.n}</PartNumber><LastModified>${p.mtime.toISOString()}</LastModified><ETag>"${p.md5}"</ETag><Size>${p.size}</Size></Part>`,
          )
          .join('') +
        `</ListPartsResult>`;
      return;
    }
    await next();
  };
  // Koa composes `middleware` when the server starts: put ours first.
  (server as { middleware: unknown[] }).middleware.unshift(extra);
  const addr = (await server.run()) as AddressInfo;
  return {
    endpoint: `http://127.0.0.1:${addr.port}`,
    port: addr.port,
    dir,
    bucket,
    credentials: { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' },
    log,
    knobs,
    async uploads() {
      return (await listUploads(bucket)).map((u) => ({
        key: u.key,
        uploadId: u.uploadId,
        parts: u.parts.length,
      }));
    },
    async close() {
      await server.close();
      await rm(dir, { recursive: true, force: true });
    },
  };
}

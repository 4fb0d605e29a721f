import { GetObjectCommand, HeadObjectCommand, PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import {
  MAX_MANIFEST_BYTES,
  checkDescriptor,
  clip,
  parseJsonObject,
  sha256Digest,
} from '../core/untrusted.js';
import { createHash, webcrypto } from 'node:crypto';
import { open } from 'node:fs/promises';
import { Readable } from 'node:stream';
import { OrbError, UsageError } from '../core/errors.js';
import type { Logger } from '../core/log.js';
import { formatDuration } from '../core/progress.js';
import { OCI_MANIFEST, type Descriptor, type ImageManifest } from '../formats/oci-media.js';
import { HttpStatusError } from './https-client.js';
import { digestFromHeaders, RemoteFile } from './https-file.js';
import { isNotFound, makeS3Client, s3Call } from './s3-client.js';
import {
  presignBundle,
  presignGet,
  publicObjectUrl,
  writeLayoutIndex,
  type S3LayoutIo,
} from './s3-layout.js';
import { parseS3Ref, PRESIGN_MAX_SECONDS, s3Inputs, formatS3Ref, type S3Ref } from './s3-ref.js';
import {
  checksumUnsupported,
  MAX_OBJECT,
  MiB,
  multipartUpload,
  type ChecksumSupport,
} from './s3-multipart.js';
import { registerStoreInputs, registerStoreOutputs, type OpenedStore, type StoreOptions } from './open.js';
import type { BlobFile, BlobRead, BlobStore } from './store.js';

/**
 * `s3://BUCKET[/PREFIX][:TAG|@sha256:...]` on AWS or any S3-compatible server. Layout under the
 * prefix (an OCI image layout, so `aws s3 sync` of the prefix gives a directory skopeo and oras
 * read as `oci:DIR:TAG`):
 *   blobs/sha256/<hex>   every blob and manifest, metadata x-amz-meta-sha256=<hex>
 *   tags/<tag>           the tag's manifest descriptor (JSON): the authoritative tag pointer
 *   index.json, oci-layout  rebuilt from tags/ after each publish
 *   presigned/<tag>.json with `presign`: manifest + one pre-signed URL per blob (orb-presigned/v1)
 */
export { formatS3Ref, parseS3Ref, PRESIGN_MAX_SECONDS, s3Inputs, type S3Ref } from './s3-ref.js';

function hexOf(digest: string): string {
  return sha256Digest(digest, 'blob digest').slice('sha256:'.length);
}

async function readRegion(file: BlobFile, size: number): Promise<Buffer> {
  const fh = await open(file.path, 'r');
  try {
    const buf = Buffer.allocUnsafe(size);
    let done = 0;
    while (done < size) {
      const { bytesRead } = await fh.read(buf, done, size - done, file.start + done);
      if (bytesRead === 0) break;
      done += bytesRead;
    }
    return done === size ? buf : buf.subarray(0, done);
  } finally {
    await fh.close();
  }
}

async function readAll(stream: Readable, limit: number): Promise<Buffer> {
  const parts: Buffer[] = [];
  let n = 0;
  for await (const c of stream) {
    n += (c as Buffer).length;
    if (n > limit) {
      stream.destroy();
      throw new OrbError('integrity', `more than the expected ${limit} bytes`);
    }
    parts.push(c as Buffer);
  }
  return Buffer.concat(parts);
}

export interface S3StoreOptions {
  endpoint?: string;
  pathStyle?: boolean;
  region?: string;
  partSize?: number;
  concurrency?: number;
  connections?: number;
  presignSeconds?: number;
  /** single PUT up to this size (buffered); multipart above */
  singlePutLimit?: number;
  memoryBudget?: number;
  log: Logger;
  signal?: AbortSignal;
}

export class S3Store implements BlobStore {
  readonly maxBlobSize = MAX_OBJECT;
  private clientP?: Promise<{ client: S3Client; anonymous: boolean }>;
  private readonly checksums: ChecksumSupport = { enabled: true };
  private extraOutputs: Record<string, string> = {};

  constructor(
    readonly ref: S3Ref,
    private readonly o: S3StoreOptions,
  ) {
    if (o.presignSeconds !== undefined && o.presignSeconds > PRESIGN_MAX_SECONDS) {
      throw new UsageError(
        `presign: ${formatDuration(o.presignSeconds)} is longer than S3 allows`,
        'S3 pre-signed URLs are valid for at most 7 days (604800 s); choose 7d or less',
      );
    }
  }

  /** The reference without tag (publish appends @digest to it for the pullable reference). */
  describe(): string {
    return `s3://${this.ref.bucket}${this.ref.prefix ? '/' + this.ref.prefix.replace(/\/$/, '') : ''}`;
  }

  private async c(): Promise<{ client: S3Client; anonymous: boolean }> {
    this.clientP ??= makeS3Client({
      ...(this.o.endpoint ? { endpoint: this.o.endpoint } : {}),
      ...(this.o.region ? { region: this.o.region } : {}),
      pathStyle: this.o.pathStyle === true,
      log: this.o.log,
    });
    return this.clientP;
  }

  private call<T>(fn: (client: S3Client) => Promise<T>, what: string): Promise<T> {
    return this.c().then(({ client, anonymous }) =>
      s3Call(() => fn(client), what, {
        log: this.o.log,
        anonymous,
        ...(this.o.signal ? { signal: this.o.signal } : {}),
      }),
    );
  }

  private sig(): { abortSignal?: AbortSignal } {
    return this.o.signal ? { abortSignal: this.o.signal } : {};
  }

  blobKey(digest: string): string {
    return `${this.ref.prefix}blobs/sha256/${hexOf(digest)}`;
  }

  tagKey(tag: string): string {
    return `${this.ref.prefix}tags/${tag}`;
  }

  async statBlob(digest: string): Promise<number | undefined> {
    try {
      const head = await this.call(
        (c) =>
          c.send(new HeadObjectCommand({ Bucket: this.ref.bucket, Key: this.blobKey(digest) }), this.sig()),
        `check ${digest.slice(0, 19)}`,
      );
      const recorded = head.Metadata?.['sha256'];
      // An object under our key with another recorded digest is not this blob: upload again.
      if (recorded && recorded !== hexOf(digest)) return undefined;
      return head.ContentLength;
    } catch (err) {
      if (isNotFound(err)) return undefined;
      throw err;
    }
  }

  /** PutObject with SHA-256 checked by the server where it implements checksums. */
  private async putSmall(
    key: string,
    body: Buffer,
    contentType: string,
    hex: string,
    what: string,
  ): Promise<void> {
    const send = (withChecksum: boolean) =>
      this.call(
        (c) =>
          c.send(
            new PutObjectCommand({
              Bucket: this.ref.bucket,
              Key: key,
              Body: body,
              ContentLength: body.length,
              ContentType: contentType,
              Metadata: { sha256: hex },
              ...(withChecksum ? { ChecksumSHA256: Buffer.from(hex, 'hex').toString('base64') } : {}),
            }),
            this.sig(),
          ),
        what,
      );
    if (!this.checksums.enabled) {
      await send(false);
      return;
    }
    try {
      await send(true);
    } catch (err) {
      if (!checksumUnsupported(err)) throw err;
      this.checksums.enabled = false;
      this.o.log.info(
        'the S3 server rejects S3 checksums; SHA-256 is verified locally and recorded in object metadata',
      );
      await send(false);
    }
  }

  async putBlob(
    desc: Descriptor,
    open: (offset: number) => Readable,
    onBytes?: (n: number) => void,
    file?: BlobFile,
  ): Promise<void> {
    const hex = hexOf(desc.digest);
    const key = this.blobKey(desc.digest);
    const limit = this.o.singlePutLimit ?? 64 * MiB;
    if (desc.size <= limit) {
      // from the file in one read when the publisher says where the bytes lie
      const body = file ? await readRegion(file, desc.size) : await readAll(open(0), desc.size);
      // hashed in the thread pool (WebCrypto), so the main thread keeps feeding the uploads
      const got =
        body.length === desc.size
          ? Buffer.from(await webcrypto.subtle.digest('SHA-256', body)).toString('hex')
          : '';
      if (got !== hex) {
        throw new OrbError(
          'integrity',
          `blob ${desc.digest} does not match its content (size ${body.length}, expected ${desc.size}); nothing was uploaded`,
        );
      }
      await this.putSmall(
        key,
        body,
        desc.mediaType || 'application/octet-stream',
        hex,
        `upload ${desc.digest.slice(0, 19)}`,
      );
      onBytes?.(body.length);
      return;
    }
    const { client, anonymous } = await this.c();
    await multipartUpload({
      client,
      anonymous,
      bucket: this.ref.bucket,
      key,
      desc,
      open,
      ...(onBytes ? { onBytes } : {}),
      partSize: this.o.partSize ?? 16 * MiB,
      concurrency: this.o.concurrency ?? 4,
      memoryBudget: this.o.memoryBudget ?? 512 * MiB,
      checksums: this.checksums,
      metadata: { sha256: hex },
      contentType: desc.mediaType || 'application/octet-stream',
      log: this.o.log,
      ...(this.o.signal ? { signal: this.o.signal } : {}),
    });
  }

  private readonly sourceUrls = new Map<string, string>();

  /**
   * For the pull engine's transfer threads: a pre-signed GET of the blob (valid one hour; a fresh
   * one when asked to refresh, e.g. after it expired mid-download), or the plain object URL for
   * anonymous reads of a public bucket. The signature is registered as a secret.
   */
  async httpSource(
    desc: Descriptor,
    refresh = false,
  ): Promise<{ url: string; headers: Record<string, string> }> {
    const key = this.blobKey(desc.digest);
    let url = refresh ? undefined : this.sourceUrls.get(key);
    if (!url) {
      const { client, anonymous } = await this.c();
      url = anonymous
        ? await publicObjectUrl(client, this.ref.bucket, key, this.o.pathStyle === true)
        : await presignGet(client, this.ref.bucket, key, 3600);
      this.sourceUrls.set(key, url);
    }
    return { url, headers: {} };
  }

  /**
   * Reads through the same URL the transfer threads use (pre-signed, renewed when it expires, or
   * public), with parallel ranges for big blobs; the SHA-256 recorded on the object must match.
   */
  async getBlob(desc: Descriptor, offset = 0, end?: number): Promise<BlobRead> {
    const hex = hexOf(desc.digest);
    const what = `download ${desc.digest.slice(0, 19)}`;
    if (end !== undefined) return this.getRange(desc, offset, Math.min(end, desc.size), what);
    const f = new RemoteFile((await this.httpSource(desc)).url, {
      connections: desc.size > 64 * MiB ? (this.o.connections ?? 8) : 1,
      refreshUrl: async () => (await this.httpSource(desc, true)).url,
      log: this.o.log,
      ...(this.o.signal ? { signal: this.o.signal } : {}),
      what,
    });
    let probe;
    try {
      probe = await f.probe();
    } catch (err) {
      if (err instanceof HttpStatusError && err.status === 404) {
        throw new OrbError('input', `blob ${desc.digest} is missing from ${this.describe()}`, {
          hint: 'publish the image again',
        });
      }
      throw err;
    }
    const recorded = digestFromHeaders(probe.headers);
    if (recorded && recorded !== hex) {
      throw new OrbError(
        'integrity',
        `s3://${this.ref.bucket}/${this.blobKey(desc.digest)} records SHA-256 ${recorded}, not ${hex}`,
      );
    }
    return f.read(offset);
  }

  /** [offset, end) of a blob with one ranged GetObject (`Range: bytes=a-b`): a pack's blocks. */
  private async getRange(desc: Descriptor, offset: number, end: number, what: string): Promise<BlobRead> {
    if (offset >= end) return { stream: Readable.from([]), offset: end, end };
    const Key = this.blobKey(desc.digest);
    const Range = `bytes=${offset}-${end - 1}`;
    const res = await this.call(
      (c) => c.send(new GetObjectCommand({ Bucket: this.ref.bucket, Key, Range }), this.sig()),
      what,
    ).catch((err: unknown) => {
      if (!isNotFound(err)) throw err;
      throw new OrbError('input', `blob ${desc.digest} is missing from ${this.describe()}`, {
        hint: 'publish the image again',
      });
    });
    const stream = res.Body as Readable;
    const recorded = res.Metadata?.['sha256'];
    if (recorded && recorded !== hexOf(desc.digest)) {
      stream.destroy();
      throw new OrbError(
        'integrity',
        `s3://${this.ref.bucket}/${Key} records SHA-256 ${recorded}, not ${hexOf(desc.digest)}`,
      );
    }
    // no Content-Range: the server ignored the Range and sends the whole object
    const m = /^bytes (\d+)-(\d+)\//.exec(res.ContentRange ?? '');
    return m
      ? { stream, offset: Number(m[1]), end: Number(m[2]) + 1 }
      : { stream, offset: 0, end: desc.size };
  }

  private async getSmall(key: string, what: string, limit = 16 * MiB): Promise<Buffer | undefined> {
    try {
      const res = await this.call(
        (c) => c.send(new GetObjectCommand({ Bucket: this.ref.bucket, Key: key }), this.sig()),
        what,
      );
      return await readAll(res.Body as Readable, limit);
    } catch (err) {
      if (isNotFound(err)) return undefined;
      throw err;
    }
  }

  async putManifest(bytes: Buffer, mediaType: string, tags: readonly string[]): Promise<string> {
    const hex = createHash('sha256').update(bytes).digest('hex');
    const digest = `sha256:${hex}`;
    await this.putSmall(this.blobKey(digest), bytes, mediaType, hex, 'upload manifest');
    let artifactType: string | undefined;
    try {
      artifactType = (JSON.parse(bytes.toString('utf8')) as ImageManifest).artifactType;
    } catch {
      /* not JSON: stored as is */
    }
    const desc: Descriptor = {
      mediaType,
      digest,
      size: bytes.length,
      ...(artifactType ? { artifactType } : {}),
    };
    for (const tag of tags) {
      const body = Buffer.from(JSON.stringify(desc));
      await this.putSmall(
        this.tagKey(tag),
        body,
        'application/json',
        createHash('sha256').update(body).digest('hex'),
        `tag ${tag}`,
      );
    }
    await writeLayoutIndex(await this.layoutIo()).catch((err: Error) =>
      this.o.log.warn(`could not refresh index.json under ${this.describe()}: ${err.message}`),
    );
    if (this.o.presignSeconds) {
      Object.assign(
        this.extraOutputs,
        await presignBundle(await this.layoutIo(), {
          manifest: bytes,
          mediaType,
          digest,
          tag: tags[0] ?? hex.slice(0, 12),
          seconds: this.o.presignSeconds,
        }),
      );
    }
    return digest;
  }

  private async layoutIo(): Promise<S3LayoutIo> {
    const { client, anonymous } = await this.c();
    return {
      ref: this.ref,
      client,
      anonymous,
      log: this.o.log,
      ...(this.o.signal ? { signal: this.o.signal } : {}),
      blobKey: (d) => this.blobKey(d),
      getSmall: (key, what, limit) => this.getSmall(key, what, limit),
      putJson: (key, text, what) => {
        const b = Buffer.from(text);
        return this.putSmall(key, b, 'application/json', createHash('sha256').update(b).digest('hex'), what);
      },
      call: (fn, what) => this.call(fn, what),
    };
  }

  /** Extra publish outputs (presigned-url, presigned-expires, presigned-file-url). */
  publishedOutputs(): Record<string, string> {
    return { ...this.extraOutputs };
  }

  async getManifest(ref: string): Promise<{ bytes: Buffer; mediaType: string; digest: string }> {
    let digest = ref;
    let mediaType = OCI_MANIFEST;
    if (!ref.startsWith('sha256:')) {
      const body = await this.getSmall(this.tagKey(ref), `read tag ${ref}`, 64 << 10);
      if (!body)
        throw new OrbError('input', `no tag '${ref}' under ${this.describe()}`, {
          hint: 'check the tag (s3://BUCKET/PREFIX:TAG) and the prefix',
        });
      const d = checkDescriptor(
        parseJsonObject(body, `tag ${clip(ref)} record`, 64 << 10),
        `tag ${clip(ref)} record`,
        MAX_MANIFEST_BYTES,
      );
      digest = d.digest;
      mediaType = d.mediaType || OCI_MANIFEST;
    }
    const bytes = await this.getSmall(
      this.blobKey(digest),
      `read manifest ${digest.slice(0, 19)}`,
      MAX_MANIFEST_BYTES,
    );
    if (!bytes) throw new OrbError('input', `manifest ${digest} is missing from ${this.describe()}`);
    if (`sha256:${createHash('sha256').update(bytes).digest('hex')}` !== digest) {
      throw new OrbError('integrity', `manifest ${digest} in ${this.describe()} does not match its digest`);
    }
    return { bytes, mediaType, digest };
  }
}

export async function openS3(ref: string, opts: StoreOptions): Promise<OpenedStore> {
  const r = parseS3Ref(ref);
  const o = opts.options;
  const str = (k: string) => (typeof o[k] === 'string' && o[k] !== '' ? (o[k] as string) : undefined);
  const num = (k: string) => (typeof o[k] === 'number' ? (o[k] as number) : undefined);
  const endpoint = str('s3-endpoint');
  if (endpoint && !/^https?:\/\//.test(endpoint))
    throw new UsageError(`--s3-endpoint '${endpoint}' is not a URL`, 'give http(s)://HOST[:PORT]');
  const store = new S3Store(r, {
    log: opts.log,
    ...(opts.signal ? { signal: opts.signal } : {}),
    ...(endpoint ? { endpoint } : {}),
    pathStyle: o['s3-path-style'] === true,
    ...(str('s3-region') ? { region: str('s3-region')! } : {}),
    ...(num('s3-part-size') ? { partSize: num('s3-part-size')! } : {}),
    ...(num('concurrency') ? { concurrency: num('concurrency')! } : {}),
    ...(num('connections') ? { connections: num('connections')! } : {}),
    ...(num('presign') ? { presignSeconds: num('presign')! } : {}),
  });
  const tag = r.digest ?? r.tag ?? 'latest';
  return { store, tag, display: formatS3Ref(r, tag) };
}

registerStoreInputs(
  ['publish', 'pull'],
  s3Inputs.filter((i) => i.name !== 'presign' && i.name !== 's3-part-size'),
);
registerStoreInputs(
  ['publish'],
  s3Inputs.filter((i) => i.name === 'presign' || i.name === 's3-part-size'),
);
registerStoreOutputs(
  ['publish'],
  [
    {
      name: 'presigned-url',
      secret: true,
      description:
        'S3 with presign: URL of the pre-signed bundle; `orb pull URL` fetches the image without credentials until it expires',
    },
    {
      name: 'presigned-expires',
      description: 'S3 with presign: when the pre-signed URLs stop working (ISO 8601)',
    },
    {
      name: 'presigned-file-url',
      secret: true,
      description:
        'S3 with presign, single-file artifacts of one part: pre-signed URL of the file itself (for curl or a browser)',
    },
  ],
);

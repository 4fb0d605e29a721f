import { defineCommand } from '../core/command.js';
import { blobUrls } from '../oci/blob-url.js';

export default defineCommand({
  name: 'blob-url',
  title: 'Print time-limited anonymous download URLs for the blobs of an image (for curl or a browser)',
  description:
    'Asks the registry for an anonymous pull token and requests each blob without following the redirect: registries backed by object ' +
    'storage answer with a pre-signed URL. A registry that serves blobs itself has no such URL; then the direct registry URL is printed, ' +
    'with the anonymous token endpoint when one is needed.',
  action: false,
  usage: 'REF',
  inputs: [
    {
      name: 'ref',
      type: 'string',
      required: true,
      positional: 0,
      description: 'oci://HOST[:PORT]/REPO:TAG (every layer) or oci://HOST/REPO@sha256:... with --digest',
    },
    { name: 'digest', type: 'string', description: 'one blob digest instead of every layer of the manifest' },
    {
      name: 'plain-http',
      type: 'boolean',
      default: false,
      description: 'talk plain HTTP to the registry (loopback hosts always may)',
    },
  ],
  outputs: [
    // Pre-signed URLs are bearer credentials: shown only with --json, masked everywhere else.
    { name: 'url', description: 'the URL of the first (or only) blob', secret: true },
    { name: 'urls', description: 'one URL per blob, in layer order, newline-separated', secret: true },
    { name: 'direct', description: 'true when the registry serves blobs itself (no pre-signed storage URL)' },
    { name: 'expires-in', description: 'seconds the pre-signed URLs stay valid, when they say' },
    { name: 'token-url', description: 'anonymous token endpoint, when direct URLs need a bearer token' },
  ],
  async run(inp, ctx) {
    const urls = await blobUrls(inp.string('ref'), {
      plainHttp: inp.bool('plain-http'),
      log: ctx.log,
      signal: ctx.signal,
      ...(inp.optString('digest') ? { digest: inp.string('digest') } : {}),
    });
    const direct = urls.some((u) => u.direct);
    if (direct) {
      ctx.log.info(
        'this registry serves blobs itself (no redirect to object storage), so there is no pre-signed URL; the registry URL is printed' +
          (urls[0]?.tokenUrl
            ? ' and needs an anonymous bearer token from token-url (curl -H "Authorization: Bearer $TOKEN" URL)'
            : ' and works without credentials'),
      );
    }
    for (const u of urls) ctx.log.info(`${u.title ?? u.digest}: ${u.url}`);
    const expiries = urls.map((u) => u.expiresIn).filter((e): e is number => e !== undefined);
    return {
      url: urls[0]?.url ?? '',
      urls: urls.map((u) => u.url).join('\n'),
      direct,
      'expires-in': expiries.length ? Math.min(...expiries) : '',
      'token-url': urls.find((u) => u.tokenUrl)?.tokenUrl ?? '',
    };
  },
});

import { createRequire as __WEBPACK_EXTERNAL_createRequire } from "module";
/******/ // The require scope
/******/ var __nccwpck_require__ = {};
/******/ 
/************************************************************************/
/******/ /* webpack/runtime/define property getters */
/******/ (() => {
/******/ 	// define getter functions for harmony exports
/******/ 	__nccwpck_require__.d = (exports, definition) => {
/******/ 		for(var key in definition) {
/******/ 			if(__nccwpck_require__.o(definition, key) && !__nccwpck_require__.o(exports, key)) {
/******/ 				Object.defineProperty(exports, key, { enumerable: true, get: definition[key] });
/******/ 			}
/******/ 		}
/******/ 	};
/******/ })();
/******/ 
/******/ /* webpack/runtime/hasOwnProperty shorthand */
/******/ (() => {
/******/ 	__nccwpck_require__.o = (obj, prop) => (Object.prototype.hasOwnProperty.call(obj, prop))
/******/ })();
/******/ 
/************************************************************************/
var __webpack_exports__ = {};

// EXPORTS
__nccwpck_require__.d(__webpack_exports__, {
  b: () => (/* binding */ isZero),
  u: () => (/* binding */ makeTasks)
});

;// CONCATENATED MODULE: external "node:crypto"
const external_node_crypto_namespaceObject = __WEBPACK_EXTERNAL_createRequire(import.meta.url)("node:crypto");
;// CONCATENATED MODULE: external "node:fs"
const external_node_fs_namespaceObject = __WEBPACK_EXTERNAL_createRequire(import.meta.url)("node:fs");
;// CONCATENATED MODULE: external "node:v8"
const external_node_v8_namespaceObject = __WEBPACK_EXTERNAL_createRequire(import.meta.url)("node:v8");
;// CONCATENATED MODULE: external "node:vm"
const external_node_vm_namespaceObject = __WEBPACK_EXTERNAL_createRequire(import.meta.url)("node:vm");
;// CONCATENATED MODULE: external "node:worker_threads"
const external_node_worker_threads_namespaceObject = __WEBPACK_EXTERNAL_createRequire(import.meta.url)("node:worker_threads");
;// CONCATENATED MODULE: external "node:zlib"
const external_node_zlib_namespaceObject = __WEBPACK_EXTERNAL_createRequire(import.meta.url)("node:zlib");
;// CONCATENATED MODULE: ./lib/image/compress-worker.js






const ZERO = Buffer.alloc(1 << 20);
const C = external_node_zlib_namespaceObject.constants;
function isZero(buf) {
    for (let p = 0; p < buf.length; p += ZERO.length) {
        const n = Math.min(ZERO.length, buf.length - p);
        if (Buffer.compare(buf.subarray(p, p + n), n === ZERO.length ? ZERO : ZERO.subarray(0, n)) !== 0)
            return false;
    }
    return true;
}
function zstd(buf, level) {
    return external_node_zlib_namespaceObject.zstdCompressSync(buf, {
        params: { [C.ZSTD_c_compressionLevel]: level, [C.ZSTD_c_checksumFlag]: 0 },
        pledgedSrcSize: buf.length,
        // one output buffer for a cluster, few for a chunk: less garbage for the collector
        chunkSize: Math.min(4 << 20, buf.length + 1024),
    });
}
function view(m) {
    return Buffer.from(m.sab, m.off, m.len);
}
function sha256(b) {
    return 'sha256:' + (0,external_node_crypto_namespaceObject.createHash)('sha256').update(b).digest('hex');
}
/** Transferable only when the buffer owns its whole ArrayBuffer; otherwise copy. */
function asTransfer(b) {
    if (b.byteOffset === 0 && b.buffer.byteLength === b.length && b.buffer instanceof ArrayBuffer)
        return new Uint8Array(b.buffer);
    const out = new Uint8Array(b.length);
    out.set(b);
    return out;
}
/** Content-addressed write: temp file, then rename (atomic; a concurrent equal write is harmless). */
function putBlob(dir, digest, bytes) {
    const path = `${dir}/${digest.slice(7)}`;
    if ((0,external_node_fs_namespaceObject.existsSync)(path))
        return false;
    const tmp = `${path}.${process.pid}-${external_node_worker_threads_namespaceObject.threadId}.partial`;
    (0,external_node_fs_namespaceObject.writeFileSync)(tmp, bytes);
    (0,external_node_fs_namespaceObject.renameSync)(tmp, path);
    return true;
}
function hashZeros(h, n) {
    while (n > 0) {
        const k = Math.min(n, ZERO.length);
        h.update(k === ZERO.length ? ZERO : ZERO.subarray(0, k));
        n -= k;
    }
}
/** One task per worker at a time; `base` and the running hash are the thread's state. */
function makeTasks(base) {
    let hash = (0,external_node_crypto_namespaceObject.createHash)('sha256');
    return {
        chunk(m) {
            const buf = view(m);
            if (isZero(buf))
                return { zero: true };
            const digest = sha256(buf);
            if (base.has(digest))
                return { digest, reused: true };
            const z = zstd(buf, m.level);
            // the worker writes the blob itself: compressed bytes never travel to the main thread
            if (z.length >= buf.length)
                return {
                    digest,
                    raw: true,
                    blobDigest: digest,
                    size: buf.length,
                    created: putBlob(m.blobs, digest, buf),
                };
            const blobDigest = sha256(z);
            return { digest, blobDigest, size: z.length, created: putBlob(m.blobs, blobDigest, z) };
        },
        frame(m) {
            const buf = view(m);
            if (isZero(buf))
                return { zero: true };
            const data = asTransfer(zstd(buf, m.level));
            return { data, transfer: [data.buffer] };
        },
        clusters(m) {
            const buf = view(m);
            const cs = m.clusterSize;
            const n = Math.ceil(buf.length / cs);
            const sizes = new Int32Array(n);
            const parts = [];
            let total = 0;
            for (let i = 0; i < n; i++) {
                let c = buf.subarray(i * cs, Math.min(buf.length, (i + 1) * cs));
                if (isZero(c)) {
                    sizes[i] = -1;
                    continue;
                }
                if (c.length < cs) {
                    const pad = Buffer.alloc(cs);
                    c.copy(pad);
                    c = pad;
                }
                // -2: stored uncompressed; its bytes are copied into the result so the slot is free at once
                const z = m.codec === 'none'
                    ? undefined
                    : m.codec === 'zlib'
                        ? external_node_zlib_namespaceObject.deflateRawSync(c, { level: m.level, windowBits: 12, memLevel: 9 })
                        : zstd(c, m.level);
                if (!z || z.length >= cs) {
                    sizes[i] = -2;
                    parts.push(Buffer.from(c));
                    total += cs;
                    continue;
                }
                sizes[i] = z.length;
                parts.push(z);
                total += z.length;
            }
            const data = new Uint8Array(total);
            let p = 0;
            for (const z of parts) {
                data.set(z, p);
                p += z.length;
            }
            return { sizes, data, transfer: [sizes.buffer, data.buffer] };
        },
        zeromap(m) {
            const buf = view(m);
            const n = Math.ceil(buf.length / m.block);
            const bits = new Uint8Array(n);
            for (let i = 0; i < n; i++)
                bits[i] = isZero(buf.subarray(i * m.block, Math.min(buf.length, (i + 1) * m.block))) ? 0 : 1;
            return { bits, transfer: [bits.buffer] };
        },
        inflate(m) {
            const out = view(m);
            let plain;
            if (m.raw)
                plain = Buffer.from(m.data.buffer, m.data.byteOffset, m.data.byteLength);
            else {
                try {
                    plain = external_node_zlib_namespaceObject.zstdDecompressSync(m.data, { maxOutputLength: Math.max(1, m.len) });
                }
                catch (err) {
                    return {
                        error: `chunk at offset ${m.offset} does not decompress: ${err.message}`,
                        kind: 'integrity',
                    };
                }
            }
            if (plain.length !== m.len)
                return {
                    error: `chunk at offset ${m.offset} decompresses to ${plain.length} bytes, expected ${m.len}`,
                    kind: 'integrity',
                };
            const digest = sha256(plain);
            if (digest !== m.digest)
                return {
                    error: `chunk at offset ${m.offset} has digest ${digest}, expected ${m.digest}`,
                    kind: 'integrity',
                };
            out.set(plain);
            return {};
        },
        hash(m) {
            if (m.zeros)
                hashZeros(hash, m.zeros);
            else
                hash.update(view(m));
            return {};
        },
        hashFile: hashFile,
        digest() {
            const hex = hash.digest('hex');
            hash = (0,external_node_crypto_namespaceObject.createHash)('sha256');
            return { hex };
        },
    };
}
function hashFile(m) {
    const h = (0,external_node_crypto_namespaceObject.createHash)('sha256');
    const scanned = new BigInt64Array(m.progress);
    const buf = Buffer.allocUnsafe(4 << 20);
    // data bytes before offset x (holes cost no reading, so the lead counts data only)
    const before = [0];
    for (const [a, b] of m.ranges)
        before.push(before[before.length - 1] + (b - a));
    const dataBefore = (x) => {
        let lo = 0;
        let hi = m.ranges.length;
        while (lo < hi) {
            const mid = (lo + hi) >> 1;
            if (m.ranges[mid][1] <= x)
                lo = mid + 1;
            else
                hi = mid;
        }
        return before[lo] + (lo < m.ranges.length ? Math.max(0, x - m.ranges[lo][0]) : 0);
    };
    let fd;
    try {
        fd = (0,external_node_fs_namespaceObject.openSync)(m.path, 'r');
        let pos = 0;
        for (const [a, b] of m.ranges) {
            hashZeros(h, a - pos);
            for (let p = a; p < b;) {
                // stay within m.lead bytes of data of the conversion's reads: what we read is still in
                // the page cache when the conversion reads it
                const mine = dataBefore(p);
                for (let seen = Atomics.load(scanned, 0); mine - dataBefore(Number(seen)) > m.lead; seen = Atomics.load(scanned, 0)) {
                    Atomics.wait(scanned, 0, seen, 200);
                }
                const want = Math.min(buf.length, b - p);
                // QEMU rounds a raw disk up to 512 bytes and reads the rest as zeros
                const inFile = Math.max(0, Math.min(want, m.fileSize - p));
                for (let got = 0; got < inFile;) {
                    const n = (0,external_node_fs_namespaceObject.readSync)(fd, buf, got, inFile - got, p + got);
                    if (n === 0)
                        throw new Error(`${m.path} ended at ${p + got} bytes while reading; was it truncated during the conversion?`);
                    got += n;
                }
                if (want > inFile)
                    buf.fill(0, inFile, want);
                h.update(buf.subarray(0, want));
                p += want;
            }
            pos = b;
        }
        hashZeros(h, m.size - pos);
    }
    catch (err) {
        return { error: String(err?.message ?? err), kind: 'input' };
    }
    finally {
        if (fd !== undefined)
            (0,external_node_fs_namespaceObject.closeSync)(fd);
    }
    return { hex: h.digest('hex') };
}
/**
 * Compressed outputs live outside the V8 heap, which stays tiny, so V8 collects them late and
 * dead buffers pile up (measured: ~100 MB per thread). A full collection once 32 MiB of them are
 * outside the heap costs ~5% CPU on qcow2 (at 8 MiB: 15%; at 64 MiB: 3% but +80 MiB RSS).
 * (V8 flags are process-wide: once set, later threads already have a global gc.)
 */
function collector() {
    const g = globalThis.gc;
    if (typeof g === 'function')
        return g;
    (0,external_node_v8_namespaceObject.setFlagsFromString)('--expose-gc');
    return (0,external_node_vm_namespaceObject.runInNewContext)('gc');
}
// Only in a thread workers.ts started (not when a test imports this file).
if (external_node_worker_threads_namespaceObject.parentPort && external_node_worker_threads_namespaceObject.workerData?.role === 'orb-compress') {
    const port = external_node_worker_threads_namespaceObject.parentPort;
    const collect = collector();
    const tasks = makeTasks(new Set(external_node_worker_threads_namespaceObject.workerData?.base ?? []));
    port.on('message', (m) => {
        let res;
        try {
            const task = tasks[m.task];
            if (!task)
                throw new Error(`unknown task ${m.task}`);
            res = task(m);
        }
        catch (err) {
            res = { error: String(err?.message ?? err), kind: 'internal' };
        }
        const transfer = res.transfer ?? [];
        delete res.transfer;
        res.id = m.id;
        port.postMessage(res, transfer);
        // collect only when compressed outputs have piled up (a full collection costs ~1 ms)
        if (m.task !== 'hash' && m.task !== 'hashFile' && (0,external_node_v8_namespaceObject.getHeapStatistics)().external_memory > 32 * 1024 * 1024)
            collect();
    });
}

var __webpack_exports__isZero = __webpack_exports__.b;
var __webpack_exports__makeTasks = __webpack_exports__.u;
export { __webpack_exports__isZero as isZero, __webpack_exports__makeTasks as makeTasks };

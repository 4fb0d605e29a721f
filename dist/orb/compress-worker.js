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
;// CONCATENATED MODULE: ./lib/formats/zstd-context.js

/**
 * One decompression context and one output buffer for many frames: decoding the 2.1 GB of
 * 128 KiB frames of the 4 GiB bench disk took 1.4 s of CPU this way, 2.0 s with one-shot calls.
 */
class ZstdFrameDecoder {
    engine;
    out = Buffer.alloc(0);
    usable = true;
    /** the largest window a frame may need (the caller also checks each header) */
    windowLog;
    // no parameter property: worker threads run from the sources in tests, under Node's type
    // stripping, which does not take them
    constructor(windowLog) {
        this.windowLog = windowLog;
    }
    /**
     * Decodes `frame` (exactly one whole frame) that must give exactly `want` bytes. The result
     * is a view of a buffer the next call overwrites, or of `into` from `at` when given (it needs
     * room for `want + 1` bytes there); undefined: use the one-shot path instead.
     */
    decode(frame, want, into, at = 0) {
        if (!this.usable)
            return undefined;
        const e = (this.engine ??= this.create());
        const h = e._handle;
        const state = e._writeState;
        if (!h || typeof h.writeSync !== 'function' || !state || e._finishFlushFlag === undefined) {
            this.usable = false; // this Node has another engine shape
            return undefined;
        }
        // one byte more than wanted, so a frame that would give more cannot end on a full buffer
        let out = into;
        if (!out || out.length < at + want + 1) {
            if (this.out.length < want + 1)
                this.out = Buffer.allocUnsafe(want + 1);
            out = this.out;
            at = 0;
        }
        try {
            h.writeSync(e._finishFlushFlag, frame, 0, frame.length, out, at, want + 1);
        }
        catch {
            this.engine = undefined;
            return undefined;
        }
        const got = want + 1 - state[0];
        if (!e._handle || state[1] !== 0 || got !== want) {
            this.engine = undefined;
            return undefined;
        }
        return out.subarray(at, at + want);
    }
    create() {
        const e = zlib.createZstdDecompress({ params: { [zlib.constants.ZSTD_d_windowLogMax]: this.windowLog } });
        // a bad frame makes the engine emit 'error' on the next tick: already handled by returning
        // undefined, so it must not become an uncaught exception
        e.on('error', () => undefined);
        return e;
    }
}
/**
 * One compression context for many frames, each a whole zstd frame with its content size in
 * the header (zstd takes the size from the input when a frame is compressed in one call), no
 * checksum. Measured on 256 MiB of the bench disk in 128 KiB frames: 0.76 s against 0.81 s with
 * one-shot calls, byte-identical output.
 */
class ZstdFrameEncoder {
    engine;
    usable = true;
    level;
    constructor(level) {
        this.level = level;
    }
    /** The most bytes a frame of `n` bytes compresses to (zstd's ZSTD_COMPRESSBOUND, rounded up). */
    static bound(n) {
        return n + (n >> 8) + 1024;
    }
    /**
     * Compresses `src` into `out` from `at` (room for `bound(src.length)` bytes); returns the
     * frame's length, or undefined: use the one-shot call instead.
     */
    encode(src, out, at) {
        if (!this.usable)
            return undefined;
        const e = (this.engine ??= this.create());
        const h = e._handle;
        const state = e._writeState;
        if (!h || typeof h.writeSync !== 'function' || !state) {
            this.usable = false;
            return undefined;
        }
        const room = Math.min(out.length - at, ZstdFrameEncoder.bound(src.length));
        try {
            h.writeSync(external_node_zlib_namespaceObject.constants.ZSTD_e_end, src, 0, src.length, out, at, room);
        }
        catch {
            this.engine = undefined;
            return undefined;
        }
        // all input taken and room left over: the frame is complete (zstd stops early only when the
        // output is full)
        if (!e._handle || state[1] !== 0 || state[0] === 0) {
            this.engine = undefined;
            return undefined;
        }
        return room - state[0];
    }
    create() {
        const e = external_node_zlib_namespaceObject.createZstdCompress({
            params: {
                [external_node_zlib_namespaceObject.constants.ZSTD_c_compressionLevel]: this.level,
                [external_node_zlib_namespaceObject.constants.ZSTD_c_checksumFlag]: 0,
            },
        });
        e.on('error', () => undefined);
        return e;
    }
}

;// CONCATENATED MODULE: ./lib/formats/zstd-frame.js
const MAGIC = 0xfd2fb528;
/** undefined when `b` does not start with a zstd frame header. */
function zstdFrameHeader(b) {
    if (b.length < 6)
        return undefined;
    const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
    if (v.getUint32(0, true) !== MAGIC)
        return undefined;
    const fhd = b[4];
    if (fhd & 0x08)
        return undefined; // reserved bit must be zero
    const fcsFlag = fhd >> 6;
    const single = (fhd >> 5) & 1;
    const dictFlag = fhd & 3;
    let at = 5;
    let windowSize = 0;
    if (!single) {
        const wd = b[at++];
        const exp = wd >> 3;
        const base = 2 ** (10 + exp);
        windowSize = base + (base / 8) * (wd & 7);
    }
    at += [0, 1, 2, 4][dictFlag];
    const fcsBytes = fcsFlag === 0 ? single : [0, 2, 4, 8][fcsFlag];
    if (at + fcsBytes > b.length)
        return undefined;
    let contentSize;
    if (fcsBytes === 1)
        contentSize = b[at];
    else if (fcsBytes === 2)
        contentSize = v.getUint16(at, true) + 256;
    else if (fcsBytes === 4)
        contentSize = v.getUint32(at, true);
    else if (fcsBytes === 8) {
        const big = v.getBigUint64(at, true);
        contentSize = big > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(big);
    }
    if (single)
        windowSize = contentSize ?? 0;
    return { contentSize, windowSize };
}
/** The declared content size, or undefined (no header, or no size in it). */
function zstdFrameContentSize(b) {
    return zstdFrameHeader(b)?.contentSize;
}

;// CONCATENATED MODULE: ./lib/image/compress-worker.js








const ZERO = Buffer.alloc(1 << 20);
const C = external_node_zlib_namespaceObject.constants;
/** `parts` in one ArrayBuffer of their own, so it can be transferred back to the caller. */
function joined(parts, total) {
    const data = new Uint8Array(total);
    let p = 0;
    for (const z of parts) {
        data.set(z, p);
        p += z.length;
    }
    return data;
}
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
const sha256 = (b) => (0,external_node_crypto_namespaceObject.hash)('sha256', b, 'buffer');
function view(m) {
    return Buffer.from(m.sab, m.off, m.len);
}
/** Transferable only when the buffer owns its whole ArrayBuffer; otherwise copy. */
function asTransfer(b) {
    if (b.byteOffset === 0 && b.buffer.byteLength === b.length && b.buffer instanceof ArrayBuffer)
        return new Uint8Array(b.buffer);
    const out = new Uint8Array(b.length);
    out.set(b);
    return out;
}
function hashZeros(h, n) {
    while (n > 0) {
        const k = Math.min(n, ZERO.length);
        h.update(k === ZERO.length ? ZERO : ZERO.subarray(0, k));
        n -= k;
    }
}
/** Block `i` of a unit view, zero-padded to `bs` when the unit ends inside it (the disk's tail). */
function blockOf(buf, i, bs) {
    const b = buf.subarray(i * bs, Math.min(buf.length, (i + 1) * bs));
    if (b.length === bs)
        return b;
    const pad = Buffer.alloc(bs);
    b.copy(pad);
    return pad;
}
/** One task per worker at a time; the running hash is the thread's state. */
function makeTasks() {
    let hash = (0,external_node_crypto_namespaceObject.createHash)('sha256');
    // one compression context per level and one output buffer, reused task after task
    const encoders = {};
    let scratch = Buffer.alloc(0);
    return {
        blocks(m) {
            const buf = view(m);
            const n = Math.ceil(buf.length / m.block);
            const zero = new Uint8Array(n);
            const digests = new Uint8Array(n * 32);
            for (let i = 0; i < n; i++) {
                const b = blockOf(buf, i, m.block);
                if (isZero(b))
                    zero[i] = 1;
                else
                    digests.set(sha256(b), i * 32);
            }
            return { zero, digests, transfer: [zero.buffer, digests.buffer] };
        },
        frames(m) {
            const buf = view(m);
            const lengths = new Uint32Array(m.runs.length / 2);
            let room = 0;
            for (let r = 0; r < lengths.length; r++)
                room += ZstdFrameEncoder.bound(m.runs[2 * r + 1] * m.block);
            if (scratch.length < room)
                scratch = Buffer.allocUnsafe(room);
            const enc = (encoders[m.level] ??= new ZstdFrameEncoder(m.level));
            let total = 0;
            for (let r = 0; r < lengths.length; r++) {
                const first = m.runs[2 * r];
                const count = m.runs[2 * r + 1];
                const end = (first + count) * m.block;
                let plain = buf.subarray(first * m.block, Math.min(buf.length, end));
                if (plain.length < count * m.block) {
                    const pad = Buffer.alloc(count * m.block);
                    plain.copy(pad);
                    plain = pad;
                }
                // frames go one after another into the thread's scratch buffer, the task's result is
                // one exact copy of them
                let n = enc.encode(plain, scratch, total);
                if (n === undefined) {
                    const z = zstd(plain, m.level);
                    scratch.set(z, total);
                    n = z.length;
                }
                lengths[r] = n;
                total += n;
            }
            const data = new Uint8Array(total);
            data.set(scratch.subarray(0, total));
            return { lengths, data, transfer: [lengths.buffer, data.buffer] };
        },
        unframe(m) {
            // The bounds of decodeFrame (src/formats/disk-index-decode.ts, not imported: its module
            // does not load in a test's type-stripped worker); on any failure the main thread decodes
            // the frame again with decodeFrame to raise the reader's own error.
            const want = m.blocks * m.block;
            const h = zstdFrameHeader(m.data);
            if (!h || h.contentSize !== want || h.windowSize > 8 << 20)
                return { bad: 'frame header' };
            let plain;
            try {
                plain = external_node_zlib_namespaceObject.zstdDecompressSync(m.data, { maxOutputLength: want });
            }
            catch (err) {
                return { bad: err.message };
            }
            if (plain.length !== want)
                return { bad: `decompressed to ${plain.length} bytes` };
            const digests = new Uint8Array(m.blocks * 32);
            for (let i = 0; i < m.blocks; i++)
                digests.set(sha256(plain.subarray(i * m.block, (i + 1) * m.block)), i * 32);
            const data = asTransfer(plain);
            return { data, digests, transfer: [data.buffer, digests.buffer] };
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
            const data = joined(parts, total);
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
    const tasks = makeTasks();
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

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
  F: () => (/* binding */ createSegmentHasher)
});

;// CONCATENATED MODULE: external "node:crypto"
const external_node_crypto_namespaceObject = __WEBPACK_EXTERNAL_createRequire(import.meta.url)("node:crypto");
;// CONCATENATED MODULE: external "node:fs"
const external_node_fs_namespaceObject = __WEBPACK_EXTERNAL_createRequire(import.meta.url)("node:fs");
;// CONCATENATED MODULE: external "node:worker_threads"
const external_node_worker_threads_namespaceObject = __WEBPACK_EXTERNAL_createRequire(import.meta.url)("node:worker_threads");
;// CONCATENATED MODULE: ./lib/transfer/hash-worker.js



const BUF = 4 << 20;
function createSegmentHasher(path) {
    const hash = (0,external_node_crypto_namespaceObject.createHash)('sha256');
    const buf = Buffer.allocUnsafe(BUF);
    const zeros = Buffer.alloc(BUF);
    let fd;
    return (m) => {
        try {
            if (m.type === 'file') {
                fd ??= (0,external_node_fs_namespaceObject.openSync)(path, 'r');
                let left = m.length;
                let pos = m.offset;
                while (left > 0) {
                    const n = (0,external_node_fs_namespaceObject.readSync)(fd, buf, 0, Math.min(left, buf.length), pos);
                    if (n === 0)
                        throw new Error(`file ended at ${pos}`);
                    hash.update(n === buf.length ? buf : buf.subarray(0, n));
                    left -= n;
                    pos += n;
                }
            }
            else if (m.type === 'zeros') {
                for (let left = m.length; left > 0;) {
                    const n = Math.min(left, zeros.length);
                    hash.update(n === zeros.length ? zeros : zeros.subarray(0, n));
                    left -= n;
                }
            }
            else {
                if (fd !== undefined)
                    (0,external_node_fs_namespaceObject.closeSync)(fd);
                fd = undefined;
                return { digest: 'sha256:' + hash.digest('hex') };
            }
        }
        catch (e) {
            return { error: e instanceof Error ? e.message : String(e) };
        }
        return undefined;
    };
}
if (external_node_worker_threads_namespaceObject.parentPort) {
    const port = external_node_worker_threads_namespaceObject.parentPort;
    const step = createSegmentHasher(external_node_worker_threads_namespaceObject.workerData.path);
    port.on('message', (m) => {
        const reply = step(m);
        if (reply)
            port.postMessage(reply);
    });
}

var __webpack_exports__createSegmentHasher = __webpack_exports__.F;
export { __webpack_exports__createSegmentHasher as createSegmentHasher };

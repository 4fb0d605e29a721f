import { registerHooks } from 'node:module';

/**
 * Loaded (--import) into a worker thread started from the TypeScript sources (vitest): Node
 * strips the types itself, and this maps the `./x.js` specifiers of NodeNext sources to the
 * `./x.ts` files beside them. Never used by lib/ or the bundle.
 */
registerHooks({
  resolve(specifier, context, next) {
    try {
      return next(specifier, context);
    } catch (err) {
      if (/^(\.|file:)/.test(specifier) && specifier.endsWith('.js'))
        return next(`${specifier.slice(0, -3)}.ts`, context);
      throw err;
    }
  },
});
